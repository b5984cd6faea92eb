"""Evaluation tasks from local jsonl files, zero- or few-shot.

- `multiple_choice`: {"prompt": str, "choices": [str, ...], "answer": index or choice text}.
  Each choice is scored by the log-likelihood of " " + choice after the prompt: `acc` takes the
  most likely choice, `acc_norm` the most likely per character of the choice and `acc_bytes`
  per UTF-8 byte of the choice (lm-evaluation-harness' definitions: the lengths are those of
  the choice text, without the space before it).
- `generation`: {"prompt": str or [messages], "answer": str or number, "completion": optional
  worked answer used when the record is a few-shot example}. The model's completion (by the
  task's decoding settings) is reduced to its final answer (`answer_pattern`) and compared with
  the answer after normalisation: `exact_match`.
- `preference`: {"prompt": str or [messages], "chosen": str or [messages], "rejected": ...}, the
  format of preference training data. `pair_accuracy`: the share of pairs whose chosen answer
  the model finds more likely than the rejected one (summed log-probabilities of the answer's
  tokens after the prompt, as DPO compares them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from llmtrain.answers import extract_answer, is_correct
from llmtrain.data_pipeline.readers import iter_records
from llmtrain.errors import InputDataError
from llmtrain.schema import InputPath, Section
from llmtrain.train.evaluate.generation import (
    DecodingSection,
    Prompt,
    Scorer,
    decode,
    render_prompt,
)

TaskType = Literal["generation", "multiple_choice", "preference"]
PromptFormat = Literal["auto", "plain", "chat"]


class TaskSection(Section):
    name: str
    """Name of the task in results and tables."""
    path: InputPath
    """jsonl file of task records (see docs/recipes.md#eval for the formats)."""
    type: TaskType
    num_fewshot: int = Field(0, ge=0)
    """Examples shown before each question, drawn (seeded) from fewshot_path or the task file."""
    fewshot_path: InputPath | None = None
    """Where few-shot examples come from; default: the task file, never the question itself."""
    format: PromptFormat = "auto"
    """plain text or the chat template; auto: plain for the pretrained model, chat after it."""
    limit: int | None = Field(None, gt=0)
    """Evaluate only the first `limit` records."""
    decoding: DecodingSection = DecodingSection()
    """How generation tasks decode (answer_pattern extracts the final answer)."""

    @model_validator(mode="after")
    def _check(self) -> TaskSection:
        if self.type == "preference" and self.num_fewshot:
            raise ValueError("a preference task scores pairs without examples: set num_fewshot: 0")
        return self


@dataclass
class TaskRecord:
    prompt: Prompt
    answer: str
    choices: list[str] = field(default_factory=list)
    completion: str | None = None
    chosen: Prompt | None = None
    rejected: Prompt | None = None


@dataclass
class TaskResult:
    metrics: dict[str, float]
    samples: list[dict[str, Any]]


def load_task_records(
    path: Path, task_type: TaskType, limit: int | None = None
) -> list[TaskRecord]:
    records = []
    for line, raw in iter_records(path):
        records.append(_parse_record(raw, task_type, f"{path}:{line}"))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise InputDataError(f"{path}: the task file has no records")
    return records


def _parse_record(raw: dict, task_type: TaskType, where: str) -> TaskRecord:
    prompt = raw.get("prompt", raw.get("question"))
    if not isinstance(prompt, str | list) or not prompt:
        raise InputDataError(
            f"{where}: a task record needs a non-empty 'prompt' (text or messages)"
        )
    if task_type == "preference":
        return _parse_pair(raw, prompt, where)
    if "answer" not in raw:
        raise InputDataError(f"{where}: a task record needs an 'answer'")
    answer = raw["answer"]
    if task_type == "generation":
        return TaskRecord(prompt=prompt, answer=str(answer), completion=raw.get("completion"))
    choices = raw.get("choices")
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise InputDataError(
            f"{where}: a multiple_choice record needs 'choices': a list of 2+ non-empty strings"
        )
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < len(choices):
            raise InputDataError(
                f"{where}: answer index {answer} is outside the {len(choices)} choices"
            )
        index = answer
    elif isinstance(answer, str) and answer in choices:
        index = choices.index(answer)
    else:
        raise InputDataError(
            f"{where}: 'answer' must be a choice index or one of the choices, got {answer!r}"
        )
    if not isinstance(prompt, str):
        raise InputDataError(f"{where}: multiple_choice prompts are text, not messages")
    return TaskRecord(prompt=prompt, answer=str(index), choices=choices)


def _parse_pair(raw: dict, prompt: Prompt, where: str) -> TaskRecord:
    for key in ("chosen", "rejected"):
        if not isinstance(raw.get(key), str | list) or not raw[key]:
            raise InputDataError(
                f"{where}: a preference record needs a non-empty {key!r} (text or messages)"
            )
    return TaskRecord(prompt=prompt, answer="", chosen=raw["chosen"], rejected=raw["rejected"])


def fewshot_examples(
    pool: list[TaskRecord], k: int, exclude: TaskRecord, rng: random.Random
) -> list[TaskRecord]:
    candidates = [r for r in pool if r is not exclude and r.prompt != exclude.prompt]
    if k > len(candidates):
        raise InputDataError(
            f"num_fewshot is {k} but only {len(candidates)} examples are available"
        )
    return rng.sample(candidates, k)


def _target(record: TaskRecord) -> str:
    if record.choices:
        return record.choices[int(record.answer)]
    return record.completion or record.answer


def with_fewshot(record: TaskRecord, shots: list[TaskRecord], chat: bool) -> Prompt:
    """The record's prompt preceded by solved examples (as earlier turns when chatting)."""
    if chat:
        messages: list[dict[str, str]] = []
        for shot in shots:
            messages.extend(_as_messages(shot.prompt))
            messages.append({"role": "assistant", "content": _target(shot)})
        return messages + _as_messages(record.prompt)
    parts = [f"{_as_text(shot.prompt)} {_target(shot)}" for shot in shots]
    return "\n\n".join([*parts, _as_text(record.prompt)])


def _as_messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _as_text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def run_generation_task(
    model: Any,
    tokenizer: Any,
    records: list[TaskRecord],
    prompts: list[Prompt],
    decoding: DecodingSection,
    *,
    chat: bool,
    scorer: Scorer | None = None,
    batch_size: int = 16,
) -> TaskResult:
    outputs = decode(
        model, tokenizer, prompts, decoding, chat=chat, scorer=scorer, batch_size=batch_size
    )
    samples = []
    correct = 0
    for record, output in zip(records, outputs):
        predicted = (
            output.answer
            if output.answer is not None
            else extract_answer(output.text, decoding.answer_pattern)
        )
        hit = is_correct(predicted, record.answer)
        correct += hit
        samples.append(
            {
                "prompt": record.prompt,
                "completion": output.text,
                "predicted": predicted,
                "answer": record.answer,
                "correct": hit,
            }
        )
    return TaskResult({"exact_match": correct / len(records), "n": len(records)}, samples)


def run_preference_task(
    model: Any, tokenizer: Any, records: list[TaskRecord], *, chat: bool, batch_size: int = 16
) -> TaskResult:
    requests = [
        answer_request(tokenizer, record.prompt, answer, chat=chat)
        for record in records
        for answer in (record.chosen, record.rejected)
    ]
    logprobs = continuation_logprobs(model, tokenizer, requests, batch_size=batch_size)
    samples = []
    for i, record in enumerate(records):
        chosen, rejected = logprobs[2 * i], logprobs[2 * i + 1]
        samples.append(
            {
                "prompt": record.prompt,
                "chosen": record.chosen,
                "rejected": record.rejected,
                "logprob_chosen": chosen,
                "logprob_rejected": rejected,
                "correct": chosen > rejected,
            }
        )
    right = sum(s["correct"] for s in samples)
    margin = sum(s["logprob_chosen"] - s["logprob_rejected"] for s in samples) / len(samples)
    metrics = {"pair_accuracy": right / len(records), "logprob_margin": margin, "n": len(records)}
    return TaskResult(metrics, samples)


def answer_request(
    tokenizer: Any, prompt: Prompt, answer: Prompt, *, chat: bool
) -> tuple[str, str]:
    """(context, continuation) whose continuation is the answer as the model would write it:
    the assistant turn of the chat template (with its end-of-turn), or " " + the text."""
    context = render_prompt(tokenizer, prompt, chat=chat)
    if not chat:
        return context, " " + _as_text(answer)
    turn = [{"role": "assistant", "content": answer}] if isinstance(answer, str) else answer
    whole = tokenizer.apply_chat_template(_as_messages(prompt) + list(turn), tokenize=False)
    if not whole.startswith(context):
        raise InputDataError(
            "preference task: the chat template does not render the prompt as the start of the "
            "conversation with its answer; evaluate with format: plain"
        )
    return context, whole[len(context) :]


def run_multiple_choice_task(
    model: Any, tokenizer: Any, records: list[TaskRecord], contexts: list[str], batch_size: int = 16
) -> TaskResult:
    requests = [
        (ctx, " " + choice) for ctx, record in zip(contexts, records) for choice in record.choices
    ]
    logprobs = continuation_logprobs(model, tokenizer, requests, batch_size=batch_size)
    samples, acc, acc_norm, acc_bytes, cursor = [], 0, 0, 0, 0
    for record in records:
        scores = logprobs[cursor : cursor + len(record.choices)]
        cursor += len(record.choices)
        chars = [len(c) for c in record.choices]
        utf8 = [len(c.encode("utf-8")) for c in record.choices]
        pick = _argmax(scores)
        pick_norm = _argmax([s / n for s, n in zip(scores, chars)])
        pick_bytes = _argmax([s / n for s, n in zip(scores, utf8)])
        gold = int(record.answer)
        acc += pick == gold
        acc_norm += pick_norm == gold
        acc_bytes += pick_bytes == gold
        samples.append(
            {
                "prompt": record.prompt,
                "choices": record.choices,
                "logprobs": scores,
                "answer": gold,
                "predicted": pick,
                "predicted_norm": pick_norm,
                "predicted_bytes": pick_bytes,
            }
        )
    n = len(records)
    metrics = {"acc": acc / n, "acc_norm": acc_norm / n, "acc_bytes": acc_bytes / n, "n": n}
    return TaskResult(metrics, samples)


def _argmax(values: list[float]) -> int:
    """Index of the largest value, the first one on ties (numpy.argmax, as lm-eval uses)."""
    return max(range(len(values)), key=values.__getitem__)


def continuation_logprobs(
    model: Any, tokenizer: Any, requests: list[tuple[str, str]], batch_size: int = 16
) -> list[float]:
    """log p(continuation | context) for each (context, continuation) pair.

    The continuation's tokens are those of encode(context + continuation) past encode(context),
    so a token merged across the boundary is scored as the model would see it.
    """
    import torch

    device = next(model.parameters()).device
    encoded = []
    for context, continuation in requests:
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
            context_ids, whole = (
                [tokenizer.bos_token_id, *context_ids],
                [tokenizer.bos_token_id, *whole],
            )
        start = _common_prefix(context_ids, whole)
        if start == len(whole):
            raise InputDataError(f"the continuation {continuation!r} is empty after tokenization")
        start = max(start, 1)
        encoded.append((whole, start))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[float] = []
    for first in range(0, len(encoded), batch_size):
        batch = encoded[first : first + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        with torch.no_grad():
            logits = model(
                input_ids=input_ids.to(device), attention_mask=attention.to(device)
            ).logits
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        for row, (ids, start) in enumerate(batch):
            targets = torch.tensor(ids[start:])
            predicted = logp[row, start - 1 : len(ids) - 1]
            results.append(float(predicted.gather(1, targets[:, None]).sum()))
    return results


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
