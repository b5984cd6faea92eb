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
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmtrain.answers import extract_answer, is_correct, last_number, normalize_answer, parse_number
from llmtrain.errors import LLMTrainError, RecipeError, StageInputError
from llmtrain.train.align.rl_config import RewardSection

Prompt = str | list[dict[str, str]]
Completion = str | list[dict[str, str]]


def completion_text(completion: Completion) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content", "") for message in completion)


class AnswerMatch:
    """1.0 when the completion's final answer equals the reference after normalisation
    (llmtrain/answers.py: the same verdict as eval's exact_match)."""

    def __init__(self, section: RewardSection):
        self.pattern = section.pattern
        self.field = section.answer_field

    def __call__(self, prompts, completions, **fields) -> list[float]:
        answers = _reference(fields, self.field, len(completions))
        scores = []
        for completion, reference in zip(completions, answers):
            predicted = extract_answer(completion_text(completion), self.pattern)
            scores.append(float(is_correct(predicted, reference)))
        return scores


class NumericMatch:
    """1.0 when the completion's final answer (its last number when the answer is not one) is
    within tolerance of the reference."""

    def __init__(self, section: RewardSection):
        self.pattern = section.pattern
        self.field = section.answer_field
        self.tolerance = section.tolerance

    def __call__(self, prompts, completions, **fields) -> list[float]:
        answers = _reference(fields, self.field, len(completions))
        scores = []
        for completion, reference in zip(completions, answers):
            gold = parse_number(normalize_answer(reference))
            if gold is None:
                raise StageInputError(
                    f"numeric_match: the reference answer {reference!r} is not a number; use "
                    "answer_match for text answers"
                )
            predicted = extract_answer(completion_text(completion), self.pattern)
            value = parse_number(predicted)
            if value is None and predicted is not None:
                value = last_number(predicted)
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
    """The score of a sequence classifier with one output (a reward model).

    Each (prompt, completion) is rendered and tokenized again with the reward model's own
    tokenizer and chat template, the way the rm stage tokenized its training pairs (a chat: the
    whole conversation through the template; a text prompt: its tokens, the completion's, then
    eos), so a reward model with another tokenizer than the policy's scores what it was trained
    on. A decoder with a `score` head is read at the last real token with position ids counted
    from the first (`rm.sequence_scores`: any padding, pad == eos); other classifiers (BERT-like
    encoders) through their own pooling.
    """

    def __init__(
        self,
        path: Path,
        batch_size: int = 16,
        device: Any = None,
        dtype: Any = None,
        trust_remote_code: bool = False,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not (path / "config.json").is_file():
            raise StageInputError(f"reward model: {path} is not a model directory (no config.json)")
        self.path = path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(path), trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError, TypeError) as exc:
            raise StageInputError(
                f"reward model: cannot load the tokenizer in {path} ({exc}); save the reward "
                "model's tokenizer beside it (the rm stage does)"
            ) from exc
        try:
            self.model, info = AutoModelForSequenceClassification.from_pretrained(
                str(path),
                dtype=dtype or torch.float32,
                trust_remote_code=trust_remote_code,
                output_loading_info=True,
            )
        except (ValueError, OSError, KeyError) as exc:
            raise StageInputError(
                f"reward model: cannot load {path} as a sequence classifier ({exc})"
            ) from exc
        heads = [name for name in ("score", "classifier") if hasattr(self.model, name)]
        missing = set(info.get("missing_keys", ()))
        if any(key.startswith(f"{head}.") for key in missing for head in heads):
            raise StageInputError(
                f"reward model: {path} has no trained scalar head (its checkpoint holds no "
                f"{heads[0]} weights: a language model, not a reward model); train one with "
                "`llmtrain align --method rm` or give the rm stage's final/"
            )
        if self.model.config.num_labels != 1:
            raise StageInputError(
                f"reward model: {path} has {self.model.config.num_labels} outputs, not a scalar "
                "head; train one with `llmtrain align --method rm` (one output)"
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval()
        self.device = device or torch.device("cpu")
        self.model.to(self.device)
        self.batch_size = batch_size

    def _head(self) -> Any:
        from torch import nn

        head = getattr(self.model, "score", None)
        return head if isinstance(head, nn.Module) else None

    def token_ids(self, prompt: Prompt, completion: Completion) -> list[int]:
        """The sequence the reward model reads, tokenized as the rm stage tokenizes a pair."""
        tokenizer = self.tokenizer
        if isinstance(prompt, str):
            ids = list(tokenizer(prompt)["input_ids"])
            ids += tokenizer(completion_text(completion), add_special_tokens=False)["input_ids"]
            return ids + [tokenizer.eos_token_id]
        reply = (
            completion
            if isinstance(completion, list)
            else [{"role": "assistant", "content": completion}]
        )
        if not tokenizer.chat_template:
            raise StageInputError(
                f"reward model: the tokenizer in {self.path} has no chat template to render "
                "message prompts; save the rm stage's tokenizer with its template"
            )
        rendered = tokenizer.apply_chat_template(
            list(prompt) + list(reply), tokenize=True, return_dict=True
        )
        return list(rendered["input_ids"])

    def __call__(self, prompts, completions, **fields) -> list[float]:
        import torch

        from llmtrain.train.align.rm import sequence_scores

        sequences = [self.token_ids(p, c) for p, c in zip(prompts, completions)]
        pad = self.tokenizer.pad_token_id
        scores: list[float] = []
        for start in range(0, len(sequences), self.batch_size):
            batch = sequences[start : start + self.batch_size]
            width = max(len(ids) for ids in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
            input_ids, attention = input_ids.to(self.device), attention.to(self.device)
            with torch.no_grad():
                if self._head() is not None:
                    values = sequence_scores(self.model, input_ids, attention)
                else:
                    values = self.model(input_ids=input_ids, attention_mask=attention).logits[:, 0]
            scores.extend(values.float().tolist())
        return scores


def import_function(spec: str, search_path: Sequence[Path] = ()) -> Callable:
    """`package.module:function`, imported from sys.path, else from `search_path` (the current
    directory and the recipe's folder), which are then added to the end of sys.path."""
    module_name, _, name = spec.partition(":")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            extra = [str(p) for p in search_path if str(p) not in sys.path]
            if not extra or not _is_the_module(exc, module_name):
                raise
            sys.path.extend(extra)
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _is_the_module(exc, module_name):
            raise _import_failed(spec, module_name, exc) from exc
        where = ", ".join(str(p) for p in search_path)
        raise RecipeError(
            f"reward function {spec!r}: cannot import module {module_name!r} ({exc}); it is "
            f"looked up on PYTHONPATH{' and in ' + where if where else ''}: install it or put "
            "its folder on PYTHONPATH"
        ) from exc
    except Exception as exc:  # the user's module itself failed: SyntaxError, its own imports...
        raise _import_failed(spec, module_name, exc) from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise RecipeError(
            f"reward function {spec!r}: module {module_name!r} ({getattr(module, '__file__', '')})"
            f" has no function {name!r}"
        )
    return function


def _is_the_module(exc: ModuleNotFoundError, module_name: str) -> bool:
    """Whether the missing module is the one named (or a parent package of it), not something
    the user's module imports."""
    missing = exc.name or ""
    return module_name == missing or module_name.startswith(missing + ".")


def _import_failed(spec: str, module_name: str, exc: BaseException) -> RecipeError:
    return RecipeError(
        f"reward function {spec!r}: importing module {module_name!r} failed with "
        f"{type(exc).__name__}: {exc}; fix the module (run `python -c 'import {module_name}'` "
        "to see the traceback)"
    )


class NamedReward:
    def __init__(self, name: str, weight: float, function: Callable, spec: str | None = None):
        self.name = name
        self.weight = weight
        self.function = function
        self.spec = spec
        """`module:function` of a user function (named in its errors)."""
        # TRL names reward functions by __name__ in its metrics
        self.__name__ = name

    @property
    def label(self) -> str:
        if self.spec:
            return f"reward function {self.spec!r} ({self.name})"
        return f"reward {self.name!r}"

    def __call__(self, prompts, completions, **fields) -> list[float]:
        try:
            values = self.function(prompts=prompts, completions=completions, **fields)
        except LLMTrainError:
            raise
        except Exception as exc:
            if self.spec is None:
                raise
            raise StageInputError(
                f"{self.label} raised {type(exc).__name__}: {exc} (on {len(completions)} "
                f"completions, the first: prompt {_short(prompts[0])}, completion "
                f"{_short(completions[0])}); it is called as function(prompts=..., "
                "completions=..., completion_ids=..., **record_fields), so give it **kwargs"
            ) from exc
        return check_scores(self.label, values, prompts, completions)


def check_scores(label: str, values: Any, prompts: Sequence, completions: Sequence) -> list[float]:
    """One finite float per completion, or an error naming the function and the sample."""
    if isinstance(values, (str, bytes)):
        values = None
    try:
        values = list(values)
    except TypeError:
        raise StageInputError(
            f"{label} returned {type(values).__name__}, not a list of numbers (one per completion)"
        ) from None
    if len(values) != len(completions):
        raise StageInputError(
            f"{label} returned {len(values)} values for {len(completions)} completions; "
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
                f"{label} returned {value!r} for sample {index} (prompt "
                f"{_short(prompts[index])}, completion {_short(completions[index])}); "
                "rewards must be finite numbers"
            )
        scores.append(number)
    return scores


def _short(value: Any, limit: int = 80) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(m, dict) for m in value):
        text = " | ".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in value)
    else:
        text = str(value)
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
    sections: list[RewardSection],
    *,
    default_reward_model: Path,
    method: str,
    search_path: Sequence[Path] = (),
    device: Any = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
) -> RewardSet:
    """The method's rewards. `search_path`: where a user function's module is looked for
    besides sys.path; reward models load with `dtype` onto `device`."""
    names: dict[str, int] = {}
    rewards = []
    for section in sections:
        base = section.name or section.type
        names[base] = names.get(base, 0) + 1
        name = base if names[base] == 1 else f"{base}_{names[base]}"
        if section.type == "function":
            function = import_function(section.function or "", search_path)
        else:
            function = _build_one(
                section, default_reward_model, method, device, dtype, trust_remote_code
            )
        rewards.append(NamedReward(name, section.weight, function, section.function))
    return RewardSet(rewards)


def _build_one(
    section: RewardSection,
    default_reward_model: Path,
    method: str,
    device: Any,
    dtype: Any,
    trust_remote_code: bool,
) -> Callable:
    if section.type == "answer_match":
        return AnswerMatch(section)
    if section.type == "numeric_match":
        return NumericMatch(section)
    if section.type == "format":
        return FormatCheck(section)
    if section.type == "length_penalty":
        return LengthPenalty(section)
    path = Path(section.path) if section.path else default_reward_model
    if not path.is_dir():
        raise StageInputError(
            f"{method}: no reward model at {path}; run `llmtrain align --method rm RECIPE` first, "
            f"or set the reward's path to a reward model directory"
        )
    return RewardModelScore(
        path, section.batch_size, device=device, dtype=dtype, trust_remote_code=trust_remote_code
    )


def reward_search_path(recipe: Any) -> list[Path]:
    """Where a user reward function's module is looked for besides sys.path: the current
    directory and the recipe's folder."""
    paths = [Path.cwd()]
    if getattr(recipe, "source", None) is not None:
        paths.append(Path(recipe.source).parent)
    return list(dict.fromkeys(paths))
