"""Tokenizing documents for a data build: any fast Hugging Face tokenizer directory.

Each document becomes `[BOS] ids EOS`: EOS always (it separates documents in the packed
stream), BOS only when the tokenizer has one and adds it by convention (Llama does, GPT-2 does
not). Text is encoded with special tokens treated as plain text, so a document that contains
the string "<|endoftext|>" does not get a fake document boundary.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmtrain.errors import StageInputError

from .shards import token_dtype


@dataclass(frozen=True)
class TokenizerInfo:
    """What the manifest records about the tokenizer, and what encoding needs."""

    path: str
    fingerprint: str
    vocab_size: int
    eos_id: int
    bos_id: int | None
    adds_bos: bool

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    def to_dict(self) -> dict:
        return asdict(self)


def load_tokenizer(path: str | Path, *, key: str = "data.tokenizer") -> tuple[Any, TokenizerInfo]:
    """Load a fast tokenizer from a directory and check it can separate documents."""
    from transformers import AutoTokenizer

    from llmtrain.tokenizer.fingerprint import tokenizer_fingerprint

    path = Path(path)
    if not path.is_dir():
        raise StageInputError(
            f"{key}: no tokenizer at {path}; run `llmtrain tokenizer` with this recipe first, "
            f"or set {key} to a Hugging Face tokenizer directory"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises OSError/ValueError/... for a bad directory
        raise StageInputError(
            f"{key}: cannot load a tokenizer from {path} with AutoTokenizer ({exc}); point it "
            "to a directory written by save_pretrained (tokenizer.json, tokenizer_config.json)"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise StageInputError(
            f"{key}: the tokenizer at {path} is not a fast (Rust) tokenizer; save it with a "
            "tokenizer.json (e.g. AutoTokenizer.from_pretrained(..., use_fast=True)."
            "save_pretrained(dir))"
        )
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise StageInputError(
            f"{key}: the tokenizer at {path} has no eos_token, which separates documents in "
            "the token shards; set one (tokenizer.add_special_tokens({'eos_token': "
            "'<|endoftext|>'}) then save_pretrained), or train the tokenizer with "
            "`llmtrain tokenizer`"
        )
    bos_id = tokenizer.bos_token_id
    adds_bos = bos_id is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [
        bos_id
    ]
    info = TokenizerInfo(
        path=str(path.resolve()),
        fingerprint=tokenizer_fingerprint(tokenizer),
        vocab_size=len(tokenizer),
        eos_id=int(eos_id),
        bos_id=None if bos_id is None else int(bos_id),
        adds_bos=bool(adds_bos),
    )
    return tokenizer, info


class DocumentEncoder:
    """Encodes batches of documents into one flat id array plus per-document lengths.

    Built from the serialized backend of the loaded tokenizer (`backend_tokenizer.to_str()`),
    so worker processes need only the `tokenizers` library and encode exactly as the loaded
    tokenizer does, without truncation or padding.
    """

    def __init__(self, info: TokenizerInfo, backend_json: str):
        from tokenizers import Tokenizer

        self.info = info
        self.backend = Tokenizer.from_str(backend_json)
        self.backend.no_truncation()
        self.backend.no_padding()
        self.backend.encode_special_tokens = True  # "<|endoftext|>" in a text is text

    @classmethod
    def of(cls, tokenizer: Any, info: TokenizerInfo) -> DocumentEncoder:
        return cls(info, tokenizer.backend_tokenizer.to_str())

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids of every document concatenated, length of each document), separators included."""
        info = self.info
        encodings = self.backend.encode_batch_fast(texts, add_special_tokens=False)
        extra = 1 + int(info.adds_bos)
        lengths = np.empty(len(encodings), dtype=np.int64)
        ids: list[int] = []
        for index, encoding in enumerate(encodings):
            body = encoding.ids
            if info.adds_bos:
                ids.append(info.bos_id)  # type: ignore[arg-type]
            ids += body
            ids.append(info.eos_id)
            lengths[index] = len(body) + extra
        flat = np.array(ids, dtype=info.dtype)
        return flat, lengths


def limit_tokenizer_threads() -> None:
    """In a worker process: one tokenizer thread (the pool already uses every core)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"


@dataclass
class ShardTask:
    """One shard to write: documents of one source and split, read from scan directories."""

    source: str
    split: str
    path: str  # relative to the build directory, e.g. shards/web/train-00000.bin
    pieces: list[tuple[str, list[list[int]]]]  # (scan directory in the build, [start, stop) runs)


ENCODE_BATCH = 256
"""Documents per `encode_batch_fast` call."""
JOB_DOCUMENTS = 4096
JOB_BYTES = 8 << 20
"""An encoding job sent to a worker: at most this many documents and about this much text."""

_ENCODER: DocumentEncoder | None = None
_SCANS: dict[str, Any] = {}  # this process's open scan outputs (reset by init_encoder)


def init_encoder(info: TokenizerInfo, backend_json: str, worker: bool) -> None:
    """Set up this process's encoder (in a worker: with one tokenizer thread, since the pool
    already uses every core)."""
    global _ENCODER
    if worker:
        limit_tokenizer_threads()
    _ENCODER = DocumentEncoder(info, backend_json)
    _SCANS.clear()


def _scan_output(build_dir: str, directory: str, cache: dict[str, Any]) -> Any:
    """The scan output of `directory`, from `cache` (a few entries: jobs come in shard order)."""
    from .scan import ScanOutput

    key = f"{build_dir}/{directory}"
    if key not in cache:
        if len(cache) >= 4:
            cache.clear()
        cache[key] = ScanOutput(Path(build_dir) / directory)
    return cache[key]


def encoding_jobs(
    build_dir: str, task: ShardTask, cache: dict[str, Any]
) -> list[tuple[str, np.ndarray]]:
    """A shard's documents, in order, cut into jobs of at most JOB_DOCUMENTS documents and
    about JOB_BYTES of text: (scan directory, document indices) each. `cache`: a dict the
    caller keeps for one build."""
    from .mixture import shard_ranges

    jobs = []
    for directory, runs in task.pieces:
        indices = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in runs])
        sizes = _scan_output(build_dir, directory, cache).text_bytes(indices)
        for lo, hi in shard_ranges(sizes, JOB_BYTES):
            for start in range(lo, hi, JOB_DOCUMENTS):
                jobs.append((directory, indices[start : min(hi, start + JOB_DOCUMENTS)]))
    return jobs


def encode_documents(
    build_dir: str, directory: str, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One encoding job (runs in a worker): the documents' ids concatenated, and their lengths."""
    encoder = _ENCODER
    assert encoder is not None, "init_encoder was not called"
    output = _scan_output(build_dir, directory, _SCANS)
    flats, lengths = [], []
    for lo in range(0, len(indices), ENCODE_BATCH):
        flat, length = encoder.encode(output.texts(indices[lo : lo + ENCODE_BATCH]))
        flats.append(flat)
        lengths.append(length)
    return np.concatenate(flats), np.concatenate(lengths)


def shard_entry(task: ShardTask, writer: Any) -> dict:
    """The manifest entry of a shard `writer` has finished writing."""
    from .shards import ShardInfo

    return ShardInfo(
        path=task.path,
        index=str(Path(task.path).with_suffix(".idx")),
        split=task.split,
        source=task.source,
        tokens=writer.tokens,
        documents=writer.documents,
        sha256=writer.sha256,
        max_id=writer.max_id,
    ).to_dict()


def write_shard(build_dir: str, task: ShardTask) -> dict:
    """Tokenize and write one whole shard here (a Ray task: shards in parallel, each written
    by one task); returns its manifest entry. Needs `init_encoder` in this process."""
    from .shards import ShardWriter

    assert _ENCODER is not None, "init_encoder was not called"
    path = Path(build_dir) / task.path
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.stem}.*.tmp-*"):
        stale.unlink(missing_ok=True)  # left by an attempt killed mid-shard
    cache: dict[str, Any] = {}
    with ShardWriter(path, _ENCODER.info.dtype) as writer:
        for directory, indices in encoding_jobs(build_dir, task, cache):
            writer.add_many(*encode_documents(build_dir, directory, indices))
    return shard_entry(task, writer)
