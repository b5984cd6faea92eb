"""Deterministic, vectorised hashing of words and word n-grams (numpy, no Python loop per word).

Words are what near-dedup and decontamination compare: the text is lowercased and encoded
as UTF-8; a word is a maximal run of bytes that are ASCII letters, digits or `_`, or part of
a non-ASCII character (so "naïve" and "日本語" are words); everything else separates words.
Every hash is a pure function of the text (no per-process salt), so builds are reproducible.
"""

from __future__ import annotations

import hashlib

import numpy as np

_PRIME = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime: odd, so invertible mod 2^64
_PRIME_INVERSE = np.uint64(pow(int(_PRIME), -1, 2**64))
_NGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)

_WORD_BYTE = np.zeros(256, dtype=bool)
for _c in b"abcdefghijklmnopqrstuvwxyz0123456789_":
    _WORD_BYTE[_c] = True
_WORD_BYTE[128:] = True


def fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: an avalanching bijection on uint64 (wraps mod 2^64)."""
    h = np.asarray(values, dtype=np.uint64).copy()
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


_POWERS = np.ones(1, dtype=np.uint64)
_INVERSE_POWERS = np.ones(1, dtype=np.uint64)


def _powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i (mod 2^64) for i < size, computed once per process and grown on demand."""
    global _POWERS, _INVERSE_POWERS
    if _POWERS.size < size:
        size = max(size, 2 * _POWERS.size, 1 << 16)
        _POWERS = np.empty(size, dtype=np.uint64)
        _POWERS[0] = 1
        np.cumprod(np.full(size - 1, _PRIME, dtype=np.uint64), out=_POWERS[1:])
        _INVERSE_POWERS = np.empty(size, dtype=np.uint64)
        _INVERSE_POWERS[0] = 1
        np.cumprod(np.full(size - 1, _PRIME_INVERSE, dtype=np.uint64), out=_INVERSE_POWERS[1:])
    return _POWERS, _INVERSE_POWERS


def _hash_spans(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each byte range [start, end) of `data` (uint64 arithmetic wraps)."""
    powers, inverse_powers = _powers(data.size + 1)
    # polynomial hash of every prefix: prefix[i] = sum_{j<i} (byte_j + 1) * P^j (mod 2^64)
    prefix = np.zeros(data.size + 1, dtype=np.uint64)
    np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers[: data.size], out=prefix[1:])
    # hash of bytes [s, e) = (prefix[e] - prefix[s]) / P^s, plus the length so that words of
    # different lengths never collide by construction
    raw = (prefix[ends] - prefix[starts]) * inverse_powers[starts]
    raw += (ends - starts).astype(np.uint64) << np.uint64(56)
    return fmix64(raw)


class Words:
    """The words of a batch of documents: hashes and byte lengths, with per-document offsets.

    Document d's words are hashes[offsets[d]:offsets[d + 1]].
    """

    def __init__(self, texts: list[str]):
        # one pass over all documents: "\n" (not a word byte) keeps words from joining
        encoded = [text.lower().encode("utf-8") for text in texts]
        data = np.frombuffer(b"\n".join(encoded), dtype=np.uint8)
        doc_ends = np.cumsum([len(e) + 1 for e in encoded], dtype=np.int64)
        is_word = _WORD_BYTE[data].astype(np.int8)
        edges = np.diff(is_word, prepend=np.int8(0), append=np.int8(0))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)
        self.hashes = _hash_spans(data, starts, ends) if starts.size else np.zeros(0, np.uint64)
        self.lengths = ends - starts
        self.offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        self.offsets[1:] = np.searchsorted(starts, doc_ends, side="left")

    def __len__(self) -> int:
        return self.offsets.size - 1

    def subset(self, docs: np.ndarray) -> Words:
        """The words of the chosen documents only (in the given order)."""
        counts = np.diff(self.offsets)[docs]
        picked = object.__new__(Words)
        picked.offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(counts, out=picked.offsets[1:])
        starts = np.repeat(self.offsets[docs], counts)
        within = np.arange(picked.offsets[-1]) - np.repeat(picked.offsets[:-1], counts)
        picked.hashes = self.hashes[starts + within]
        picked.lengths = self.lengths[starts + within]
        return picked

    def of(self, doc: int) -> tuple[np.ndarray, np.ndarray]:
        """(word hashes, word byte lengths) of one document."""
        lo, hi = self.offsets[doc], self.offsets[doc + 1]
        return self.hashes[lo:hi], self.lengths[lo:hi]

    def ngrams(self, n: int, *, short: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(hashes of every run of n words within a document, per-document offsets).

        With `short`, a document of fewer than n (but at least one) words gives one hash of
        all its words, equal to what `ngram_hashes` gives for them.
        """
        counts = np.diff(self.offsets)
        total = self.hashes.size
        full = ngram_hashes(self.hashes, n, short=False)  # runs that may cross documents
        per_doc = np.maximum(counts - n + 1, 0)
        starts = np.repeat(self.offsets[:-1], per_doc)
        within = np.arange(per_doc.sum()) - np.repeat(np.cumsum(per_doc) - per_doc, per_doc)
        hashes = full[starts + within] if total >= n else np.zeros(0, np.uint64)
        sizes = per_doc
        if short:
            small = np.flatnonzero((counts > 0) & (counts < n))
            if small.size:
                extra = [
                    ngram_hashes(self.hashes[self.offsets[d] : self.offsets[d + 1]], n)
                    for d in small
                ]
                position = np.cumsum(per_doc)[small]  # insert after the doc's (zero) n-grams
                hashes = np.insert(hashes, position, np.concatenate(extra))
                sizes = per_doc.copy()
                sizes[small] = 1
        offsets = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return hashes, offsets


def words_of(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of each word of `text`, its length in UTF-8 bytes), in order."""
    words = Words([text])
    return words.hashes, words.lengths


def ngram_hashes(words: np.ndarray, n: int, *, short: bool = True) -> np.ndarray:
    """A 64-bit hash of every run of `n` consecutive words.

    With `short`, a text of fewer than `n` (but at least one) words gives one hash of all of
    its words, so short documents still have a fingerprint.
    """
    count = words.size
    if count < n:
        if not short or count == 0:
            return np.zeros(0, dtype=np.uint64)
        n = count
    combined = np.zeros(count - n + 1, dtype=np.uint64)
    for offset in range(n):
        combined *= _NGRAM_MULTIPLIER
        combined += words[offset : count - n + 1 + offset]
    combined += np.uint64(n)
    return fmix64(combined)


def normalized_text(text: str) -> str:
    """The text exact dedup compares: lowercased, runs of whitespace made one space, stripped."""
    return " ".join(text.lower().split())


def exact_hash(text: str) -> bytes:
    """16-byte digest of the normalised text (collisions are negligible at any corpus size)."""
    return hashlib.blake2b(normalized_text(text).encode("utf-8"), digest_size=16).digest()
