"""The dedup step: exact and near duplicates across every source, then decontamination.

Documents are numbered globally in recipe order (sources as listed, then files, then
position), so "the earliest" always means the copy in the source listed first. Exact dedup
keeps the earliest document of each digest; near dedup runs on what is left and keeps the
earliest document of each cluster; then documents overlapping an eval file are dropped.

The result is a status per document (`KEPT`, `EXACT`, `NEAR`, `CONTAMINATED`), saved per
scanned file, and the counts the manifest reports.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np

from .config import DedupSection
from .minhash import band_keys, bucket_pairs, cluster_stats, connected_components, similarity
from .scan import ScanOutput

log = logging.getLogger(__name__)

KEPT, EXACT, NEAR, CONTAMINATED = 0, 1, 2, 3
_PAIR_BLOCK = 1 << 16


class Corpus:
    """The scanned files of every source, in global document order."""

    def __init__(self, files: list[tuple[str, ScanOutput]]):
        self.files = files
        counts = [output.documents for _, output in files]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.size = int(self.starts[-1])

    def concat(self, name: str) -> np.ndarray:
        """A one-value-per-document column of every file, concatenated."""
        return np.concatenate([output.array(name) for _, output in self.files])

    def _by_file(self, ids: np.ndarray) -> list[tuple[int, np.ndarray]]:
        file_of = np.searchsorted(self.starts, ids, side="right") - 1
        return [(int(f), np.flatnonzero(file_of == f)) for f in np.unique(file_of)]

    def signature_rows(self, ids: np.ndarray) -> np.ndarray:
        """Whole signatures of the given documents (any order)."""
        rows = None
        for f, chosen in self._by_file(ids):
            part = self.files[f][1].signature_rows(ids[chosen] - self.starts[f])
            if rows is None:
                rows = np.empty((ids.size, part.shape[1]), dtype=np.uint32)
            rows[chosen] = part
        return rows if rows is not None else np.zeros((0, 0), dtype=np.uint32)

    def band(self, band: int, rows: int, ids: np.ndarray) -> np.ndarray:
        """The band's key of each of the given documents (ascending ids)."""
        keys = np.empty(ids.size, dtype=np.uint64)
        for f, chosen in self._by_file(ids):
            columns = self.files[f][1].signature_columns(band * rows, (band + 1) * rows)
            keys[chosen] = band_keys(columns[ids[chosen] - self.starts[f]], 0, rows)
        return keys


def exact_duplicates(corpus: Corpus) -> np.ndarray:
    """True for every document whose digest appeared earlier."""
    digests = corpus.concat("exact")
    duplicate = np.ones(corpus.size, dtype=bool)
    if corpus.size:
        _, first = np.unique(digests, return_index=True)  # index of the first occurrence
        duplicate[first] = False
    return duplicate


def near_duplicates(
    corpus: Corpus, candidates: np.ndarray, settings: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """(True for every document removed as a near duplicate, cluster statistics)."""
    ids = np.flatnonzero(candidates)
    removed = np.zeros(corpus.size, dtype=bool)
    if ids.size < 2:
        return removed, asdict(cluster_stats(np.arange(corpus.size), candidates))
    firsts, seconds = [], []
    for band in range(settings.bands):
        a, b = bucket_pairs(corpus.band(band, settings.rows, ids), ids)
        firsts.append(a)
        seconds.append(b)
    first = np.concatenate(firsts)
    second = np.concatenate(seconds)
    pairs = np.unique(np.stack([first, second], axis=1), axis=0)
    candidate_pairs = len(pairs)
    if settings.threshold is not None and len(pairs):
        keep = np.zeros(len(pairs), dtype=bool)
        for lo in range(0, len(pairs), _PAIR_BLOCK):
            block = pairs[lo : lo + _PAIR_BLOCK]
            estimate = similarity(
                corpus.signature_rows(block[:, 0]), corpus.signature_rows(block[:, 1])
            )
            keep[lo : lo + len(block)] = estimate >= settings.threshold
        pairs = pairs[keep]
    labels = connected_components(corpus.size, pairs[:, 0], pairs[:, 1])
    removed[candidates] = labels[candidates] != np.arange(corpus.size)[candidates]
    stats = asdict(cluster_stats(labels, candidates))
    stats["candidate_pairs"] = int(candidate_pairs)
    stats["confirmed_pairs"] = int(len(pairs))
    return removed, stats


def deduplicate(corpus: Corpus, settings: DedupSection) -> tuple[np.ndarray, dict[str, Any]]:
    """(status of every document, statistics), contamination applied last."""
    status = np.full(corpus.size, KEPT, dtype=np.uint8)
    stats: dict[str, Any] = {}
    if settings.exact.enabled:
        exact = exact_duplicates(corpus)
        status[exact] = EXACT
        stats["exact"] = {"removed": int(exact.sum())}
    if settings.near.enabled:
        candidates = (status == KEPT) & corpus.concat("shingled").astype(bool)
        near, near_stats = near_duplicates(corpus, candidates, settings.near)
        status[near] = NEAR
        stats["near"] = near_stats
    contamination = corpus.concat("contamination").astype(np.int16)
    status[(status == KEPT) & (contamination >= 0)] = CONTAMINATED
    return status, stats
