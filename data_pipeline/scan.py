"""The scan step: read each input file, clean and filter its documents, and hash what is kept.

The main process reads a file and hands chunks of documents to worker processes (at most a
few chunks in flight, so memory stays flat whatever the file size); each chunk comes back
with its kept documents, their exact-dedup digests, MinHash signatures and decontamination
matches, and is appended, in order, to the file's scan directory:

    texts.bin          the kept documents, cleaned, UTF-8, back to back
    offsets.u64        uint64 byte offsets into texts.bin (documents + 1)
    exact.bin          16-byte digests of the normalised text
    signatures.u32     uint32 [documents, bands x rows] MinHash signatures
    shingled.bin       bool: the document has words (takes part in near-dedup)
    contamination.bin  int16: index of the eval file it overlaps, or -1
    language.bin       S16: the detected language (empty without data.filters.language)
    language_score.bin float32: its score (NaN without the language filter)
    quality_score.bin  float32: the quality classifier's score (NaN without data.filters.quality)

(raw little-endian arrays, appended chunk by chunk)

The directory is written under a temporary name and renamed when the file is done.

The Ray executor may scan a large file in parts (`file_parts`, one task each): each part is
scanned into `<file's scan directory>.parts/<part>`, and `join_parts` concatenates them, in
order, into the file's scan directory, the same bytes as one pass over the file.
"""

from __future__ import annotations

import collections
import functools
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .clean import clean_text
from .config import CleanSection, DataSection, DataSource, FiltersSection
from .decontam import NONE, EvalNgrams
from .filters import content_failure, length_failure
from .hashing import Words, exact_hash
from .langid import detector_for, language_failure
from .minhash import MinHasher
from .pii import PiiReplacer, pii_replacer
from .quality import HISTOGRAM_BINS, histogram, quality_model
from .readers import EXAMPLES, ReadStats, iter_texts_and_urls, splittable
from .urls import CHECKED, UrlFilter, url_filter

CHUNK_DOCUMENTS = 1000
CHUNK_BYTES = 2 << 20


@dataclass
class SourceRules:
    """What a worker needs to process a source's documents."""

    clean: CleanSection
    filters: FiltersSection
    pii: PiiReplacer | None = None
    urls: UrlFilter | None = None  # for a source with url_field and data.url_filter lists


@dataclass
class ScanContext:
    """Everything a worker process needs, sent once when it starts."""

    rules: dict[str, SourceRules]
    minhasher: MinHasher
    eval_ngrams: EvalNgrams | None


@dataclass
class ChunkResult:
    texts: list[bytes]
    exact: np.ndarray
    signatures: np.ndarray
    shingled: np.ndarray
    contamination: np.ndarray
    scores: ModelScores
    read: int
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_detail: dict[str, int] = field(default_factory=dict)
    pii: dict[str, int] = field(default_factory=dict)  # kind (and "documents"): replaced
    url_filter: dict[str, int] = field(default_factory=dict)  # urls.UrlFilter's count keys


@dataclass
class ModelScores:
    """Per kept document, what the language and quality filters found; and the counts over
    every document they looked at (the dropped ones too)."""

    language: np.ndarray  # S16
    language_score: np.ndarray  # float32
    quality_score: np.ndarray  # float32
    languages: dict[str, int]  # detected language: documents
    quality_histogram: np.ndarray | None  # quality.HISTOGRAM_BINS counts, or None


Drop = Callable[..., None]


def language_filter(
    texts: list[str], filters: FiltersSection, drop: Drop
) -> tuple[list[int], np.ndarray, np.ndarray, dict[str, int]]:
    """(indices kept, language and score of every text, documents per detected language)."""
    language = np.full(len(texts), b"", dtype="S16")
    score = np.full(len(texts), np.nan, dtype=np.float32)
    if not filters.language.enabled or not texts:
        return list(range(len(texts))), language, score, {}
    found, scores = detector_for(filters.language).detect(texts)
    language[:] = [code.encode("utf-8")[:16] for code in found]
    score[:] = scores
    kept = []
    for index, (code, value) in enumerate(zip(found, scores, strict=True)):
        failure = language_failure(code, value, filters.language)
        if failure:
            drop(failure)
        else:
            kept.append(index)
    return kept, language, score, dict(collections.Counter(found))


def quality_filter(
    texts: list[str], filters: FiltersSection, drop: Drop
) -> tuple[list[int], np.ndarray, np.ndarray | None]:
    """(indices kept, every text's score, the score histogram); with data.filters.quality.
    threshold the texts below it are dropped, with top_fraction the build chooses later."""
    if not filters.quality.enabled:
        return list(range(len(texts))), np.full(len(texts), np.nan, dtype=np.float32), None
    scores = quality_model(str(filters.quality.model)).score(texts)
    threshold = filters.quality.threshold
    if threshold is None:
        return list(range(len(texts))), scores, histogram(scores)
    below = int((scores < threshold).sum())
    if below:
        drop(("quality", "below_threshold"), below)
    return np.flatnonzero(scores >= threshold).tolist(), scores, histogram(scores)


def make_context(
    section: DataSection,
    eval_ngrams: EvalNgrams | None,
    filters: dict[str, FiltersSection] | None = None,
) -> ScanContext:
    """`filters`: per source, when not `section.filters_of` (the build resolves paths)."""
    near = section.dedup.near
    filters = filters or {s.name: section.filters_of(s) for s in section.sources}
    urls = url_filter(section.url_filter)
    return ScanContext(
        rules={
            s.name: SourceRules(
                section.clean_of(s),
                filters[s.name],
                pii_replacer(section.pii_of(s)),
                urls if s.url_field is not None else None,
            )
            for s in section.sources
        },
        minhasher=MinHasher(bands=near.bands, rows=near.rows, ngram=near.ngram, seed=near.seed),
        eval_ngrams=eval_ngrams,
    )


_CONTEXT: ScanContext | None = None


def init_worker(context: ScanContext) -> None:
    global _CONTEXT
    _CONTEXT = context


def process_chunk(source: str, texts: list[str], urls: list | None = None) -> ChunkResult:
    """URL-filter, clean, replace PII, filter and hash one chunk of a source's documents
    (runs in a worker); `urls`: the documents' URLs, for a source with url_field."""
    assert _CONTEXT is not None, "init_worker was not called"
    rules = _CONTEXT.rules[source]
    dropped: collections.Counter[str] = collections.Counter()
    detail: collections.Counter[str] = collections.Counter()

    def drop(failure: tuple[str, str], count: int = 1) -> None:
        dropped[failure[0]] += count
        detail[".".join(failure)] += count

    read = len(texts)
    url_counts: collections.Counter[str] = collections.Counter()
    if rules.urls is not None and urls is not None:
        texts = url_filtered(texts, urls, rules.urls, url_counts, drop)
    pii: collections.Counter[str] = collections.Counter()
    candidates = []  # cleaned documents that pass the length filter (before hashing them)
    for text in texts:
        text = clean_text(text, rules.clean)
        if rules.pii is not None:
            replaced = rules.pii.replace(text, pii)
            pii["documents"] += replaced != text
            text = replaced
        failure = ("empty", "after_cleaning") if not text.strip() else None
        failure = failure or length_failure(text, rules.filters)
        if failure:
            drop(failure)
        else:
            candidates.append(text)
    passed, language, language_score, languages = language_filter(candidates, rules.filters, drop)
    candidates = [candidates[i] for i in passed]
    language, language_score = language[passed], language_score[passed]
    words = Words(candidates)
    kept: list[int] = []
    for index, text in enumerate(candidates):
        failure = content_failure(text, *words.of(index), rules.filters)
        if failure:
            drop(failure)
        else:
            kept.append(index)
    passed, quality_score, quality_counts = quality_filter(
        [candidates[i] for i in kept], rules.filters, drop
    )
    kept = [kept[i] for i in passed]
    scores = ModelScores(
        language[kept], language_score[kept], quality_score[passed], languages, quality_counts
    )
    kept_words = words.subset(np.asarray(kept, dtype=np.int64))
    signatures, shingled = _CONTEXT.minhasher.signatures(kept_words)
    if _CONTEXT.eval_ngrams is not None:
        contamination = _CONTEXT.eval_ngrams.match(kept_words)
    else:
        contamination = np.full(len(kept), NONE, dtype=np.int16)
    kept_texts = [candidates[i] for i in kept]
    return ChunkResult(
        texts=[t.encode("utf-8") for t in kept_texts],
        exact=np.array([exact_hash(t) for t in kept_texts], dtype="S16"),
        signatures=signatures,
        shingled=shingled,
        contamination=contamination,
        read=read,
        dropped=dict(dropped),
        dropped_detail=dict(detail),
        scores=scores,
        pii=dict(pii),
        url_filter=dict(url_counts),
    )


def url_filtered(
    texts: list[str], urls: list, urls_filter: UrlFilter, counts: collections.Counter, drop: Drop
) -> list[str]:
    """The texts whose URL the lists keep; `counts`: documents checked and each verdict."""
    kept = []
    counts[CHECKED] += len(texts)
    for text, url in zip(texts, urls, strict=True):
        keep, key = urls_filter.verdict(url)
        if key is not None:
            counts[key] += 1
        if keep:
            kept.append(text)
        else:
            drop(("url", key.split(":", 1)[0]))
    return kept


def read_chunks(
    path: Path, source: DataSource, stats: ReadStats, part: tuple[int, int] | None = None
) -> Iterator[tuple[list[str], list | None]]:
    """The documents of one file (or of a part of it), in chunks of at most CHUNK_DOCUMENTS
    or ~CHUNK_BYTES, with their URLs for a source with url_field (else None)."""
    chunk: list[str] = []
    urls: list = []
    size = 0
    with_urls = source.url_field is not None
    for text, url in iter_texts_and_urls(
        path,
        url_field=source.url_field,
        text_field=source.text_field,
        text_mode=source.text_mode,
        on_error=source.on_error,
        encoding_errors=source.encoding_errors,
        stats=stats,
        split=source.split,
        part=part,
    ):
        chunk.append(text)
        urls.append(url)
        size += len(text)
        if len(chunk) >= CHUNK_DOCUMENTS or size >= CHUNK_BYTES:
            yield chunk, urls if with_urls else None
            chunk, urls, size = [], [], 0
    if chunk:
        yield chunk, urls if with_urls else None


_COLUMNS = {  # name: (dtype, values per document)
    "exact": (np.dtype("S16"), 1),
    "shingled": (np.dtype(np.bool_), 1),
    "contamination": (np.dtype("<i2"), 1),
    "language": (np.dtype("S16"), 1),
    "language_score": (np.dtype("<f4"), 1),
    "quality_score": (np.dtype("<f4"), 1),
}
_FILES = ("texts.bin", "offsets.u64", "signatures.u32", *(f"{n}.bin" for n in _COLUMNS))
_SCORE_COLUMNS = ("language", "language_score", "quality_score")


class ScanWriter:
    """Appends chunk results to the files of one scan directory (a temporary directory).

    Everything is appended to open files as it comes, so memory does not grow with the file.
    """

    def __init__(self, directory: Path, num_perm: int):
        self.directory = directory
        directory.mkdir(parents=True)
        self.num_perm = num_perm
        self._files = {name: open(directory / name, "wb") for name in _FILES}  # noqa: SIM115
        self._files["offsets.u64"].write(np.zeros(1, dtype="<u8").tobytes())
        self._end = 0
        self.kept = 0
        self.read = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.dropped_detail: collections.Counter[str] = collections.Counter()
        self.languages: collections.Counter[str] = collections.Counter()
        self.quality_histogram = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
        self.pii: collections.Counter[str] = collections.Counter()
        self.url_filter: collections.Counter[str] = collections.Counter()

    def add(self, result: ChunkResult) -> None:
        sizes = np.fromiter((len(t) for t in result.texts), np.int64, len(result.texts))
        ends = self._end + np.cumsum(sizes)
        self._files["texts.bin"].write(b"".join(result.texts))
        self._files["offsets.u64"].write(ends.astype("<u8").tobytes())
        self._files["signatures.u32"].write(result.signatures.astype("<u4").tobytes())
        for name, (dtype, _) in _COLUMNS.items():
            source = result.scores if name in _SCORE_COLUMNS else result
            self._files[f"{name}.bin"].write(getattr(source, name).astype(dtype).tobytes())
        self.languages.update(result.scores.languages)
        if result.scores.quality_histogram is not None:
            self.quality_histogram += result.scores.quality_histogram
        self._end = int(ends[-1]) if len(ends) else self._end
        self.kept += len(result.texts)
        self.read += result.read
        self.dropped.update(result.dropped)
        self.dropped_detail.update(result.dropped_detail)
        self.pii.update(result.pii)
        self.url_filter.update(result.url_filter)

    @property
    def kept_bytes(self) -> int:
        return self._end

    def finish(self) -> None:
        for handle in self._files.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()


class ScanOutput:
    """A finished scan directory. Reads with explicit file reads (no memory maps), so what a
    step reads does not stay resident."""

    def __init__(self, directory: Path, num_perm: int | None = None):
        self.directory = directory
        self.documents = (directory / "offsets.u64").stat().st_size // 8 - 1
        size = (directory / "signatures.u32").stat().st_size
        self.num_perm = size // 4 // self.documents if self.documents else (num_perm or 0)

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        """Byte offsets of the documents in texts.bin (read when texts are first needed)."""
        return np.fromfile(self.directory / "offsets.u64", dtype="<u8").astype(np.int64)

    def signature_block(self, start: int, stop: int) -> np.ndarray:
        """Whole signatures of documents [start, stop), as a [stop - start, num_perm] array."""
        count = (stop - start) * self.num_perm
        values = np.fromfile(
            self.directory / "signatures.u32",
            dtype="<u4",
            count=count,
            offset=start * 4 * self.num_perm,
        )
        return values.reshape(stop - start, self.num_perm).astype(np.uint32)

    def array(self, name: str) -> np.ndarray:
        """A one-value-per-document column: exact, shingled, contamination, language,
        language_score or quality_score."""
        dtype, _ = _COLUMNS[name]
        return np.fromfile(self.directory / f"{name}.bin", dtype=dtype)

    def signature_columns(self, start: int, stop: int, chunk: int = 1 << 15) -> np.ndarray:
        """Columns [start, stop) of every document's signature, read a chunk at a time."""
        out = np.empty((self.documents, stop - start), dtype=np.uint32)
        row_bytes = 4 * self.num_perm
        with open(self.directory / "signatures.u32", "rb") as f:
            for lo in range(0, self.documents, chunk):
                hi = min(lo + chunk, self.documents)
                block = np.frombuffer(f.read((hi - lo) * row_bytes), dtype="<u4")
                out[lo:hi] = block.reshape(hi - lo, self.num_perm)[:, start:stop]
        return out

    def signature_rows(self, indices: np.ndarray) -> np.ndarray:
        """Whole signatures of the given documents (any order)."""
        out = np.empty((len(indices), self.num_perm), dtype=np.uint32)
        row_bytes = 4 * self.num_perm
        with open(self.directory / "signatures.u32", "rb") as f:
            for row, index in enumerate(indices):
                f.seek(int(index) * row_bytes)
                out[row] = np.frombuffer(f.read(row_bytes), dtype="<u4")
        return out

    def texts(self, indices: np.ndarray) -> list[str]:
        """The documents at the given (ascending) indices; consecutive ones in one read."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return []
        out: list[str] = []
        breaks = np.flatnonzero(np.diff(indices) != 1) + 1
        with open(self.directory / "texts.bin", "rb") as f:
            for run in np.split(indices, breaks):
                base = int(self.offsets[run[0]])
                f.seek(base)
                data = f.read(int(self.offsets[run[-1] + 1]) - base)
                for index in run:
                    lo, hi = int(self.offsets[index]) - base, int(self.offsets[index + 1]) - base
                    out.append(data[lo:hi].decode("utf-8"))
        return out

    def text_bytes(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        return self.offsets[indices + 1] - self.offsets[indices]


@dataclass
class ScanJob:
    """One input file to scan into its scan directory (the step `name`, with fingerprint `fp`)."""

    index: int  # of the source in data.sources
    number: int  # of the file in the source
    path: Path
    source: DataSource
    directory: Path
    name: str
    fp: str


@dataclass(frozen=True)
class ScanPart:
    """Part `number` of a file scanned in parts: the documents that begin in bytes
    [start, stop) (see `readers.iter_texts`)."""

    number: int
    start: int
    stop: int


def file_parts(job: ScanJob, part_bytes: int) -> list[ScanPart] | None:
    """The parts of about `part_bytes` a file is scanned in, or None: in one pass (it is not
    larger, or cannot be read from an offset: compressed, a plain-text file that is one
    document, a `datasets` directory)."""
    size = job.path.stat().st_size if job.path.is_file() else 0
    if size <= part_bytes or not splittable(job.path, job.source.text_mode):
        return None
    count = -(-size // part_bytes)
    return [
        ScanPart(n, n * part_bytes, size if n == count - 1 else (n + 1) * part_bytes)
        for n in range(count)
    ]


def parts_directory(job: ScanJob) -> Path:
    return job.directory.with_name(f"{job.directory.name}.parts")


def scan_file(
    job: ScanJob,
    num_perm: int,
    pool: Any | None = None,
    in_flight: int = 1,
    on_chunk: Callable[[int], None] | None = None,
    part: ScanPart | None = None,
) -> dict:
    """Read, clean, filter and hash one file (or one part of it) into `job.directory` (for a
    part: its directory under `parts_directory`), written under a temporary name, renamed when
    complete; returns the step's record (of the part). Chunks go to `pool` when given (the local
    executor), else run here (a Ray task)."""
    from llmtrain.atomic import atomic_path

    directory = job.directory if part is None else parts_directory(job) / f"{part.number:05d}"
    for stale in directory.parent.glob(f".{directory.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an attempt killed mid-file
    stats = ReadStats()
    span = None if part is None else (part.start, part.stop)
    with atomic_path(directory) as tmp:
        writer = ScanWriter(tmp, num_perm)

        def consume(result: ChunkResult) -> None:
            writer.add(result)
            if on_chunk is not None:
                on_chunk(result.read)

        chunks = (
            (job.source.name, texts, urls)
            for texts, urls in read_chunks(job.path, job.source, stats, span)
        )
        run_chunks(chunks, consume, pool, in_flight)
        writer.finish()
    if stats.empty:  # records with an empty text: read, and dropped as empty
        writer.read += stats.empty
        writer.dropped["empty"] += stats.empty
        writer.dropped_detail["empty.no_text"] += stats.empty
    return {
        "file": str(job.path),
        "read": writer.read,
        "read_errors_skipped": stats.skipped,
        "read_error_examples": stats.examples,
        "empty_records": stats.empty,
        "dropped": dict(sorted(writer.dropped.items())),
        "dropped_detail": dict(sorted(writer.dropped_detail.items())),
        "kept": writer.kept,
        "kept_bytes": writer.kept_bytes,
        "languages": dict(sorted(writer.languages.items())),
        "quality_histogram": writer.quality_histogram.tolist(),
        "pii": dict(sorted(writer.pii.items())),
        "url_filter": dict(sorted(writer.url_filter.items())),
    }


_SUMMED = ("read", "read_errors_skipped", "empty_records", "kept", "kept_bytes")


def join_parts(job: ScanJob, records: list[dict]) -> dict:
    """The file's scan directory from its parts' (`records`: theirs, in order): each file of
    the parts concatenated, text offsets shifted; the parts are then deleted. Returns the
    file's record. Run again after it finished (a retried task), it only returns the record."""
    from llmtrain.atomic import atomic_path

    parts = parts_directory(job)
    if parts.is_dir():
        for stale in job.directory.parent.glob(f".{job.directory.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        directories = [parts / f"{n:05d}" for n in range(len(records))]
        with atomic_path(job.directory) as tmp:
            tmp.mkdir()
            for name in _FILES:
                with open(tmp / name, "wb") as out:
                    end = 0  # of the text before the part (offsets.u64)
                    for number, directory in enumerate(directories):
                        with open(directory / name, "rb") as f:
                            if name != "offsets.u64":
                                shutil.copyfileobj(f, out, 1 << 22)
                                continue
                            offsets = np.fromfile(f, dtype="<u8")[0 if number == 0 else 1 :]
                            out.write((offsets + np.uint64(end)).tobytes())
                            end += int(offsets[-1]) if offsets.size else 0
                    out.flush()
                    os.fsync(out.fileno())
        shutil.rmtree(parts)
    record = dict(records[0])
    for key in _SUMMED:
        record[key] = sum(r[key] for r in records)
    record["read_error_examples"] = [e for r in records for e in r["read_error_examples"]][
        :EXAMPLES
    ]
    for key in ("dropped", "dropped_detail", "languages", "pii", "url_filter"):
        total: collections.Counter[str] = collections.Counter()
        for r in records:
            total.update(r[key])
        record[key] = dict(sorted(total.items()))
    record["quality_histogram"] = np.sum(
        [r["quality_histogram"] for r in records], axis=0, dtype=np.int64
    ).tolist()
    return record


def run_chunks(
    chunks: Iterator[tuple[str, list[str], list | None]],
    consume: Callable[[ChunkResult], None],
    pool: Any | None,
    in_flight: int,
) -> None:
    """process_chunk over `chunks` (in a pool when given), results consumed in order, with at
    most `in_flight` chunks submitted and not yet consumed."""
    if pool is None:
        for chunk in chunks:
            consume(process_chunk(*chunk))
        return
    pending: collections.deque = collections.deque()
    for chunk in chunks:
        pending.append(pool.apply_async(process_chunk, chunk))
        while len(pending) >= in_flight:
            consume(pending.popleft().get())
    while pending:
        consume(pending.popleft().get())
