"""Decoding over any Hugging Face causal LM: greedy, sampling (temperature, top-k, top-p), beam
search, best-of-N ranked by a scorer (a reward model), and self-consistency (majority vote over
the final answers of sampled completions).

Greedy, sampling and beam search are `model.generate`; best-of-N and self-consistency are
built on top of sampling.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from llmtrain.answers import extract_answer
from llmtrain.chat import stop_token_ids as chat_stop_token_ids
from llmtrain.errors import StageInputError
from llmtrain.schema import Section

Strategy = Literal["greedy", "sample", "beam", "best_of_n", "self_consistency"]
Prompt = str | list[dict[str, str]]
Scorer = Callable[[list[Prompt], list[str]], list[float]]
"""Scores completions of prompts (higher is better): (prompts, completions) -> scores."""


class DecodingSection(Section):
    strategy: Strategy = "greedy"
    """greedy | sample | beam | best_of_n (ranked by a reward model) | self_consistency."""
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature (sample, best_of_n, self_consistency)."""
    top_k: int = Field(0, ge=0)
    """Sample only among the k most likely tokens; 0 turns it off."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Sample only among the most likely tokens whose probabilities sum to top_p."""
    num_beams: int = Field(4, ge=1)
    """Beams for beam search."""
    length_penalty: float = 1.0
    """Beam search: scores are divided by length**length_penalty."""
    n: int = Field(8, ge=1)
    """Candidates sampled for best_of_n and self_consistency."""
    reward_model: str | None = None
    """best_of_n: reward model directory (or stage name, e.g. rm) that ranks the candidates."""
    answer_pattern: str | None = None
    """self_consistency (and exact match): a regex whose first group is the final answer."""

    @model_validator(mode="after")
    def _check(self) -> DecodingSection:
        if self.answer_pattern is not None:
            try:
                compiled = re.compile(self.answer_pattern)
            except re.error as exc:
                raise ValueError(f"answer_pattern is not a valid regex ({exc})") from None
            if compiled.groups < 1:
                raise ValueError("answer_pattern needs a group around the answer, e.g. 'is (\\d+)'")
        return self


@dataclass
class Candidate:
    text: str
    score: float | None = None
    answer: str | None = None


@dataclass
class Decoded:
    """The chosen completion of one prompt, with the candidates it was chosen from."""

    text: str
    candidates: list[Candidate]
    answer: str | None = None


def load_causal_lm(path: str | Path, *, dtype: Any = None) -> tuple[Any, Any]:
    """Model and tokenizer from a Hugging Face directory, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    check_model_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    model.eval()
    return model, tokenizer


def check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise StageInputError(f"{path}: not a model directory (no config.json)")
    has_tokenizer = any(
        (path / name).is_file()
        for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    )
    if not has_tokenizer:
        raise StageInputError(
            f"{path}: the model directory has no tokenizer; save one beside the model "
            "(tokenizer.save_pretrained(dir))"
        )


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids from the generation config, plus eos and the end-of-turn token of the
    tokenizer's chat template (llmtrain.chat.stop_token_ids)."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    return sorted(set(ids) | set(chat_stop_token_ids(tokenizer)))


def render_prompt(tokenizer: Any, prompt: Prompt, *, chat: bool) -> str:
    """The text a prompt becomes: the chat template with a generation prompt, or plain text."""
    if chat:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not tokenizer.chat_template:
            raise StageInputError(
                "the tokenizer has no chat template; evaluate with format: plain, or give the "
                "model a tokenizer with one (llmtrain tokenizer writes chatml by default)"
            )
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt)


def _generate_kwargs(settings: DecodingSection, sampling: bool) -> dict[str, Any]:
    if settings.strategy == "beam":
        return {
            "do_sample": False,
            "num_beams": settings.num_beams,
            "length_penalty": settings.length_penalty,
            "early_stopping": True,
        }
    if sampling:
        return {
            "do_sample": True,
            "temperature": settings.temperature,
            "top_k": settings.top_k or None,
            "top_p": settings.top_p,
        }
    return {"do_sample": False, "num_beams": 1}


def generate_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    settings: DecodingSection,
    *,
    num_return_sequences: int = 1,
    batch_size: int = 16,
    streamer: Any = None,
) -> list[list[str]]:
    """Completions (new text only) of already rendered prompt texts: one list per prompt."""
    import torch

    sampling = settings.strategy in ("sample", "best_of_n", "self_consistency")
    kwargs = _generate_kwargs(settings, sampling)
    if settings.strategy == "beam":
        kwargs["num_return_sequences"] = min(num_return_sequences, settings.num_beams)
    else:
        kwargs["num_return_sequences"] = num_return_sequences
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    results: list[list[str]] = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            encoded = {k: v.to(device) for k, v in encoded.items()}
            with torch.no_grad():
                output = model.generate(
                    **encoded,
                    max_new_tokens=settings.max_new_tokens,
                    eos_token_id=stop_token_ids(model, tokenizer),
                    pad_token_id=pad_id,
                    streamer=streamer,
                    **kwargs,
                )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            per_prompt = kwargs["num_return_sequences"]
            for i in range(len(batch)):
                results.append(
                    [text.strip() for text in decoded[i * per_prompt : (i + 1) * per_prompt]]
                )
    finally:
        tokenizer.padding_side = padding_side
    return results


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most common non-empty answer; ties go to the answer seen first."""
    counts = collections.Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def decode(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    settings: DecodingSection,
    *,
    chat: bool,
    scorer: Scorer | None = None,
    batch_size: int = 16,
    streamer: Any = None,
) -> list[Decoded]:
    """One chosen completion per prompt, by the settings' strategy."""
    texts = [render_prompt(tokenizer, p, chat=chat) for p in prompts]
    if settings.strategy in ("greedy", "sample", "beam"):
        outputs = generate_texts(
            model, tokenizer, texts, settings, batch_size=batch_size, streamer=streamer
        )
        return [
            Decoded(
                text=out[0],
                candidates=[Candidate(out[0])],
                answer=extract_answer(out[0], settings.answer_pattern),
            )
            for out in outputs
        ]
    candidates = generate_texts(
        model, tokenizer, texts, settings, num_return_sequences=settings.n, batch_size=batch_size
    )
    if settings.strategy == "best_of_n":
        if scorer is None:
            raise StageInputError("best_of_n needs a reward model: set decoding.reward_model")
        return [
            best_of_n(prompt, texts_, scorer, settings.answer_pattern)
            for prompt, texts_ in zip(prompts, candidates)
        ]
    return [self_consistency(texts_, settings.answer_pattern) for texts_ in candidates]


def best_of_n(
    prompt: Prompt, texts: list[str], scorer: Scorer, pattern: str | None = None
) -> Decoded:
    """The highest-scored candidate (the first of equals)."""
    scores = scorer([prompt] * len(texts), texts)
    ranked = [
        Candidate(text, float(score), extract_answer(text, pattern))
        for text, score in zip(texts, scores)
    ]
    best = max(range(len(ranked)), key=lambda i: (ranked[i].score, -i))
    return Decoded(text=ranked[best].text, candidates=ranked, answer=ranked[best].answer)


def self_consistency(texts: list[str], pattern: str | None) -> Decoded:
    """The majority final answer, with the first candidate that gave it."""
    candidates = [Candidate(text, answer=extract_answer(text, pattern)) for text in texts]
    answer = majority_vote([c.answer for c in candidates])
    chosen = next(
        (c.text for c in candidates if c.answer == answer and answer is not None), texts[0]
    )
    return Decoded(text=chosen, candidates=candidates, answer=answer)
