"""Token shards: the files a data build writes and pretraining memory-maps.

A shard is two files side by side:

    <name>.bin   token ids, flat, little-endian uint16 (vocabulary <= 65536) or uint32;
                 each document is [BOS] tokens EOS, documents back to back
    <name>.idx   little-endian uint64 token offsets of the documents: n_documents + 1 values,
                 the start of each document and finally the end of the last (== tokens)

Both are written under temporary names and renamed when complete; the sha256 of `.bin` is
computed while writing. No shard is ever empty.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from llmtrain.atomic import atomic_path

INDEX_DTYPE = np.dtype("<u8")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocabulary of at most 65536), else uint32; little-endian."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def dtype_name(dtype: np.dtype) -> str:
    return {2: "uint16", 4: "uint32"}[np.dtype(dtype).itemsize]


def dtype_from_name(name: str) -> np.dtype:
    return {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}[name]


@dataclass
class ShardInfo:
    """One written shard, as the manifest records it (paths relative to the build directory)."""

    path: str
    index: str
    split: str
    source: str
    tokens: int
    documents: int
    sha256: str
    max_id: int
    """The largest token id in the shard (pretraining checks it against the vocabulary)."""

    def to_dict(self) -> dict:
        return asdict(self)


class ShardWriter:
    """Append documents (arrays of token ids, separators included) to one shard.

        with ShardWriter(path, dtype) as writer:
            writer.add(ids)
        writer.tokens, writer.documents, writer.sha256, writer.max_id

    The files appear under their names only when the `with` block ends without an error and
    at least one document was written; nothing is left behind otherwise.
    """

    def __init__(self, path: str | Path, dtype: np.dtype):
        self.path = Path(path)
        self.index_path = self.path.with_suffix(".idx")
        self.dtype = np.dtype(dtype)
        self.tokens = 0
        self.documents = 0
        self.sha256 = ""
        self.max_id = -1
        """The largest token id written (-1: none yet)."""
        self._hash = hashlib.sha256()
        self._offsets: list[int] = [0]

    def __enter__(self) -> ShardWriter:
        self._bin_ctx = atomic_path(self.path)
        self._bin_tmp = self._bin_ctx.__enter__()
        self._file = open(self._bin_tmp, "wb")  # noqa: SIM115 - closed in __exit__
        return self

    def add(self, ids: np.ndarray) -> None:
        data = np.ascontiguousarray(ids, dtype=self.dtype).tobytes()
        self._file.write(data)
        self._hash.update(data)
        if len(ids):
            self.max_id = max(self.max_id, int(np.max(ids)))
        self.tokens += len(ids)
        self.documents += 1
        self._offsets.append(self.tokens)

    def add_many(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append several documents at once: their ids concatenated, and their lengths."""
        data = np.ascontiguousarray(flat, dtype=self.dtype).tobytes()
        self._file.write(data)
        self._hash.update(data)
        if len(flat):
            self.max_id = max(self.max_id, int(np.max(flat)))
        ends = self.tokens + np.cumsum(lengths, dtype=np.int64)
        self._offsets.extend(int(e) for e in ends)
        self.tokens += int(len(flat))
        self.documents += len(lengths)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if exc_type is not None:
            self._bin_ctx.__exit__(exc_type, exc, tb)
            return
        if self.documents == 0:  # never an empty shard: the caller skips empty ones
            error = ValueError(f"{self.path}: no document to write")
            self._bin_ctx.__exit__(ValueError, error, None)
            raise error
        with atomic_path(self.index_path) as tmp:
            np.asarray(self._offsets, dtype=INDEX_DTYPE).tofile(tmp)
        self._bin_ctx.__exit__(None, None, None)
        self.sha256 = self._hash.hexdigest()


def open_tokens(path: str | Path, dtype: np.dtype) -> np.memmap:
    """The tokens of a shard, memory-mapped read-only."""
    return np.memmap(path, dtype=dtype, mode="r")


def read_offsets(path: str | Path) -> np.ndarray:
    """The document offsets of a shard (`.idx`), n_documents + 1 values."""
    return np.fromfile(path, dtype=INDEX_DTYPE)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
