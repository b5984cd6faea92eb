"""Decontamination: training documents that share a word n-gram with an evaluation set.

The eval sets are the eval files (`eval_files`), then the lm-eval tasks (`tasks`, see
`eval_tasks`), each named by its path or task name. Their items' text is cut into n-grams of
`ngram` words (`hashing` words: lowercased, punctuation ignored); an eval item shorter than
that but at least `min_words` long is one n-gram of its own length. A training document is
contaminated when any of its n-grams (of `ngram` words, or of a short item's length) is among
them; it is attributed to the first eval set, in that order, that holds the matching n-gram.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmtrain.errors import InputDataError

from .config import DecontaminationSection
from .hashing import Words, ngram_hashes
from .readers import expand_paths, file_format, iter_records, iter_texts

NONE = -1


def eval_files(settings: DecontaminationSection) -> list[Path]:
    return expand_paths(settings.eval_files, key="data.decontamination.eval_files")


def _strings(value: Any, fields: list[str] | None) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if fields is None and key == "role":
                continue
            if fields is None or key in fields:
                yield from _strings(item, None)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, fields)


def eval_items(path: Path, fields: list[str] | None) -> Iterator[str]:
    """The text of each eval item of a file (records: its strings; plain text: each line)."""
    if file_format(path) == "text":
        yield from iter_texts(path, text_mode="line")
        return
    found = False
    for _, record in iter_records(path):
        text = "\n".join(_strings(record, fields))
        if text.strip():
            found = True
            yield text
    if fields is not None and not found:
        raise InputDataError(
            f"{path}: no record has any of the fields {fields} "
            "(data.decontamination.fields); name the fields that hold the eval text"
        )


def file_sets(files: list[Path], fields: list[str] | None) -> list[tuple[str, Iterator[str]]]:
    """(path, items) of each eval file, read when the n-grams are made."""
    return [(str(path), eval_items(path, fields)) for path in files]


class EvalNgrams:
    """The n-grams of the eval sets, and the test of a batch of training documents."""

    def __init__(self, sets: list[tuple[str, Iterable[str]]], *, ngram: int, min_words: int):
        """`sets`: (name, items) of each eval set, in attribution order."""
        self.names = [name for name, _ in sets]
        self.ngram = ngram
        hashes: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        short_lengths: set[int] = set()
        self.items = [0] * len(sets)
        for index, (_, items) in enumerate(sets):
            for text in items:
                words = Words([text]).hashes
                if words.size >= ngram:
                    grams = ngram_hashes(words, ngram, short=False)
                elif words.size >= min_words:
                    grams = ngram_hashes(words, words.size)
                    short_lengths.add(int(words.size))
                else:
                    continue
                self.items[index] += 1
                hashes.append(grams)
                owners.append(np.full(grams.size, index, dtype=np.int16))
        all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        all_owners = np.concatenate(owners) if owners else np.zeros(0, np.int16)
        # sorted by hash, the first (lowest) file index first for equal hashes
        order = np.lexsort((all_owners, all_hashes))
        self._hashes = all_hashes[order]
        self._owners = all_owners[order]
        self.lengths = sorted({ngram, *short_lengths})

    @property
    def size(self) -> int:
        return int(self._hashes.size)

    def match(self, words: Words) -> np.ndarray:
        """Per document: the index of the eval set it overlaps (first in order), or -1."""
        result = np.full(len(words), np.iinfo(np.int16).max, dtype=np.int16)
        if self._hashes.size == 0:
            return np.full(len(words), NONE, dtype=np.int16)
        for length in self.lengths:
            grams, offsets = words.ngrams(length, short=False)
            if grams.size == 0:
                continue
            position = np.searchsorted(self._hashes, grams)
            position = np.minimum(position, self._hashes.size - 1)
            hit = self._hashes[position] == grams
            owner = np.where(hit, self._owners[position], np.iinfo(np.int16).max)
            counts = np.diff(offsets)
            docs = np.flatnonzero(counts)
            per_doc = np.minimum.reduceat(owner, offsets[docs])
            result[docs] = np.minimum(result[docs], per_doc)
        result[result == np.iinfo(np.int16).max] = NONE
        return result
