"""The training text of a tokenizer: streamed from the sources, with a held-out split and an
optional seeded sample per source.

Which documents are held out, and which are sampled, depends only on each document's text and
the seed (keyed BLAKE2b hashes), not on file order or on how many documents came before:
duplicates of one text all land on the same side, and adding files to a corpus does not move
the documents already in it.

Without a cap a source is streamed straight to the trainer and never held in memory. With
`max_chars` / `max_documents` the source is read through once, keeping the documents with
the smallest sample hashes that fit the cap (a uniform random sample of documents), so memory
is bounded by the cap whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmtrain.data_pipeline.readers import ReadStats, expand_paths, iter_texts
from llmtrain.errors import InputDataError

from .config import SourceSection, TokenizerSection

log = logging.getLogger(__name__)

_SURROGATE = re.compile("[\ud800-\udfff]")
PROGRESS_SECONDS = 60.0


@dataclass
class SourceStats:
    """What one source gave: documents and characters read, trained on and held out."""

    files: list[str]
    documents: int = 0
    chars: int = 0
    train_documents: int = 0
    train_chars: int = 0
    heldout_documents: int = 0
    heldout_chars: int = 0
    truncated_documents: int = 0
    read: ReadStats = field(default_factory=ReadStats)

    def to_dict(self) -> dict:
        return {
            "files": len(self.files),
            "documents": self.documents,
            "chars": self.chars,
            "train_documents": self.train_documents,
            "train_chars": self.train_chars,
            "heldout_documents": self.heldout_documents,
            "heldout_chars": self.heldout_chars,
            "truncated_documents": self.truncated_documents,
            "skipped_records": self.read.skipped,
            "skipped_examples": self.read.examples,
        }


def _unit_hash(data: bytes, key: bytes, purpose: bytes) -> float:
    digest = hashlib.blake2b(data, digest_size=8, key=key, person=purpose).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _utf8(text: str) -> tuple[str, bytes]:
    """The text and its UTF-8 bytes; lone surrogates (from JSON escapes such as "\\ud800")
    become U+FFFD, since no tokenizer can encode them."""
    try:
        return text, text.encode("utf-8")
    except UnicodeEncodeError:
        text = _SURROGATE.sub("\ufffd", text)
        return text, text.encode("utf-8")


class Corpus:
    """Iterate `training_texts()`; afterwards `heldout` holds the held-out documents and
    `stats` what each source gave."""

    def __init__(self, section: TokenizerSection, seed: int):
        self.section = section
        self.key = hashlib.sha256(f"llmtrain-tokenizer:{seed}".encode()).digest()[:32]
        self.files = [
            expand_paths(source.paths, key=f"tokenizer.sources[{index}].paths")
            for index, source in enumerate(section.sources)
        ]
        self.stats = [SourceStats([str(f) for f in files]) for files in self.files]
        self.heldout: list[str] = []
        self.heldout_chars = 0

    def training_texts(self) -> Iterator[str]:
        """The training documents, source after source; each call reads the corpus again
        (and yields the same documents)."""
        self.stats = [SourceStats(list(stats.files)) for stats in self.stats]
        self.heldout = []
        self.heldout_chars = 0
        for index, source in enumerate(self.section.sources):
            stats = self.stats[index]
            documents = self._documents(index, source)
            if source.max_chars is not None or source.max_documents is not None:
                texts = self._sample(documents, source, stats)
            else:
                texts = (text for text, _ in documents)
            for text in texts:
                stats.train_documents += 1
                stats.train_chars += len(text)
                yield text
            if stats.documents == 0:
                raise InputDataError(
                    f"tokenizer.sources[{index}]: no text in {describe_files(stats.files)}; "
                    "check that the files hold documents and that text_field "
                    f"({source.text_field!r}) names the field with the text"
                )
        if not any(stats.train_documents for stats in self.stats):
            held = sum(stats.heldout_documents for stats in self.stats)
            raise InputDataError(
                f"tokenizer: all {held} documents were held out, none is left to train on; "
                "lower heldout_fraction or heldout_max_chars, or add documents"
            )

    def _documents(self, index: int, source: SourceSection) -> Iterator[tuple[str, bytes]]:
        """Training documents of one source as (text, UTF-8 bytes); held-out ones are kept
        aside."""
        stats = self.stats[index]
        fraction = self.section.heldout_fraction
        next_log = time.monotonic() + PROGRESS_SECONDS
        for path in self.files[index]:
            for raw in iter_texts(
                path,
                text_field=source.text_field,
                text_mode=source.text_mode,
                on_error=source.on_error,
                encoding_errors=source.encoding_errors,
                stats=stats.read,
            ):
                text, data = _utf8(raw)
                stats.documents += 1
                stats.chars += len(text)
                if stats.documents % 1024 == 0 and time.monotonic() > next_log:
                    next_log = time.monotonic() + PROGRESS_SECONDS
                    log.info(
                        "tokenizer.sources[%d]: %d documents, %.1f M characters read (%s)",
                        index,
                        stats.documents,
                        stats.chars / 1e6,
                        path,
                    )
                if (
                    fraction > 0
                    and self.heldout_chars < self.section.heldout_max_chars
                    and _unit_hash(data, self.key, b"heldout") < fraction
                ):
                    self.heldout.append(text)
                    self.heldout_chars += len(text)
                    stats.heldout_documents += 1
                    stats.heldout_chars += len(text)
                    continue
                yield text, data

    def _sample(
        self, documents: Iterator[tuple[str, bytes]], source: SourceSection, stats: SourceStats
    ) -> Iterator[str]:
        """The documents with the smallest sample hashes that fit the source's caps, in the
        order they were read."""
        max_chars = int(source.max_chars) if source.max_chars is not None else None
        max_documents = source.max_documents
        heap: list[tuple[float, int, str]] = []  # (-hash, read order, text): largest hash on top
        total = 0
        for order, (text, data) in enumerate(documents):
            priority = _unit_hash(data, self.key, b"sample")
            if max_chars is not None and len(text) > max_chars:
                text = text[:max_chars]
                stats.truncated_documents += 1
            heapq.heappush(heap, (-priority, order, text))
            total += len(text)
            while (max_chars is not None and total > max_chars) or (
                max_documents is not None and len(heap) > max_documents
            ):
                total -= len(heapq.heappop(heap)[2])
        for _, _, text in sorted(heap, key=lambda item: item[1]):
            yield text


def describe_files(files: list[str] | list[Path], limit: int = 5) -> str:
    """Up to `limit` file names, then how many more."""
    names = [str(f) for f in files]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
