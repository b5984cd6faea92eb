"""The trained quality classifier, DCLM-style: a fastText model of positive (keep) against
negative (drop) documents.

`llmtrain data train-classifier RECIPE` (`train_classifier`) reads data.classifier's files,
cleans the texts as the build does, holds out a share of each class (chosen from the recipe
seed), trains with one thread and the recipe seed (so the model is reproducible), measures
precision, recall and AUC on the held-out documents, and writes the model directory
atomically:

    model.bin          the fastText model
    classifier.json    the training settings, the files read, the counts and the metrics

The build scores every document that passed the other filters (`QualityModel.score`: the
probability of the positive class) and keeps those at or above `threshold` (in the scan), or
the `top_fraction` of each source (in the dedup step, over the documents dedup and
decontamination left, so both executors choose the same ones: `top_fraction_drops`).
"""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from llmtrain.atomic import atomic_path, atomic_write_json
from llmtrain.errors import StageInputError

from .clean import clean_text
from .config import ClassifierSection, DataSection
from .langid import load_fasttext, require
from .readers import ReadStats, expand_paths, iter_texts

log = logging.getLogger("llmtrain.data")

MODEL_FILE = "model.bin"
INFO_FILE = "classifier.json"
DEFAULT_DIRECTORY = "quality_classifier"
POSITIVE, NEGATIVE = "__label__positive", "__label__negative"
HISTOGRAM_BINS = 100
"""Score histogram bins over [0, 1] recorded per source (quantiles are read from it)."""
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def model_directory(recipe: Any, setting: Path | None) -> Path:
    """data.filters.quality.model, or its default <output_dir>/quality_classifier."""
    return Path(setting) if setting is not None else Path(recipe.output_dir) / DEFAULT_DIRECTORY


def check_model_directory(directory: Path) -> None:
    """A StageInputError naming `llmtrain data train-classifier` when the model is missing."""
    missing = [name for name in (MODEL_FILE, INFO_FILE) if not (directory / name).is_file()]
    if missing:
        raise StageInputError(
            f"data.filters.quality.model: {directory} holds no trained classifier ({missing[0]} "
            "missing); train one with `llmtrain data train-classifier RECIPE` (data.classifier "
            "names its positive and negative files), or set data.filters.quality.model"
        )


def one_line(text: str) -> str:
    """What fastText reads of a document: one line (its newlines become spaces)."""
    return " ".join(text.split("\n"))


class QualityModel:
    """A fastText classifier; `score(texts)` is each text's probability of the positive class."""

    def __init__(self, model: Any):
        self._model = model

    @classmethod
    def load(cls, directory: Path) -> QualityModel:
        check_model_directory(directory)
        fasttext = require("fasttext", "data.filters.quality")
        path = directory / MODEL_FILE
        return cls(load_fasttext(fasttext, path, "data.filters.quality.model"))

    def score(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, dtype=np.float32)
        # the top label only: fastText's batch predict repeats the top probability for k > 1;
        # with two classes the other one's probability is the rest
        labels, probabilities = self._model.predict([one_line(t) for t in texts], k=1)
        top = np.array([float(p[0]) for p in probabilities], dtype=np.float64)
        positive = np.array([names[0] == POSITIVE for names in labels], dtype=bool)
        return np.clip(np.where(positive, top, 1.0 - top), 0.0, 1.0).astype(np.float32)


@functools.cache
def quality_model(directory: str) -> QualityModel:
    """This process's model of `directory` (loaded once per worker)."""
    return QualityModel.load(Path(directory))


# ---------------------------------------------------------------------------------------------
# Score statistics


def histogram(scores: np.ndarray) -> np.ndarray:
    """Counts of scores in HISTOGRAM_BINS equal bins over [0, 1] (1.0 in the last)."""
    scaled = (np.asarray(scores, dtype=np.float64) * HISTOGRAM_BINS).astype(np.int64)
    bins = np.minimum(scaled, HISTOGRAM_BINS - 1)
    return np.bincount(bins, minlength=HISTOGRAM_BINS)


def distribution(counts: list[int]) -> dict:
    """The report's view of a score histogram: documents scored, quantiles (to the bin's
    upper edge, 0.01) and a 10-bin histogram."""
    counts_array = np.asarray(counts, dtype=np.int64)
    total = int(counts_array.sum())
    cumulative = np.cumsum(counts_array)
    quantiles = {}
    for q in QUANTILES:
        if total:
            bin_index = int(np.searchsorted(cumulative, q * total, side="left"))
            quantiles[f"p{round(100 * q)}"] = round((bin_index + 1) / HISTOGRAM_BINS, 2)
    coarse = counts_array.reshape(10, -1).sum(axis=1)
    return {
        "scored": total,
        "quantiles": quantiles,
        "histogram": {f"{i / 10:.1f}-{(i + 1) / 10:.1f}": int(c) for i, c in enumerate(coarse)},
    }


def top_fraction_drops(scores: np.ndarray, kept: np.ndarray, fraction: float) -> np.ndarray:
    """Indices (among a source's documents) of the kept ones outside the top `fraction` by
    score; ties go to the earlier document (a stable sort), so the choice is deterministic."""
    candidates = np.flatnonzero(kept)
    keep = int(np.ceil(fraction * candidates.size - 1e-9))
    order = np.argsort(-scores[candidates], kind="stable")
    return np.sort(candidates[order[keep:]])


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2  # 1-based rank of each distinct score
    rank_sum = float(average_rank[inverse][labels].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def metrics(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    predicted = scores >= threshold
    true_positive = int((predicted & labels).sum())
    return {
        "auc": round(auc(scores, labels), 6),
        "threshold": threshold,
        "precision": round(true_positive / max(int(predicted.sum()), 1), 6),
        "recall": round(true_positive / max(int(labels.sum()), 1), 6),
        "accuracy": round(float((predicted == labels).mean()), 6),
        "positive": int(labels.sum()),
        "negative": int((~labels).sum()),
    }


# ---------------------------------------------------------------------------------------------
# Training


def _read_class(section: DataSection, settings: ClassifierSection, side: str) -> list[str]:
    files = expand_paths(getattr(settings, side), key=f"data.classifier.{side}")
    texts: list[str] = []
    for path in files:
        for text in iter_texts(path, text_field=settings.text_field, stats=ReadStats()):
            text = clean_text(text, section.clean)
            if text.strip():
                texts.append(text)
            if settings.max_documents is not None and len(texts) >= settings.max_documents:
                return texts
    if len(texts) < 2:
        raise StageInputError(
            f"data.classifier.{side}: {len(texts)} documents in {', '.join(map(str, files))}; "
            "the classifier needs at least 2 per class (one to train on, one to measure)"
        )
    return texts


def _split(count: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    held = min(max(1, round(fraction * count)), count - 1)
    order = rng.permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])


def train_classifier(recipe: Any) -> dict:
    """Train data.classifier's model into data.filters.quality.model; returns classifier.json."""
    section: DataSection = recipe.section("data")
    settings = section.classifier
    if settings is None:
        raise StageInputError(
            "llmtrain data train-classifier: the recipe has no data.classifier section; add "
            "one with the positive and negative files, e.g. data.classifier: {positive: "
            "[good/*.jsonl], negative: [web/*.jsonl]}"
        )
    fasttext = require("fasttext", "llmtrain data train-classifier")
    directory = model_directory(recipe, section.filters.quality.model)
    classes = {side: _read_class(section, settings, side) for side in ("positive", "negative")}
    rng = np.random.default_rng([recipe.seed, 19])
    train, held_out, counts = [], [], {}
    for side, texts in classes.items():
        label = POSITIVE if side == "positive" else NEGATIVE
        fit, test = _split(len(texts), settings.holdout_fraction, rng)
        train += [f"{label} {one_line(texts[i])}" for i in fit]
        held_out += [(texts[i], side == "positive") for i in test]
        counts[side] = {"train": int(fit.size), "held_out": int(test.size)}
    train = [train[i] for i in rng.permutation(len(train))]  # classes interleaved for SGD
    hyper = {
        "dim": settings.dim,
        "wordNgrams": settings.word_ngrams,
        "epoch": settings.epoch,
        "lr": settings.lr,
        "minCount": settings.min_count,
        "bucket": settings.bucket,
    }
    with tempfile.TemporaryDirectory(prefix="llmtrain-classifier-") as work:
        train_file = Path(work) / "train.txt"
        train_file.write_text("\n".join(train) + "\n", encoding="utf-8")
        model = fasttext.train_supervised(
            input=str(train_file), thread=1, seed=recipe.seed, verbose=0, **hyper
        )
    held_scores = QualityModel(model).score([text for text, _ in held_out])
    labels = np.array([is_positive for _, is_positive in held_out], dtype=bool)
    info = {
        "settings": {**settings.model_dump(mode="json"), "seed": recipe.seed},
        "fasttext": hyper,
        "documents": counts,
        "held_out": metrics(held_scores, labels),
        "labels": {"positive": POSITIVE, "negative": NEGATIVE},
    }
    with atomic_path(directory) as tmp:
        tmp.mkdir(parents=True)
        model.save_model(str(tmp / MODEL_FILE))
        atomic_write_json(tmp / INFO_FILE, info)
    log.info("quality classifier: %s", info["held_out"])
    return {"directory": str(directory), **info}
