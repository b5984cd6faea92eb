"""Final answers of completions: one extractor and one normalisation for rewards and eval.

The RL rewards (`answer_match`, `numeric_match`), eval's `exact_match` and self-consistency
votes, and the demo's arithmetic all read a completion's final answer here, so a completion
that earns the reward is one that eval scores correct, and the other way round.

Extraction (`extract_answer(text, pattern)`):

- with a pattern (a regex with a group): the first group of its last match; None when it does
  not match;
- without one: the text after the last "answer is" (to the end of that line), else the last
  number in the text, else the whole text; None for an empty text.

Normalisation (`normalize_answer`), applied to the extracted answer and to the reference:

- Unicode NFKC, case folded, runs of whitespace made one space;
- surrounding spaces, quotes, markdown emphasis (`*`, `` ` ``), `$` and punctuation
  (`.,;:!?`) stripped, so "The answer is 7." gives 7 and "**Paris**" gives paris;
- a number is written in one canonical form: thousands separators removed when they group
  digits by three (`1,234` -> `1234`; `1,5` stays text), a leading `+` and trailing zeros of a
  fraction dropped, exponents expanded (`3.0` -> `3`, `2.50` -> `2.5`, `1e3` -> `1000`,
  `-0` -> `0`), digits kept exactly (no float rounding of long integers).

Close to lm-evaluation-harness's gsm8k (case ignored; `$`, `,` and a final `.` dropped before
the exact match; its flexible-extract filter takes the last number) and verl's gsm8k reward
(the last number, `,` and `$` removed), with two differences: numbers compare by value (`3.0`
equals `3`, which both count wrong), and a comma is dropped only as a thousands separator
(both read `1,5` as 15). `numeric_match` compares `parse_number` of the normalised answer
within a tolerance instead.
"""

from __future__ import annotations

import math
import re
import unicodedata
from decimal import Decimal, InvalidOperation
from re import Pattern

_ANSWER_IS = re.compile(
    r"answer is[:\s]*([^\n]*?)(?=\.?[ \t]*$|\.\s)", re.IGNORECASE | re.MULTILINE
)
"""The text after "answer is", to the end of its sentence or line."""
_NUMBER = re.compile(
    r"(?<![\d.])"  # not the tail of a longer number
    r"(?:(?<![\w)])[-+])?"  # a sign, unless a binary operator (5-3)
    r"(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)"  # 1,234,567 or 1234567
    r"(?:\.\d+)?(?:e[-+]?\d+)?",
    re.IGNORECASE,
)
_STRIP = " \t.,;:!?\"'`*$"
_MAX_EXPONENT = 30
"""Numbers with a larger exponent keep scientific notation (no 1e400-digit strings)."""


def extract_answer(text: str, pattern: str | Pattern[str] | None = None) -> str | None:
    """The normalised final answer of a completion (see the module docstring), or None."""
    if pattern is not None:
        found = re.findall(pattern, text)
        if not found:
            return None
        last = found[-1]
        return normalize_answer(last[0] if isinstance(last, tuple) else last)
    said = _ANSWER_IS.findall(text)
    if said and normalize_answer(said[-1]):
        return normalize_answer(said[-1])
    numbers = _NUMBER.findall(text)
    answer = normalize_answer(numbers[-1] if numbers else text)
    return answer or None


def normalize_answer(text: object) -> str:
    """One written form per answer: see the module docstring."""
    text = unicodedata.normalize("NFKC", str(text)).casefold()
    text = " ".join(text.split()).strip(_STRIP)
    number = _canonical_number(text)
    return text if number is None else number


def is_correct(predicted: str | None, reference: object) -> bool:
    """Whether an extracted answer equals the reference answer after normalisation."""
    return predicted is not None and predicted == normalize_answer(reference)


def parse_number(answer: str | None) -> float | None:
    """The value of a normalised answer that is a finite number, else None."""
    if answer is None or _canonical_number(answer) is None:
        return None
    value = float(answer.replace(",", ""))
    return value if math.isfinite(value) else None


def last_number(text: str) -> float | None:
    """The value of the last number written in `text`, or None."""
    numbers = _NUMBER.findall(text)
    return parse_number(normalize_answer(numbers[-1])) if numbers else None


def _canonical_number(text: str) -> str | None:
    if not _NUMBER.fullmatch(text):
        return None
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None
    if value == 0:
        return "0"
    value = value.normalize()
    if abs(value.adjusted()) > _MAX_EXPONENT:
        return str(value).lower()
    return format(value, "f")
