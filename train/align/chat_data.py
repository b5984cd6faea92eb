"""Records for the alignment methods: read, check, mix by weight, render and tokenize.

Record kinds (one JSON object per line, a parquet row, or a `datasets` row):

- chat: {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}
  (ShareGPT's {"conversations": [{"from": "human", "value": "..."}]} is accepted too);
- prompt/completion: {"prompt": ..., "completion": ...}, both text or both message lists;
- preference: {"prompt": ..., "chosen": ..., "rejected": ...}, text or message lists; without
  "prompt", chosen and rejected are whole conversations and their shared first messages are
  the prompt.
- unpaired (kto): {"prompt": ..., "completion": ..., "label": true/false}, text or message
  lists; a preference record is read as two (chosen: true, rejected: false).

Problems a user can fix (unknown role, empty assistant turn, missing fields) stop the run with
file and line, or with `on_bad_record: skip` are skipped and counted. Preference pairs whose
chosen and rejected are identical are dropped and counted. Examples over `max_length` are
truncated or dropped, and counted (`TokenStats`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from llmtrain.chat import BUILTIN_TEMPLATES, CHATML_TOKENS
from llmtrain.data_pipeline.readers import ReadStats, expand_paths, iter_records
from llmtrain.errors import InputDataError, StageInputError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "tool": "tool"}
RecordKind = Literal["sft", "preference", "prompt", "unpaired"]


class BadRecord(ValueError):
    """A record that cannot be used; the message says why (without the file and line)."""


# ---------------------------------------------------------------------------------------------
# Reading and checking records


@dataclass
class SourceStats:
    """What became of the records of one file."""

    path: str
    records: int = 0
    """Records read."""
    skipped: int = 0
    """Malformed records skipped (on_bad_record: skip)."""
    identical: int = 0
    """Preference pairs dropped because chosen == rejected."""
    train: int = 0
    """Training examples after weighting."""
    validation: int = 0
    """Examples held out for validation."""
    reasons: list[str] = field(default_factory=list)
    """The first few skip reasons."""


@dataclass
class ChatData:
    train: list[dict]
    validation: list[dict]
    sources: list[SourceStats]

    def metrics(self) -> dict[str, int]:
        """Counts for metrics.jsonl (step 0)."""
        return {
            "data/records": sum(s.records for s in self.sources),
            "data/skipped_bad_records": sum(s.skipped for s in self.sources),
            "data/dropped_identical_pairs": sum(s.identical for s in self.sources),
            "data/train_examples": len(self.train),
            "data/validation_examples": len(self.validation),
        }

    def summary(self) -> list[dict]:
        return [asdict(s) for s in self.sources]


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    """Check a list of messages; ShareGPT {from, value} turns are converted."""
    if not isinstance(value, list) or not value:
        raise BadRecord(f"{name} must be a non-empty list of messages")
    out = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise BadRecord(f"{name}[{index}] is not a mapping with role and content")
        if "from" in message and "role" not in message:
            sharegpt = message["from"]
            role = SHAREGPT_ROLES.get(sharegpt, sharegpt)
            content = message.get("value")
        else:
            role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise BadRecord(
                f"{name}[{index}] has unknown role {role!r}; roles are {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise BadRecord(f"{name}[{index}] ({role}) has no text content")
        if role == "assistant" and not content.strip():
            raise BadRecord(f"{name}[{index}] is an empty assistant turn")
        out.append({"role": role, "content": content})
    return out


def _is_messages(value: Any) -> bool:
    return isinstance(value, list)


def normalize_sft(record: dict) -> dict:
    """A chat record as {"messages", "train_from"} or a text one as {"prompt", "completion"}.

    `train_from`: index of the first message whose assistant turns are trained on (a chat
    prompt/completion record trains on its completion only).
    """
    if "messages" in record or "conversations" in record:
        key = "messages" if "messages" in record else "conversations"
        messages = _messages(record[key], key)
        if not any(m["role"] == "assistant" for m in messages):
            raise BadRecord(f"{key} has no assistant turn to train on")
        return {"messages": messages, "train_from": 0}
    if "prompt" in record and "completion" in record:
        prompt, completion = record["prompt"], record["completion"]
        if _is_messages(prompt) and _is_messages(completion):
            prompt_messages = _messages(prompt, "prompt")
            completion_messages = _messages(completion, "completion")
            if not any(m["role"] == "assistant" for m in completion_messages):
                raise BadRecord("completion has no assistant turn to train on")
            return {
                "messages": prompt_messages + completion_messages,
                "train_from": len(prompt_messages),
            }
        if isinstance(prompt, str) and isinstance(completion, str):
            if not completion.strip():
                raise BadRecord("completion is empty")
            return {"prompt": prompt, "completion": completion}
        raise BadRecord("prompt and completion must both be text or both be message lists")
    raise BadRecord(
        "expected a `messages` list, or `prompt` and `completion` "
        f"(fields: {', '.join(map(str, record)) or 'none'})"
    )


def normalize_prompt(record: dict) -> dict:
    """An RL prompt record: {"prompt": text or messages, ...other fields kept (e.g. answer)}."""
    if "prompt" not in record:
        raise BadRecord(
            f"expected a `prompt` (text or messages); fields: {', '.join(map(str, record)) or 'none'}"
        )
    prompt = record["prompt"]
    if _is_messages(prompt):
        prompt = _messages(prompt, "prompt")
        if prompt[-1]["role"] == "assistant":
            raise BadRecord("prompt ends with an assistant turn; the completion is generated")
    elif not isinstance(prompt, str) or not prompt.strip():
        raise BadRecord("prompt must be non-empty text or a list of messages")
    return {**record, "prompt": prompt}


def normalize_preference(record: dict, margin_field: str | None = None) -> dict | None:
    """{"prompt", "chosen", "rejected"[, "margin"]}, or None when chosen == rejected."""
    missing = [key for key in ("chosen", "rejected") if key not in record]
    if missing:
        raise BadRecord(
            f"expected `chosen` and `rejected` (and usually `prompt`); missing "
            f"{', '.join(missing)} (fields: {', '.join(map(str, record)) or 'none'})"
        )
    chosen, rejected = record["chosen"], record["rejected"]
    prompt = record.get("prompt")
    if _is_messages(chosen) and _is_messages(rejected):
        chosen = _messages(chosen, "chosen")
        rejected = _messages(rejected, "rejected")
        if prompt is None:  # whole conversations: the shared first messages are the prompt
            shared = 0
            while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
                shared += 1
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
            if not prompt and chosen and rejected:
                raise BadRecord("chosen and rejected share no prompt messages; add a `prompt`")
        else:
            prompt = _messages(prompt, "prompt")
        if chosen == rejected:
            return None
        for name, turns in (("chosen", chosen), ("rejected", rejected)):
            if not turns or turns[-1]["role"] != "assistant":
                raise BadRecord(f"{name} must end with an assistant turn")
    elif isinstance(chosen, str) and isinstance(rejected, str):
        if not isinstance(prompt, str):
            raise BadRecord("text chosen/rejected need a text `prompt`")
        if chosen == rejected:
            return None
        for name, text in (("chosen", chosen), ("rejected", rejected)):
            if not text.strip():
                raise BadRecord(f"{name} is empty")
    else:
        raise BadRecord("chosen and rejected must both be text or both be message lists")
    example = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if margin_field is not None:
        margin = record.get(margin_field, 0.0)
        if isinstance(margin, bool) or not isinstance(margin, int | float):
            raise BadRecord(f"{margin_field} must be a number, got {margin!r}")
        example["margin"] = float(margin)
    return example


def normalize_unpaired(record: dict) -> list[dict] | None:
    """{"prompt", "completion", "label"} examples: one, or two from a preference record (None
    when its chosen and rejected are identical)."""
    if "chosen" in record or "rejected" in record:
        pair = normalize_preference(record)
        if pair is None:
            return None
        return [
            {"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
            {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False},
        ]
    missing = [key for key in ("prompt", "completion", "label") if key not in record]
    if missing:
        raise BadRecord(
            f"expected `prompt`, `completion` and `label` (or a preference pair); missing "
            f"{', '.join(missing)} (fields: {', '.join(map(str, record)) or 'none'})"
        )
    label = record["label"]
    if not isinstance(label, bool):
        raise BadRecord(f"label must be true (a good completion) or false, got {label!r}")
    example = normalize_sft({"prompt": record["prompt"], "completion": record["completion"]})
    if "messages" in example:
        split = example["train_from"]
        if example["messages"][-1]["role"] != "assistant":
            raise BadRecord("completion must end with an assistant turn")
        prompt, completion = example["messages"][:split], example["messages"][split:]
    else:
        prompt, completion = example["prompt"], example["completion"]
    return [{"prompt": prompt, "completion": completion, "label": label}]


def read_examples(
    path: str,
    kind: RecordKind,
    *,
    split: str,
    on_bad_record: str,
    where: str,
    margin_field: str | None = None,
) -> tuple[list[dict], SourceStats]:
    """Every usable example of one file (several when `path` is a glob), with its stats."""
    stats = SourceStats(path=path)
    examples: list[dict] = []
    for file in expand_paths([path], key=f"{where}.path"):
        read_stats = ReadStats()
        for line, record in iter_records(
            file,
            on_error=on_bad_record,
            stats=read_stats,
            split=split,  # type: ignore[arg-type]
            skip_key=f"{where.split('.')[0]}.on_bad_record",
            encoding_key=None,  # UTF-8 only
        ):
            stats.records += 1
            try:
                if kind == "sft":
                    example = normalize_sft(record)
                elif kind == "prompt":
                    example = normalize_prompt(record)
                elif kind == "unpaired":
                    example = normalize_unpaired(record)
                else:
                    example = normalize_preference(record, margin_field)
            except BadRecord as exc:
                reason = f"{file}:{line}: {exc}"
                if on_bad_record == "skip":
                    stats.skipped += 1
                    if len(stats.reasons) < 5:
                        stats.reasons.append(reason)
                    continue
                raise InputDataError(
                    f"{reason}; fix the record, or set {where.split('.')[0]}.on_bad_record: skip "
                    "to skip and count such records"
                ) from None
            if example is None:
                stats.identical += 1
                continue
            if kind == "unpaired":
                examples.extend(example)
            else:
                examples.append(example)
        stats.skipped += read_stats.skipped
        stats.reasons.extend(read_stats.examples[: 5 - len(stats.reasons)])
    return examples, stats


def weighted(examples: list[dict], weight: float, rng: random.Random) -> list[dict]:
    """Each example floor(weight) times, plus a seeded sample for the fractional part."""
    whole, fraction = int(weight), weight - int(weight)
    out = examples * whole
    extra = round(fraction * len(examples))
    if extra:
        out += rng.sample(examples, extra)
    return out


def load_examples(
    section: Any, kind: RecordKind, *, method: str, seed: int, margin_field: str | None = None
) -> ChatData:
    """The training mixture and validation examples of an AlignSection."""
    rng = random.Random(seed)
    train: list[dict] = []
    validation: list[dict] = []
    sources: list[SourceStats] = []
    hold_out = section.validation_split if not section.validation_data else 0.0
    for index, item in enumerate(section.data):
        examples, stats = read_examples(
            item.path,
            kind,
            split=item.split,
            on_bad_record=section.on_bad_record,
            where=f"{method}.data[{index}]",
            margin_field=margin_field,
        )
        if not examples:
            raise InputDataError(
                f"{method}.data[{index}]: {item.path} holds no usable {kind} records "
                f"({stats.records} read, {stats.skipped} skipped, {stats.identical} identical "
                "pairs); check the file and the record format (docs/recipes.md)"
            )
        order = list(range(len(examples)))
        rng.shuffle(order)
        held = max(1, round(hold_out * len(examples))) if hold_out > 0 else 0
        if held >= len(examples):
            raise InputDataError(
                f"{method}.data[{index}]: {item.path} has {len(examples)} usable records, too "
                f"few to hold out {hold_out:.0%} for validation; add records, lower "
                f"{method}.validation_split, or give {method}.validation_data"
            )
        val = [examples[i] for i in order[:held]]
        kept = weighted([examples[i] for i in sorted(order[held:])], item.weight, rng)
        stats.train, stats.validation = len(kept), len(val)
        train += kept
        validation += val
        sources.append(stats)
    for index, item in enumerate(section.validation_data):
        examples, stats = read_examples(
            item.path,
            kind,
            split=item.split,
            on_bad_record=section.on_bad_record,
            where=f"{method}.validation_data[{index}]",
            margin_field=margin_field,
        )
        stats.validation = len(examples)
        validation += examples
        sources.append(stats)
    rng.shuffle(train)
    for stats in sources:
        for reason in stats.reasons:
            log.warning("skipped: %s", reason)
    return ChatData(train=train, validation=validation, sources=sources)


# ---------------------------------------------------------------------------------------------
# Chat template


def uses_chat_template(examples: Iterable[dict]) -> bool:
    """Whether any example is a message list (rendered with the chat template), not text."""
    return any("messages" in e or isinstance(e.get("chosen"), list) for e in examples)


def resolve_chat_template(tokenizer: Any, choice: str, *, method: str, tokenizer_dir: Any) -> str:
    """The template text for `choice` (tokenizer | chatml | Jinja); set on the tokenizer."""
    if choice == "tokenizer":
        template = tokenizer.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        if not template:
            raise StageInputError(
                f"the tokenizer in {tokenizer_dir} has no chat template and the recipe sets none; "
                f"set {method}.chat_template: chatml (the built-in ChatML template; its tokens "
                f"{' and '.join(CHATML_TOKENS)} are added if missing) or give a Jinja template "
                f"string as {method}.chat_template"
            )
    elif choice in BUILTIN_TEMPLATES:
        template = BUILTIN_TEMPLATES[choice]
    else:
        if "{{" not in choice and "{%" not in choice:
            raise StageInputError(
                f"{method}.chat_template: {choice!r} is neither `tokenizer`, a built-in template "
                f"({', '.join(BUILTIN_TEMPLATES)}) nor a Jinja template"
            )
        template = choice
    tokenizer.chat_template = template
    return template


def missing_template_tokens(tokenizer: Any, choice: str) -> list[str]:
    """Special tokens a built-in template needs that the tokenizer lacks."""
    if choice != "chatml":
        return []
    vocab = tokenizer.get_vocab()
    return [token for token in CHATML_TOKENS if token not in vocab]


def has_generation_markers(template: str) -> bool:
    from trl.chat_template_utils import has_generation_markers as check

    return check(template)


def training_template(tokenizer: Any, template: str, *, method: str) -> str:
    """A template whose {% generation %} spans mark assistant tokens, for assistant-only loss.

    TRL ships marked versions of common model templates (Qwen, Llama 3, Gemma, ...); other
    templates without markers are an error that says what to do.
    """
    if has_generation_markers(template):
        return template
    from trl.chat_template_utils import get_training_chat_template

    try:
        patched = get_training_chat_template(tokenizer)
    except Exception:  # TRL raises for templates it has no training version of
        patched = None
    if patched:
        log.info("using TRL's training version of the chat template (with generation markers)")
        return patched
    raise StageInputError(
        f"the chat template has no {{% generation %}} markers, which {method}.assistant_only_loss "
        "needs to find the assistant tokens; set "
        f"{method}.chat_template: chatml, give a template with {{% generation %}}...{{% "
        f"endgeneration %}} around assistant turns, or set {method}.assistant_only_loss: false"
    )


def stop_token_trained(tokenizer: Any, template: str) -> bool:
    """Whether the assistant mask of `template` ends on the end-of-turn token (a template
    that gives that token to the next message never trains the model to stop)."""
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    return is_chat_template_stop_token_trained(tokenizer, chat_template=template)


# ---------------------------------------------------------------------------------------------
# Tokenizing


@dataclass
class TokenStats:
    examples: int = 0
    truncated: int = 0
    """Examples over max_length that were truncated."""
    dropped_too_long: int = 0
    """Examples over max_length that were dropped (on_too_long: drop, or nothing left to
    train on after truncation)."""
    longest: int = 0
    """Tokens in the longest example before truncation."""

    def metrics(self, prefix: str) -> dict[str, int]:
        return {f"{prefix}/{key}": value for key, value in asdict(self).items()}


def _render(tokenizer: Any, messages: list[dict], template: str, **kwargs: Any) -> dict:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, **kwargs
    )


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def sft_tokens(
    example: dict, tokenizer: Any, template: str | None, assistant_only: bool
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one SFT example; labels are -100 where no loss is taken."""
    if "messages" in example:
        messages = example["messages"]
        rendered = _render(
            tokenizer, messages, template, return_assistant_tokens_mask=assistant_only
        )
        ids = list(rendered["input_ids"])
        mask = list(rendered["assistant_masks"]) if assistant_only else [1] * len(ids)
        if example["train_from"]:
            prompt = _render(
                tokenizer, messages[: example["train_from"]], template, add_generation_prompt=True
            )["input_ids"]
            start = _common_prefix(list(prompt), ids)
            mask = [0] * start + mask[start:]
    else:
        prompt_ids = tokenizer(example["prompt"])["input_ids"]
        completion_ids = tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
        completion_ids = completion_ids + [tokenizer.eos_token_id]
        ids = prompt_ids + completion_ids
        mask = ([0] * len(prompt_ids) if assistant_only else [1] * len(prompt_ids)) + [1] * len(
            completion_ids
        )
    labels = [token if keep else -100 for token, keep in zip(ids, mask, strict=True)]
    return ids, labels


def tokenize_sft(
    examples: Iterable[dict],
    tokenizer: Any,
    template: str | None,
    *,
    max_length: int,
    on_too_long: str,
    assistant_only: bool,
) -> tuple[list[dict], TokenStats]:
    """Rows {"input_ids", "labels"}; over-long examples truncated (keep the start) or dropped."""
    rows, stats = [], TokenStats()
    for example in examples:
        ids, labels = sft_tokens(example, tokenizer, template, assistant_only)
        if not any(label != -100 for label in labels):
            raise InputDataError(
                "an example has no tokens to train on after applying the chat template: "
                f"{str(example)[:200]}; check that the template renders assistant turns"
            )
        stats.longest = max(stats.longest, len(ids))
        if len(ids) > max_length:
            if on_too_long == "drop":
                stats.dropped_too_long += 1
                continue
            ids, labels = ids[:max_length], labels[:max_length]
            if not any(label != -100 for label in labels):  # the prompt alone fills max_length
                stats.dropped_too_long += 1
                continue
            stats.truncated += 1
        rows.append({"input_ids": ids, "labels": labels})
        stats.examples += 1
    return rows, stats


def preference_tokens(
    example: dict, tokenizer: Any, template: str | None
) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, chosen_ids, rejected_ids): the completions without the shared prompt."""
    if isinstance(example["chosen"], list):
        prompt = list(
            _render(tokenizer, example["prompt"], template, add_generation_prompt=True)["input_ids"]
        )
        chosen = list(
            _render(tokenizer, example["prompt"] + example["chosen"], template)["input_ids"]
        )
        rejected = list(
            _render(tokenizer, example["prompt"] + example["rejected"], template)["input_ids"]
        )
        start = min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected))
        return prompt[:start], chosen[start:], rejected[start:]
    prompt = list(tokenizer(example["prompt"])["input_ids"])
    eos = [tokenizer.eos_token_id]
    chosen = list(tokenizer(example["chosen"], add_special_tokens=False)["input_ids"]) + eos
    rejected = list(tokenizer(example["rejected"], add_special_tokens=False)["input_ids"]) + eos
    return prompt, chosen, rejected


def fit_preference(
    prompt: list[int], chosen: list[int], rejected: list[int], max_length: int
) -> tuple[list[int], list[int], list[int]]:
    """Truncate a pair to max_length: the prompt loses its oldest tokens first (it keeps at
    least half of max_length when it has that many), then the completions lose their ends."""
    longest = max(len(chosen), len(rejected))
    prompt_budget = min(len(prompt), max(max_length - longest, max_length // 2))
    prompt = prompt[len(prompt) - prompt_budget :]
    room = max_length - len(prompt)
    return prompt, chosen[:room], rejected[:room]


def tokenize_preferences(
    examples: Iterable[dict],
    tokenizer: Any,
    template: str | None,
    *,
    max_length: int,
    on_too_long: str,
) -> tuple[list[dict], TokenStats]:
    """Rows {"prompt_ids", "chosen_ids", "rejected_ids"[, "margin"]}."""
    rows, stats = [], TokenStats()
    for example in examples:
        prompt, chosen, rejected = preference_tokens(example, tokenizer, template)
        length = len(prompt) + max(len(chosen), len(rejected))
        stats.longest = max(stats.longest, length)
        if length > max_length:
            if on_too_long == "drop":
                stats.dropped_too_long += 1
                continue
            prompt, chosen, rejected = fit_preference(prompt, chosen, rejected, max_length)
            if chosen == rejected:  # the difference was cut off
                stats.dropped_too_long += 1
                continue
            stats.truncated += 1
        row = {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}
        if "margin" in example:
            row["margin"] = example["margin"]
        rows.append(row)
        stats.examples += 1
    return rows, stats


def unpaired_tokens(
    example: dict, tokenizer: Any, template: str | None
) -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids) of one unpaired example."""
    if isinstance(example["completion"], list):
        prompt = list(
            _render(tokenizer, example["prompt"], template, add_generation_prompt=True)["input_ids"]
        )
        whole = list(
            _render(tokenizer, example["prompt"] + example["completion"], template)["input_ids"]
        )
        start = _common_prefix(prompt, whole)
        return prompt[:start], whole[start:]
    prompt = list(tokenizer(example["prompt"])["input_ids"])
    completion = list(tokenizer(example["completion"], add_special_tokens=False)["input_ids"])
    return prompt, completion + [tokenizer.eos_token_id]


def tokenize_unpaired(
    examples: Iterable[dict],
    tokenizer: Any,
    template: str | None,
    *,
    max_length: int,
    on_too_long: str,
) -> tuple[list[dict], TokenStats]:
    """Rows {"prompt_ids", "completion_ids", "label"}, fitted to max_length as pairs are."""
    rows, stats = [], TokenStats()
    for example in examples:
        prompt, completion = unpaired_tokens(example, tokenizer, template)
        stats.longest = max(stats.longest, len(prompt) + len(completion))
        if len(prompt) + len(completion) > max_length:
            if on_too_long == "drop":
                stats.dropped_too_long += 1
                continue
            prompt, completion, _ = fit_preference(prompt, completion, completion, max_length)
            stats.truncated += 1
        rows.append({"prompt_ids": prompt, "completion_ids": completion, "label": example["label"]})
        stats.examples += 1
    return rows, stats
