"""Document filters: length, Gopher quality, Gopher repetition.

`first_failure(text, words, settings)` returns why a document is dropped, as
`(filter, check)` such as `("gopher_quality", "stop_words")`, or None to keep it. Filters run
in the order length, gopher_quality, repetition; a document is counted under the first that
drops it. The scan runs the language filter (`langid`) between length and gopher_quality, and
the quality classifier (`quality`) last.

Definitions follow Rae et al. 2021 (appendix A) as datatrove implements them, with two
choices made explicit: "words" for the quality checks are whitespace-separated; n-gram
checks of the repetition filter use the words of `hashing` (letter/digit runs, lowercased),
their characters counted in UTF-8 bytes of the words, and the top n-gram check only counts
an n-gram that occurs more than once.
"""

from __future__ import annotations

import re
import string

import numpy as np

from .config import FiltersSection, GopherQualityFilter, LengthFilter, RepetitionFilter
from .hashing import ngram_hashes

Failure = tuple[str, str]

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_PUNCTUATION = string.punctuation + "«»“”‘’„‚…–—·•"
_BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "‣", "⁃", "◦", "-", "*")
_ELLIPSES = ("...", "…")
_WORD_WITH_LETTER = re.compile(r"\S*[^\W\d_]\S*")
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")


def length_failure(text: str, settings: FiltersSection) -> Failure | None:
    """The length filter alone (it needs no word hashes, so it runs first and cheaply)."""
    if settings.length.enabled:
        check = _length(text, text.split(), settings.length)
        if check:
            return "length", check
    return None


def content_failure(
    text: str, words: np.ndarray, word_lengths: np.ndarray, settings: FiltersSection
) -> Failure | None:
    """The quality and repetition filters. `words`/`word_lengths` come from hashing.Words."""
    if settings.gopher_quality.enabled:
        check = _gopher_quality(text, text.split(), settings.gopher_quality)
        if check:
            return "gopher_quality", check
    if settings.repetition.enabled:
        check = _repetition(text, words, word_lengths, settings.repetition)
        if check:
            return "repetition", check
    return None


def first_failure(
    text: str, words: np.ndarray, word_lengths: np.ndarray, settings: FiltersSection
) -> Failure | None:
    """Why the document is dropped, or None: every filter in order."""
    return length_failure(text, settings) or content_failure(text, words, word_lengths, settings)


def _length(text: str, tokens: list[str], s: LengthFilter) -> str | None:
    if len(text) < s.min_chars:
        return "min_chars"
    if s.max_chars is not None and len(text) > s.max_chars:
        return "max_chars"
    if len(tokens) < s.min_words:
        return "min_words"
    if s.max_words is not None and len(tokens) > s.max_words:
        return "max_words"
    return None


def _gopher_quality(text: str, tokens: list[str], s: GopherQualityFilter) -> str | None:
    if not tokens:
        return "no_words"
    stripped = [token.strip(_PUNCTUATION) for token in tokens]
    word_lengths = [len(token) for token, core in zip(tokens, stripped, strict=True) if core]
    if not word_lengths:
        return "no_words"
    mean_length = sum(word_lengths) / len(word_lengths)
    if mean_length < s.min_mean_word_length:
        return "min_mean_word_length"
    if mean_length > s.max_mean_word_length:
        return "max_mean_word_length"
    # hashes and ellipses each against the limit (the paper's "for either the hash symbol or
    # the ellipsis"), not their sum
    symbols = max(text.count("#"), text.count("...") + text.count("…"))
    if symbols / len(tokens) > s.max_symbol_word_ratio:
        return "max_symbol_word_ratio"
    lines = text.splitlines() or [text]
    bullets = sum(1 for line in lines if line.lstrip().startswith(_BULLETS))
    if bullets / len(lines) > s.max_bullet_lines_ratio:
        return "max_bullet_lines_ratio"
    ellipses = sum(1 for line in lines if line.rstrip().endswith(_ELLIPSES))
    if ellipses / len(lines) > s.max_ellipsis_lines_ratio:
        return "max_ellipsis_lines_ratio"
    if len(_WORD_WITH_LETTER.findall(text)) / len(tokens) < s.min_alpha_words_ratio:
        return "min_alpha_words_ratio"
    if s.min_stop_words:
        found = 0
        for core in stripped:
            if core.lower() in STOP_WORDS:
                found += 1
                if found >= s.min_stop_words:
                    break
        else:
            return "min_stop_words"
    return None


def _duplicates(parts: list[str]) -> tuple[int, int]:
    """(elements that repeat an earlier one, their characters)."""
    seen: set[str] = set()
    count = chars = 0
    for part in parts:
        if part in seen:
            count += 1
            chars += len(part)
        else:
            seen.add(part)
    return count, chars


def _repetition(
    text: str, words: np.ndarray, word_lengths: np.ndarray, s: RepetitionFilter
) -> str | None:
    if not text:
        return None
    lines = [line for line in text.split("\n") if line.strip()]
    if lines:
        count, chars = _duplicates(lines)
        if count / len(lines) > s.max_duplicate_lines_ratio:
            return "max_duplicate_lines_ratio"
        if chars / len(text) > s.max_duplicate_lines_chars_ratio:
            return "max_duplicate_lines_chars_ratio"
    paragraphs = [p for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
    if paragraphs:
        count, chars = _duplicates(paragraphs)
        if count / len(paragraphs) > s.max_duplicate_paragraphs_ratio:
            return "max_duplicate_paragraphs_ratio"
        if chars / len(text) > s.max_duplicate_paragraphs_chars_ratio:
            return "max_duplicate_paragraphs_chars_ratio"
    total = int(word_lengths.sum())
    if total == 0:
        return None
    for n, limit in sorted(s.top_ngram_chars_ratio.items()):
        hashes = ngram_hashes(words, n, short=False)
        if hashes.size < 2:
            continue
        unique, first, counts = np.unique(hashes, return_index=True, return_counts=True)
        top = int(np.argmax(counts))
        if counts[top] < 2:
            continue
        start = int(first[top])
        chars = int(word_lengths[start : start + n].sum()) * int(counts[top])
        if chars / total > limit:
            return f"top_{n}gram_chars_ratio"
    for n, limit in sorted(s.duplicate_ngram_chars_ratio.items()):
        hashes = ngram_hashes(words, n, short=False)
        if hashes.size < 2:
            continue
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        repeats = np.flatnonzero(first[inverse] != np.arange(hashes.size))
        if repeats.size == 0:
            continue
        cover = np.zeros(words.size + 1, dtype=np.int64)
        np.add.at(cover, repeats, 1)
        np.add.at(cover, repeats + n, -1)
        covered = np.cumsum(cover[:-1]) > 0
        if int(word_lengths[covered].sum()) / total > limit:
            return f"duplicate_{n}gram_chars_ratio"
    return None


FILTER_NAMES = ("length", "gopher_quality", "repetition")
