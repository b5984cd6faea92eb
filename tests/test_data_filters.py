"""Cleaning and filters: each drops what it should and keeps what it should."""

from __future__ import annotations

import string

import numpy as np
import pytest

from llmtrain.data_pipeline.clean import clean_text
from llmtrain.data_pipeline.config import (
    CleanSection,
    DataSection,
    FiltersSection,
    RepetitionFilter,
)
from llmtrain.data_pipeline.filters import first_failure
from llmtrain.data_pipeline.hashing import words_of
from llmtrain.errors import RecipeError
from llmtrain.recipe import validate_section
from tests.data_support import STOP, english_document

RNG = np.random.default_rng(0)
GOOD = english_document(RNG, 100)


def verdict(text: str, **settings) -> tuple[str, str] | None:
    return first_failure(text, *words_of(text), FiltersSection.model_validate(settings))


def unique_words(count: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.array(list(string.ascii_lowercase))
    return ["".join(rng.choice(letters, int(rng.integers(5, 8)))) for _ in range(count)]


def lines_of(text: str, count: int) -> list[str]:
    words = text.split()
    size = -(-len(words) // count)
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)]


# ---------------------------------------------------------------------------------- cleaning


def test_clean_normalises_unicode_controls_and_whitespace():
    text = "\ufeff\n\nCafe\u0301 \x07bell\x00  \r\nline two\t \r\n\n\n\n\nend\x0b\n\n"
    assert clean_text(text, CleanSection()) == "Café bell\nline two\n\nend"
    assert clean_text("ﬁne ｗｉｄｅ", CleanSection(unicode_normalization="NFKC")) == "fine wide"
    assert clean_text("ﬁne", CleanSection()) == "ﬁne"  # NFC keeps compatibility characters
    assert (
        clean_text("    indented\n        code  ", CleanSection()) == "    indented\n        code"
    )


def test_each_cleaning_step_can_be_turned_off():
    off = CleanSection(
        unicode_normalization=None, remove_control_characters=False, normalize_whitespace=False
    )
    text = "Cafe\u0301\x07 \r\n\n\n\nx  "
    assert clean_text(text, off) == text
    assert clean_text(text, off.model_copy(update={"remove_control_characters": True})) == (
        "Cafe\u0301 \r\n\n\n\nx  "
    )


# ---------------------------------------------------------------------------------- filters


def test_a_good_document_passes_every_filter():
    assert verdict(GOOD) is None


@pytest.mark.parametrize(
    ("settings", "text", "check"),
    [
        ({"min_chars": 1000}, "word " * 60, "min_chars"),
        ({"max_chars": 100}, GOOD, "max_chars"),
        ({}, "the river and the stone", "min_words"),
        ({"max_words": 50}, GOOD, "max_words"),
    ],
)
def test_length_filter(settings, text, check):
    assert verdict(text, length=settings, gopher_quality={"enabled": False}) == ("length", check)
    off = {**settings, "enabled": False}
    assert (
        verdict(text, length=off, gopher_quality={"enabled": False}, repetition={"enabled": False})
        is None
    )


def test_gopher_quality_checks():
    words = GOOD.split()
    cases = {
        "min_mean_word_length": " ".join(["to be of it is an ox"] * 12),
        "max_mean_word_length": " ".join(w if w.lower() in STOP else w * 3 for w in words),
        "max_symbol_word_ratio": " ".join(
            w + (" #tag" if i % 4 == 0 else "") for i, w in enumerate(words)
        ),
        "max_bullet_lines_ratio": "\n".join("• " + line for line in lines_of(GOOD, 20)),
        "max_ellipsis_lines_ratio": "\n".join(
            line + ("..." if i % 2 else "") for i, line in enumerate(lines_of(GOOD, 20))
        ),
        "min_alpha_words_ratio": " ".join(
            w + (" 2024" if i % 3 == 0 else "") for i, w in enumerate(words)
        ),
        "min_stop_words": " ".join(
            w
            for w in words
            if w.lower().strip(".") not in {"the", "of", "and", "to", "with", "that", "have", "be"}
        ),
    }
    for check, text in cases.items():
        assert verdict(text) == ("gopher_quality", check), check
        assert (
            verdict(text, gopher_quality={"enabled": False}, repetition={"enabled": False}) is None
        )
    # every threshold is a setting: loosen that one alone and the document passes
    loose = {
        "min_mean_word_length": 0.0,
        "max_mean_word_length": 100.0,
        "max_symbol_word_ratio": 1.0,
        "max_bullet_lines_ratio": 1.0,
        "max_ellipsis_lines_ratio": 1.0,
        "min_alpha_words_ratio": 0.0,
        "min_stop_words": 0,
    }
    for check, text in cases.items():
        settings = {"gopher_quality": {check: loose[check]}, "repetition": {"enabled": False}}
        assert verdict(text, **settings) is None, check


def test_hashes_and_ellipses_are_each_held_to_the_symbol_ratio():
    words = GOOD.split()

    def with_symbols(hash_every: int, ellipsis_every: int) -> str:
        return " ".join(
            w
            + (" #tag" if hash_every and i % hash_every == 0 else "")
            + (" wait..." if ellipsis_every and i % ellipsis_every == 3 else "")
            for i, w in enumerate(words)
        )

    # about 7% hashes and 6% ellipses: each is under 0.1 (their sum is not) -> kept, as Gopher
    assert verdict(with_symbols(14, 14), repetition={"enabled": False}) is None
    for text in (with_symbols(8, 0), with_symbols(0, 8)):  # 11% of either one -> dropped
        assert verdict(text, repetition={"enabled": False}) == (
            "gopher_quality",
            "max_symbol_word_ratio",
        )


def interleaved(phrase: list[str], times: int, gap: int, filler: list[str]) -> str:
    """`phrase` `times` times, `gap` distinct filler words before each occurrence."""
    out: list[str] = []
    for i in range(times):
        out += filler[i * gap : (i + 1) * gap] + phrase
    return " ".join(out)


def test_repetition_checks():
    lines = lines_of(GOOD, 10)
    unique = unique_words(400)
    repeated_phrase = " ".join(unique[:10])
    short_lines = [" ".join(unique[200 + 5 * i : 205 + 5 * i]) for i in range(8)]
    long_line = " ".join(unique[250:280])
    # 2 of 11 lines repeat an earlier one (under 0.3), but they hold ~45% of the characters
    few_long_repeats = short_lines[:4] + [long_line] + short_lines[4:] + [long_line, long_line]
    lines_off = {"max_duplicate_lines_ratio": 1.0, "max_duplicate_lines_chars_ratio": 1.0}
    cases = {
        "max_duplicate_lines_ratio": ("\n".join(lines + lines[:5]), {}),
        "max_duplicate_lines_chars_ratio": ("\n".join(few_long_repeats), {}),
        "max_duplicate_paragraphs_ratio": ("\n\n".join(lines + lines[:5]), lines_off),
        "max_duplicate_paragraphs_chars_ratio": ("\n\n".join(few_long_repeats), lines_off),
        "top_2gram_chars_ratio": (" ".join(w + " golden harbor" for w in unique[:60]), {}),
        # a 3-gram with ~25% of the characters (its 2-grams ~17%, under 0.2)
        "top_3gram_chars_ratio": (interleaved(unique[300:303], 10, 9, unique), {}),
        # a 4-gram with ~20% (its 3-grams ~15%, 2-grams ~10%)
        "top_4gram_chars_ratio": (interleaved(unique[310:314], 8, 16, unique), {}),
        "duplicate_5gram_chars_ratio": (
            " ".join(unique[10:100]) + " " + " ".join([repeated_phrase] * 4),
            {"top_ngram_chars_ratio": {}},
        ),
    }
    top = RepetitionFilter().top_ngram_chars_ratio
    duplicate = RepetitionFilter().duplicate_ngram_chars_ratio
    off = {"gopher_quality": {"enabled": False}, "length": {"enabled": False}}
    for check, (text, settings) in cases.items():
        assert verdict(text, repetition=settings, **off) == ("repetition", check), check
        assert verdict(text, repetition={**settings, "enabled": False}, **off) is None
        # the check's own threshold decides: raised to 1, this check lets the document through
        if check.startswith("top_"):
            n = int(check[4])
            loose = {"top_ngram_chars_ratio": {**settings.get("top_ngram_chars_ratio", top), n: 1}}
        elif check.startswith("duplicate_"):
            loose = {"duplicate_ngram_chars_ratio": {**duplicate, int(check[10]): 1.0}}
        else:
            loose = {check: 1.0}
        assert verdict(text, repetition={**settings, **loose}, **off) != ("repetition", check)
    # n-grams that occur once are not repetition, whatever their share
    assert (
        verdict(" ".join(unique[:20]), length={"enabled": False}, gopher_quality={"enabled": False})
        is None
    )


# ---------------------------------------------------------------------------------- settings


def test_a_source_overrides_only_the_keys_it_sets():
    section = validate_section(
        DataSection,
        {
            "filters": {"length": {"min_words": 20}, "gopher_quality": {"min_stop_words": 1}},
            "sources": [
                {"name": "code", "paths": ["x"], "filters": {"gopher_quality": {"enabled": False}}}
            ],
        },
    )
    effective = section.filters_of(section.sources[0])
    assert effective.length.min_words == 20  # from data.filters
    assert effective.gopher_quality.enabled is False  # from the source
    assert effective.gopher_quality.min_stop_words == 1  # data.filters, not the default 2


def test_conflicting_override_is_reported_with_the_source():
    with pytest.raises(RecipeError) as error:
        validate_section(
            DataSection,
            {
                "filters": {"length": {"max_words": 100}},
                "sources": [
                    {"name": "a", "paths": ["x"], "filters": {"length": {"min_words": 500}}}
                ],
            },
        )
    assert str(error.value) == (
        "sources[0].filters: min_words 500 is above max_words 100; swap them"
    )
