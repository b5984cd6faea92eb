"""The dedup step: exact and near duplicates across every source, then decontamination.

Documents are numbered globally in recipe order (sources as listed, then files, then
position), so "the earliest" always means the copy in the source listed first. Exact dedup
keeps the earliest document of each digest; near dedup runs on what is left and keeps the
earliest document of each cluster; then documents overlapping an eval file are dropped.

The result is a status per document (`KEPT`, `EXACT`, `NEAR`, `CONTAMINATED`), saved per
scanned file, and the counts the manifest reports. `deduplicate` runs in one process (the
local executor); `ray_dedup` runs the same steps as a partitioned shuffle on Ray, with the
functions below doing the work of each partition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from .config import DedupSection
from .minhash import band_keys, bucket_pairs, cluster_stats, connected_components, similarity
from .scan import ScanOutput

log = logging.getLogger(__name__)

KEPT, EXACT, NEAR, CONTAMINATED = 0, 1, 2, 3
LOW_QUALITY = 4
"""Outside its source's data.filters.quality.top_fraction (set by the build after dedup)."""
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


def duplicate_ids(digests: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The ids whose digest appeared at an earlier id (`ids` ascending)."""
    if ids.size == 0:
        return ids
    _, first = np.unique(digests, return_index=True)  # position of each first occurrence
    duplicate = np.ones(ids.size, dtype=bool)
    duplicate[first] = False
    return ids[duplicate]


def exact_duplicates(corpus: Corpus) -> np.ndarray:
    """True for every document whose digest appeared earlier."""
    duplicate = np.zeros(corpus.size, dtype=bool)
    duplicate[duplicate_ids(corpus.concat("exact"), np.arange(corpus.size))] = True
    return duplicate


def bucket_pair_array(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """[pairs, 2] (first of the bucket, member) for one band's keys of ascending `ids`."""
    first, other = bucket_pairs(keys, ids)
    return np.stack([first, other], axis=1)


def unique_pairs(parts: list[np.ndarray]) -> np.ndarray:
    """The distinct rows of the [pairs, 2] arrays, sorted."""
    pairs = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
    return np.unique(pairs.reshape(-1, 2).astype(np.int64), axis=0)


def confirm_pairs(
    pairs: np.ndarray, signature_rows: Callable[[np.ndarray], np.ndarray], threshold: float | None
) -> np.ndarray:
    """True for each candidate pair whose signatures agree on at least `threshold` of their
    values (every pair when `threshold` is None); signatures read a block of pairs at a time."""
    if threshold is None:
        return np.ones(len(pairs), dtype=bool)
    keep = np.zeros(len(pairs), dtype=bool)
    for lo in range(0, len(pairs), _PAIR_BLOCK):
        block = pairs[lo : lo + _PAIR_BLOCK]
        estimate = similarity(signature_rows(block[:, 0]), signature_rows(block[:, 1]))
        keep[lo : lo + len(block)] = estimate >= threshold
    return keep


def resolve_clusters(pairs: np.ndarray, confirmed: np.ndarray) -> tuple[np.ndarray, dict]:
    """(ids removed as near duplicates, cluster statistics) from the distinct candidate pairs
    and which of them were confirmed. Only documents in a confirmed pair are labelled (the
    others are clusters of one), so memory follows the pairs, not the corpus."""
    kept = pairs[confirmed]
    nodes, inverse = np.unique(kept, return_inverse=True)  # ascending: labels stay the minimum
    inverse = inverse.reshape(-1, 2)
    labels = connected_components(nodes.size, inverse[:, 0], inverse[:, 1])
    removed = nodes[labels != np.arange(nodes.size)]
    stats = asdict(cluster_stats(labels, np.ones(nodes.size, dtype=bool)))
    stats["candidate_pairs"] = int(len(pairs))
    stats["confirmed_pairs"] = int(len(kept))
    return removed.astype(np.int64), stats


def near_duplicates(
    corpus: Corpus, candidates: np.ndarray, settings: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """(True for every document removed as a near duplicate, cluster statistics)."""
    ids = np.flatnonzero(candidates)
    parts = []
    if ids.size >= 2:
        parts = [
            bucket_pair_array(corpus.band(band, settings.rows, ids), ids)
            for band in range(settings.bands)
        ]
    pairs = unique_pairs(parts)
    confirmed = confirm_pairs(pairs, corpus.signature_rows, settings.threshold)
    removed_ids, stats = resolve_clusters(pairs, confirmed)
    removed = np.zeros(corpus.size, dtype=bool)
    removed[removed_ids] = True
    return removed, stats


def deduplicate(corpus: Corpus, settings: DedupSection) -> tuple[np.ndarray, dict[str, Any]]:
    """(status of every document: KEPT, EXACT or NEAR, statistics), in one process.
    Decontamination is applied afterwards, per file (`apply_contamination`)."""
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
    return status, stats


def apply_contamination(status: np.ndarray, contamination: np.ndarray) -> None:
    """Mark the kept documents (of one file) that overlap an eval file as CONTAMINATED."""
    status[(status == KEPT) & (contamination >= 0)] = CONTAMINATED
