"""Reward sources shared by PPO and GRPO.

Every reward is a callable with TRL's reward-function signature,

    reward(prompts, completions, **record_fields) -> list[float]

where a prompt is text or a message list, a completion is text or a one-message list (TRL's
conversational form), and record_fields hold the prompt records' other fields (e.g. `answer`)
as lists aligned with the prompts. `RewardSet` runs them all, checks what each returns (one
finite number per completion: otherwise an error naming the function and the sample) and sums
them with their weights.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmtrain.errors import RecipeError, StageInputError
from llmtrain.train.align.rl_config import RewardSection

Prompt = str | list[dict[str, str]]
Completion = str | list[dict[str, str]]

_ANSWER_IS = re.compile(r"answer is[:\s]*([^\n]*?)\.?\s*$", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?")


def completion_text(completion: Completion) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content", "") for message in completion)


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation; 7.0 and 7 compare equal."""
    text = " ".join(str(text).lower().split()).strip(" .,;:!?\"'$")
    number = _as_number(text)
    if number is None:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def _as_number(text: str) -> float | None:
    try:
        value = float(str(text).replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def final_answer(text: str, pattern: str | None) -> str | None:
    """The final answer in a completion: `pattern`'s first group (last match), else the text
    after the last 'answer is', else the last number; None when there is none."""
    if pattern is not None:
        found = re.findall(pattern, text)
        if not found:
            return None
        last = found[-1]
        return last[0] if isinstance(last, tuple) else last
    found = _ANSWER_IS.findall(text)
    if found:
        return found[-1]
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


class AnswerMatch:
    """1.0 when the completion's final answer equals the reference after normalisation."""

    def __init__(self, section: RewardSection):
        self.pattern = section.pattern
        self.field = section.answer_field

    def __call__(self, prompts, completions, **fields) -> list[float]:
        answers = _reference(fields, self.field, len(completions))
        scores = []
        for completion, reference in zip(completions, answers):
            predicted = final_answer(completion_text(completion), self.pattern)
            scores.append(
                float(predicted is not None and normalize(predicted) == normalize(reference))
            )
        return scores


class NumericMatch:
    """1.0 when the completion's final number is within tolerance of the reference."""

    def __init__(self, section: RewardSection):
        self.pattern = section.pattern
        self.field = section.answer_field
        self.tolerance = section.tolerance

    def __call__(self, prompts, completions, **fields) -> list[float]:
        answers = _reference(fields, self.field, len(completions))
        scores = []
        for completion, reference in zip(completions, answers):
            gold = _as_number(str(reference).strip())
            if gold is None:
                raise StageInputError(
                    f"numeric_match: the reference answer {reference!r} is not a number; use "
                    "answer_match for text answers"
                )
            predicted = final_answer(completion_text(completion), self.pattern)
            value = _as_number(predicted.strip().rstrip(".")) if predicted is not None else None
            if value is None and predicted is not None:
                numbers = _NUMBER.findall(predicted)
                value = _as_number(numbers[-1]) if numbers else None
            ok = value is not None and abs(value - gold) <= self.tolerance * max(1.0, abs(gold))
            scores.append(float(ok))
        return scores


class FormatCheck:
    """1.0 when the completion matches the regex (searched, `.` matching newlines)."""

    def __init__(self, section: RewardSection):
        self.regex = re.compile(section.pattern or "", re.DOTALL)

    def __call__(self, prompts, completions, **fields) -> list[float]:
        return [float(self.regex.search(completion_text(c)) is not None) for c in completions]


class LengthPenalty:
    """-coef per completion token beyond target_length (words when token ids are not given)."""

    def __init__(self, section: RewardSection):
        self.target = section.target_length
        self.coef = section.coef

    def __call__(self, prompts, completions, completion_ids=None, **fields) -> list[float]:
        if completion_ids is not None:
            lengths = [len(ids) for ids in completion_ids]
        else:
            lengths = [len(completion_text(c).split()) for c in completions]
        return [-self.coef * max(0, n - self.target) for n in lengths]


def _reference(fields: dict, name: str, count: int) -> list[Any]:
    if name not in fields:
        raise StageInputError(
            f"the prompt records have no {name!r} field, which the reward needs "
            f"(fields: {', '.join(k for k in fields if not k.startswith('_')) or 'none'}); add it "
            "to every record or set answer_field"
        )
    values = fields[name]
    if len(values) != count:
        raise StageInputError(f"{name}: {len(values)} values for {count} completions")
    return list(values)


class RewardModelScore:
    """The score of a sequence classifier with one output, read at the last real token.

    The text is rendered with the reward model's own tokenizer and chat template and tokenized
    again, so a reward model with another tokenizer than the policy's scores correctly. The
    last real token is found from the attention mask, whatever the padding side, and also when
    pad == eos.
    """

    def __init__(self, path: Path, batch_size: int = 16, device: Any = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not (path / "config.json").is_file():
            raise StageInputError(f"reward model: {path} is not a model directory (no config.json)")
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(path), dtype=torch.float32
            )
        except (ValueError, OSError) as exc:
            raise StageInputError(
                f"reward model: cannot load {path} as a sequence classifier ({exc})"
            ) from exc
        if self.model.config.num_labels != 1:
            raise StageInputError(
                f"reward model: {path} has {self.model.config.num_labels} outputs, not a scalar head; "
                "train one with `llmtrain align --method rm` (one output)"
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval()
        self.device = device or torch.device("cpu")
        self.model.to(self.device)
        self.batch_size = batch_size

    def text(self, prompt: Prompt, completion: Completion) -> str:
        if isinstance(prompt, str):
            return prompt + completion_text(completion)
        reply = (
            completion
            if isinstance(completion, list)
            else [{"role": "assistant", "content": completion}]
        )
        if not self.tokenizer.chat_template:
            raise StageInputError(
                f"reward model: the tokenizer in {self.path} has no chat template to render "
                "message prompts; save the rm stage's tokenizer with its template"
            )
        return self.tokenizer.apply_chat_template(list(prompt) + list(reply), tokenize=False)

    def __call__(self, prompts, completions, **fields) -> list[float]:
        import torch

        texts = [self.text(p, c) for p, c in zip(prompts, completions)]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(self.device)
            with torch.no_grad():
                per_token = per_token_scores(
                    self.model, batch["input_ids"], batch["attention_mask"]
                )
            last = last_token_index(batch["attention_mask"])
            scores.extend(per_token[torch.arange(len(last)), last].float().tolist())
        return scores


def per_token_scores(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """A sequence classifier's score head applied at every position: [batch, length].

    (The class itself pools one position, which it finds from pad_token_id: wrong when
    pad == eos and the text contains eos. The attention mask is reliable.)"""
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return model.score(hidden).squeeze(-1)


def last_token_index(attention_mask: Any) -> Any:
    """Index of the last attended position of each row (left or right padding)."""
    import torch

    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask * positions).argmax(dim=1)


def import_function(spec: str) -> Callable:
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(
            f"reward function {spec!r}: cannot import module {module_name!r} ({exc}); install it or "
            "put its folder on PYTHONPATH"
        ) from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise RecipeError(
            f"reward function {spec!r}: module {module_name!r} has no function {name!r}"
        )
    return function


class NamedReward:
    def __init__(self, name: str, weight: float, function: Callable):
        self.name = name
        self.weight = weight
        self.function = function
        # TRL names reward functions by __name__ in its metrics
        self.__name__ = name

    def __call__(self, prompts, completions, **fields) -> list[float]:
        values = self.function(prompts=prompts, completions=completions, **fields)
        return check_scores(self.name, values, prompts, completions)


def check_scores(name: str, values: Any, prompts: Sequence, completions: Sequence) -> list[float]:
    """One finite float per completion, or an error naming the function and the sample."""
    try:
        values = list(values)
    except TypeError:
        raise StageInputError(
            f"reward {name!r} returned {type(values).__name__}, not a list of numbers"
        ) from None
    if len(values) != len(completions):
        raise StageInputError(
            f"reward {name!r} returned {len(values)} values for {len(completions)} completions; "
            "it must return one number per completion"
        )
    scores = []
    for index, value in enumerate(values):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise StageInputError(
                f"reward {name!r} returned {value!r} for sample {index} (prompt "
                f"{_short(prompts[index])}, completion {_short(completion_text(completions[index]))}); "
                "rewards must be finite numbers"
            )
        scores.append(number)
    return scores


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else completion_text(value)
    text = text.replace("\n", " ")
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


class RewardSet:
    """Every reward of a method, run together and summed with their weights."""

    def __init__(self, rewards: list[NamedReward]):
        self.rewards = rewards

    def score(self, prompts, completions, **fields) -> tuple[list[float], dict[str, list[float]]]:
        per_reward = {r.name: r(prompts, completions, **fields) for r in self.rewards}
        totals = [
            sum(r.weight * per_reward[r.name][i] for r in self.rewards)
            for i in range(len(completions))
        ]
        return totals, per_reward

    @property
    def reward_models(self) -> list[RewardModelScore]:
        return [r.function for r in self.rewards if isinstance(r.function, RewardModelScore)]


def build_rewards(
    sections: list[RewardSection], *, default_reward_model: Path, method: str
) -> RewardSet:
    names: dict[str, int] = {}
    rewards = []
    for section in sections:
        base = section.name or section.type
        names[base] = names.get(base, 0) + 1
        name = base if names[base] == 1 else f"{base}_{names[base]}"
        rewards.append(
            NamedReward(name, section.weight, _build_one(section, default_reward_model, method))
        )
    return RewardSet(rewards)


def _build_one(section: RewardSection, default_reward_model: Path, method: str) -> Callable:
    if section.type == "answer_match":
        return AnswerMatch(section)
    if section.type == "numeric_match":
        return NumericMatch(section)
    if section.type == "format":
        return FormatCheck(section)
    if section.type == "length_penalty":
        return LengthPenalty(section)
    if section.type == "function":
        return import_function(section.function or "")
    path = Path(section.path) if section.path else default_reward_model
    if not path.is_dir():
        raise StageInputError(
            f"{method}: no reward model at {path}; run `llmtrain align --method rm RECIPE` first, "
            f"or set the reward's path to a reward model directory"
        )
    return RewardModelScore(path, section.batch_size)
