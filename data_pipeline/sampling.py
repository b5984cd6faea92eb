"""Deterministic sampling for the loader: a shuffle that needs no memory, and a weighted blend.

`Permutation(n, key)` is a pseudo-random bijection of [0, n) (a 4-round Feistel network with
cycle-walking), so the order of a source's windows in one epoch is computed on the fly for
any n, with nothing stored: a billion windows cost no more memory than ten.

`Blend(weights)` decides which source each next window comes from: the source whose share so
far lags its weight the most (Megatron-LM's BlendedDataset rule), so after any number of
windows every source's count is within one window of weight x total.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .hashing import fmix64

_ROUNDS = 4


class Permutation:
    """A keyed pseudo-random permutation of range(n)."""

    def __init__(self, n: int, key: Sequence[int]):
        if n < 1:
            raise ValueError(f"cannot permute {n} items")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        self._half = (bits + 1) // 2
        self._mask = np.uint64((1 << self._half) - 1)
        seeds = np.random.SeedSequence([int(k) for k in key]).generate_state(_ROUNDS, np.uint64)
        self._round_keys = [np.uint64(k) for k in seeds]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        half = np.uint64(self._half)
        left, right = x >> half, x & self._mask
        for round_key in self._round_keys:
            left, right = right, left ^ (fmix64(right ^ round_key) & self._mask)
        return (left << half) | right

    def __call__(self, index: np.ndarray | int) -> np.ndarray:
        """The images of `index` (an int or an array of ints in [0, n))."""
        x = np.atleast_1d(np.asarray(index, dtype=np.uint64))
        if self.n == 1:
            return np.zeros_like(x)
        y = self._encrypt(x)
        outside = y >= self.n
        while outside.any():  # cycle-walk: the domain is at most 4n, so few rounds
            y[outside] = self._encrypt(y[outside])
            outside = y >= self.n
        return y


class Blend:
    """Error-minimising deterministic interleaving of sources by weight."""

    def __init__(self, weights: Sequence[float], counts: Sequence[int] | None = None):
        total = float(sum(weights))
        if total <= 0 or any(w < 0 for w in weights):
            raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
        self.weights = [w / total for w in weights]
        self.counts = list(counts) if counts is not None else [0] * len(weights)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def next_source(self) -> int:
        """The source of the next window (and count it)."""
        position = self.total + 1
        best, best_lag = 0, -float("inf")
        for source, (weight, count) in enumerate(zip(self.weights, self.counts, strict=True)):
            lag = weight * position - count
            if lag > best_lag:
                best, best_lag = source, lag
        self.counts[best] += 1
        return best
