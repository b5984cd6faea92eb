"""Language identification of documents: lingua (models inside its package, so it works
offline) or a fastText language-ID model the user gives (lid.176.bin, GlotLID's model.bin).

`detector_for(settings)` returns one detector per settings in a process (built on first use,
so a worker builds it once); `detector.detect(texts)` gives each text's most likely language
and its score. The language filter (`filters.language_failure`) keeps a document when that
language is one of `languages` and the score is at least `min_score`.
"""

from __future__ import annotations

import functools
from typing import Any

from llmtrain.errors import RecipeError

from .config import LanguageFilter
from .filters import Failure

UNKNOWN = "und"
"""The language of a text the detector cannot place (no letters, or lingua has no guess)."""


PACKAGES = {"lingua": "lingua-language-detector", "fasttext": "fasttext-wheel"}
"""The distributions (of the `data` extra) that provide the optional modules."""


def require(module: str, what: str) -> Any:
    """Import an optional module of the `data` extra, or a RecipeError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RecipeError(
            f"{what} needs {PACKAGES[module]}; install it with `pip install 'llmtrain[data]'`"
        ) from None


class LinguaDetector:
    """lingua over all its languages; the score is its confidence in the top language."""

    def __init__(self, low_accuracy: bool):
        lingua = require("lingua", "data.filters.language")
        builder = lingua.LanguageDetectorBuilder.from_all_languages()
        if low_accuracy:
            builder = builder.with_low_accuracy_mode()
        self._detector = builder.build()
        self.labels = frozenset(
            language.iso_code_639_1.name.lower() for language in lingua.Language.all()
        )

    def detect(self, texts: list[str]) -> tuple[list[str], list[float]]:
        languages, scores = [], []
        for text in texts:
            values = self._detector.compute_language_confidence_values(text)
            if values and values[0].value > 0:
                languages.append(values[0].language.iso_code_639_1.name.lower())
                scores.append(float(values[0].value))
            else:
                languages.append(UNKNOWN)
                scores.append(0.0)
        return languages, scores


class FastTextDetector:
    """A fastText language-ID model; the score is the top label's probability."""

    PREFIX = "__label__"

    def __init__(self, path: str):
        fasttext = require("fasttext", "data.filters.language.model")
        self._model = load_fasttext(fasttext, path, "data.filters.language.model")
        self.labels = frozenset(label.removeprefix(self.PREFIX) for label in self._model.labels)

    def detect(self, texts: list[str]) -> tuple[list[str], list[float]]:
        # fastText reads one line: newlines become spaces
        labels, probabilities = self._model.predict([t.replace("\n", " ") for t in texts], k=1)
        languages = [label[0].removeprefix(self.PREFIX) if label else UNKNOWN for label in labels]
        scores = [min(float(p[0]), 1.0) if len(p) else 0.0 for p in probabilities]
        return languages, scores


def load_fasttext(fasttext: Any, path: str, key: str) -> Any:
    """fastText's model at `path`; a RecipeError naming `key` when it cannot be read."""
    try:
        return fasttext.load_model(str(path))
    except ValueError as exc:
        raise RecipeError(f"{key}: {path} is not a fastText model ({exc})") from None


def language_failure(language: str, score: float, settings: LanguageFilter) -> Failure | None:
    """Why the language filter drops a document of this detected language and score."""
    if language not in settings.languages:
        return "language", "other_language"
    if score < settings.min_score:
        return "language", "low_score"
    return None


@functools.cache
def _detector(model: str | None, low_accuracy: bool) -> LinguaDetector | FastTextDetector:
    return FastTextDetector(model) if model is not None else LinguaDetector(low_accuracy)


def detector_for(settings: LanguageFilter) -> LinguaDetector | FastTextDetector:
    """This process's detector for these settings (built once), with `languages` checked."""
    model = None if settings.model is None else str(settings.model)
    detector = _detector(model, settings.low_accuracy)
    unknown = [code for code in settings.languages if code not in detector.labels]
    if unknown:
        known = (
            "ISO 639-1 codes such as en, de, fr"
            if model is None
            else f"the labels of {model} without __label__ ({', '.join(sorted(detector.labels)[:5])})"
        )
        raise RecipeError(
            f"data.filters.language.languages: {', '.join(map(repr, unknown))} is not a "
            f"language the detector knows; use {known}"
        )
    return detector
