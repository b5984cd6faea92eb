"""Near-duplicate detection: MinHash signatures, LSH banding, union-find over candidate pairs.

Signatures: each document's word n-grams (`hashing.ngram_hashes`, 64-bit, already mixed)
are folded to 32 bits and pushed through `bands x rows` affine maps x -> a x + b (mod 2^32,
a odd: bijections, as datasketch's default scheme); the signature is the minimum of each.
Many documents are processed as one [shingles, permutations] matrix and reduced per document
with `np.minimum.reduceat`, so there is no Python loop per shingle or per document.

Clustering: in each band the rows of a signature are hashed to one key; documents with equal
keys are candidates, each paired with the first (earliest) document of its bucket. A
candidate pair counts when the share of equal signature values (the MinHash estimate of
their Jaccard similarity) reaches `threshold`; connected components of the pairs are the
clusters, and the earliest document of a cluster is the one kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .hashing import Words, fmix64

EMPTY = np.uint32(0xFFFFFFFF)
_ROWS_PER_BLOCK = 8192


class MinHasher:
    """Computes MinHash signatures of documents given as word-hash arrays."""

    def __init__(self, *, bands: int = 14, rows: int = 8, ngram: int = 5, seed: int = 1):
        self.bands, self.rows, self.ngram = bands, rows, ngram
        self.num_perm = bands * rows
        rng = np.random.default_rng(seed)
        self._a = (rng.integers(0, 2**32, self.num_perm, dtype=np.uint64) | 1).astype(np.uint32)
        self._b = rng.integers(0, 2**32, self.num_perm, dtype=np.uint64).astype(np.uint32)

    def signatures(self, words: Words) -> tuple[np.ndarray, np.ndarray]:
        """([documents, num_perm] uint32 signatures, bool: the document has shingles).

        A document without words gets the all-0xFFFFFFFF signature and False; it takes no
        part in near-dedup.
        """
        hashes, offsets = words.ngrams(self.ngram, short=True)
        values = (hashes >> np.uint64(32)).astype(np.uint32)
        counts = np.diff(offsets)
        out = np.full((counts.size, self.num_perm), EMPTY, dtype=np.uint32)
        docs = np.flatnonzero(counts)
        doc_starts = offsets[docs]
        doc_ends = offsets[docs + 1]
        for lo in range(0, values.size, _ROWS_PER_BLOCK):
            hi = min(lo + _ROWS_PER_BLOCK, values.size)
            # documents with shingles in rows [lo, hi), and where each starts in the block
            first = np.searchsorted(doc_ends, lo, side="right")
            last = np.searchsorted(doc_starts, hi, side="left")
            chosen = docs[first:last]
            local_starts = np.maximum(doc_starts[first:last], lo) - lo
            matrix = np.multiply.outer(values[lo:hi], self._a)  # uint32: wraps mod 2^32
            matrix += self._b
            block_min = np.minimum.reduceat(matrix, local_starts, axis=0)
            np.minimum(out[chosen], block_min, out=block_min)
            out[chosen] = block_min
        return out, counts > 0


def band_keys(signatures: np.ndarray, band: int, rows: int) -> np.ndarray:
    """A 64-bit key per document for one band (equal rows -> equal keys)."""
    part = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
    key = np.full(part.shape[0], np.uint64(band + 1), dtype=np.uint64)
    for column in range(rows):
        key = fmix64(key ^ part[:, column])
    return key


def bucket_pairs(keys: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, other) id pairs: every document paired with the earliest of its bucket.

    `ids` must be ascending (the stable sort then keeps each bucket in id order).
    """
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.ones(sorted_keys.size, dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    first_position = np.maximum.accumulate(np.where(starts, np.arange(starts.size), 0))
    members = np.flatnonzero(~starts)
    return ids[order[first_position[members]]], ids[order[members]]


def similarity(signatures_a: np.ndarray, signatures_b: np.ndarray) -> np.ndarray:
    """MinHash estimate of the Jaccard similarity of row pairs: the share of equal values."""
    return (signatures_a == signatures_b).mean(axis=1)


def connected_components(n: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Label of each of n nodes: the smallest node index of its component."""
    labels = np.arange(n, dtype=np.int64)
    if first.size == 0:
        return labels
    while True:
        low = np.minimum(labels[first], labels[second])
        before = labels.copy()
        np.minimum.at(labels, first, low)
        np.minimum.at(labels, second, low)
        while True:  # pointer jumping: every node points at its root
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(before, labels):
            return labels


@dataclass
class ClusterStats:
    candidate_pairs: int = 0
    confirmed_pairs: int = 0
    clusters: int = 0
    documents_in_clusters: int = 0
    removed: int = 0
    largest_cluster: int = 0
    size_histogram: dict[str, int] | None = None


_SIZE_BUCKETS = ((2, 2), (3, 5), (6, 10), (11, 100), (101, None))


def cluster_stats(labels: np.ndarray, active: np.ndarray) -> ClusterStats:
    """Statistics of the clusters (components of two or more active documents)."""
    roots, sizes = np.unique(labels[active], return_counts=True)
    multi = sizes[sizes >= 2]
    histogram = {}
    for low, high in _SIZE_BUCKETS:
        name = str(low) if low == high else f"{low}-{high}" if high else f"{low}+"
        chosen = (multi >= low) & (multi <= high) if high else multi >= low
        histogram[name] = int(chosen.sum())
    return ClusterStats(
        clusters=int(multi.size),
        documents_in_clusters=int(multi.sum()),
        removed=int(multi.sum() - multi.size),
        largest_cluster=int(multi.max()) if multi.size else 0,
        size_histogram=histogram,
    )
