"""Prompts for PPO and GRPO: rendered with the chat template and fitted to max_prompt_length.

A prompt over the limit is dropped (`on_too_long: drop`) or truncated: a text prompt keeps its
last max_prompt_length tokens; a conversation loses its earliest turns (a system message
stays) and is dropped when even its last user turn does not fit. Both are counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class FittedPrompt:
    prompt: Any
    """Text or messages (what reward functions receive)."""
    ids: list[int]
    """The prompt's tokens as the policy sees them (chat template and generation prompt)."""
    fields: dict[str, Any]
    """The record's other fields (e.g. answer)."""


def rl_chat_template(
    tokenizer: Any, choice: str, records: list[dict], *, method: str, tokenizer_dir: Any
) -> str | None:
    """The chat template message prompts are rendered with (set on the tokenizer), or None when
    every prompt is text, the recipe asks for the tokenizer's template and it has none (a base
    model: sampling then stops at eos only)."""
    from llmtrain.train.align.chat_data import resolve_chat_template

    all_text = all(isinstance(record["prompt"], str) for record in records)
    if all_text and choice == "tokenizer" and not tokenizer.chat_template:
        return None
    return resolve_chat_template(tokenizer, choice, method=method, tokenizer_dir=tokenizer_dir)


def prompt_ids(tokenizer: Any, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fit_prompts(
    records: list[dict], tokenizer: Any, max_length: int, on_too_long: str, counts: dict[str, int]
) -> list[FittedPrompt]:
    """The records' prompts fitted to `max_length` tokens; counts truncated and dropped ones."""
    counts.setdefault("truncated_prompts", 0)
    counts.setdefault("dropped_long_prompts", 0)
    fitted = []
    for record in records:
        prompt = record["prompt"]
        ids = prompt_ids(tokenizer, prompt)
        if len(ids) > max_length:
            if on_too_long == "drop":
                counts["dropped_long_prompts"] += 1
                continue
            prompt, ids = _truncate(tokenizer, prompt, ids, max_length)
            if prompt is None:
                counts["dropped_long_prompts"] += 1
                continue
            counts["truncated_prompts"] += 1
        fields = {key: value for key, value in record.items() if key != "prompt"}
        fitted.append(FittedPrompt(prompt, ids, fields))
    return fitted


def _truncate(
    tokenizer: Any, prompt: Any, ids: list[int], max_length: int
) -> tuple[Any, list[int]]:
    if isinstance(prompt, str):
        kept = ids[-max_length:]
        return tokenizer.decode(kept, skip_special_tokens=False), kept
    messages = list(prompt)
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    while len(turns) > 1:
        turns = turns[1:]
        while turns and turns[0]["role"] != "user" and len(turns) > 1:
            turns = turns[1:]
        candidate = system + turns
        ids = prompt_ids(tokenizer, candidate)
        if len(ids) <= max_length:
            return candidate, ids
    return None, []
