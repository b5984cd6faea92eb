"""Cleaning and filters: each drops what it should and keeps what it should."""

from __future__ import annotations

import string

import numpy as np
import pytest

from llmtrain.data_pipeline.clean import clean_text
from llmtrain.data_pipeline.config import CleanSection, DataSection, FiltersSection
from llmtrain.data_pipeline.filters import first_failure
from llmtrain.data_pipeline.hashing import words_of
from llmtrain.errors import RecipeError
from llmtrain.recipe import validate_section
from tests.data_support import english_document

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
        "max_mean_word_length": " ".join(w * 3 for w in words),
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
    # every threshold is a setting: loosen it and the document passes
    assert verdict(cases["min_stop_words"], gopher_quality={"min_stop_words": 0}) is None
    assert (
        verdict(cases["max_bullet_lines_ratio"], gopher_quality={"max_bullet_lines_ratio": 1.0})
        is None
    )


def test_repetition_checks():
    lines = lines_of(GOOD, 10)
    unique = unique_words(200)
    repeated_phrase = " ".join(unique[:10])
    cases = {
        "max_duplicate_lines_ratio": ("\n".join(lines + lines[:5]), {}),
        "max_duplicate_paragraphs_ratio": (
            "\n\n".join(lines + lines[:5]),
            {"max_duplicate_lines_ratio": 1.0, "max_duplicate_lines_chars_ratio": 1.0},
        ),
        "top_2gram_chars_ratio": (" ".join(w + " golden harbor" for w in unique[:60]), {}),
        "duplicate_5gram_chars_ratio": (
            " ".join(unique[10:100]) + " " + " ".join([repeated_phrase] * 4),
            {"top_ngram_chars_ratio": {}},
        ),
    }
    for check, (text, settings) in cases.items():
        off = {"gopher_quality": {"enabled": False}, "length": {"enabled": False}}
        assert verdict(text, repetition=settings, **off) == ("repetition", check), check
        assert verdict(text, repetition={**settings, "enabled": False}, **off) is None
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
