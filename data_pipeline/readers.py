"""Streaming readers for corpora and record files, shared by every stage that reads user data.

Formats, by file name: `.jsonl`/`.json` (one JSON object per line; also `.gz`/`.zst`),
`.parquet`, plain text (anything else; also `.gz`/`.zst`), and `datasets` directories saved
with `save_to_disk`. Nothing is loaded whole except a plain-text file read as one document.
Every problem names the file and the line (or byte offset) and says what to do.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from llmtrain.errors import InputDataError

OnError = Literal["raise", "skip"]
TextMode = Literal["file", "line", "paragraph"]
EncodingErrors = Literal["strict", "replace"]

_JSON_SUFFIXES = {".jsonl", ".json", ".ndjson"}


@dataclass
class ReadStats:
    """What a reader skipped under `on_error: skip`, with the first few reasons."""

    records: int = 0
    skipped: int = 0
    empty: int = 0
    """Records whose text is the empty string (and plain-text files with no text): not
    yielded, only counted."""
    examples: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        if len(self.examples) < 5:
            self.examples.append(reason)


def expand_paths(patterns: Iterable[str | Path], *, key: str = "paths") -> list[Path]:
    """Files named by paths, directories (all files below) and globs (`**` recursive), sorted.

    A pattern that matches nothing is an error naming the recipe `key`.
    """
    files: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        path = Path(text)
        if is_datasets_dir(path) or path.is_file():
            matched = [path]
        elif path.is_dir():
            matched = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path))
        elif glob.has_magic(text):
            matched = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        else:
            raise InputDataError(f"{key}: file not found: {text}")
        if not matched:
            raise InputDataError(f"{key}: {text} matches no file")
        files.extend(matched)
    return files


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def is_datasets_dir(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_info.json").is_file()
        or (path / "state.json").is_file()
        or (path / "dataset_dict.json").is_file()
    )


def file_format(path: Path) -> str:
    """'datasets', 'jsonl', 'parquet' or 'text', from the path (see the module doc)."""
    if is_datasets_dir(path):
        return "datasets"
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in (".gz", ".zst"):
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in _JSON_SUFFIXES:
        return "jsonl"
    if last == ".parquet":
        return "parquet"
    return "text"


def open_binary(path: Path) -> BinaryIO:
    """Open a file for reading bytes, decompressing `.gz` and `.zst` on the fly."""
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rb")  # type: ignore[return-value]
        if path.suffix == ".zst":
            import zstandard

            raw = open(path, "rb")  # noqa: SIM115 - closed with the reader
            return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
        return open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise InputDataError(
            f"{path}: cannot open ({exc.strerror or exc}); check that the file exists and is "
            "readable, or leave it out of the paths"
        ) from exc


def _unreadable(path: Path, exc: Exception) -> InputDataError:
    kind = {".gz": "gzip", ".zst": "zstandard"}.get(path.suffix, "")
    what = f"a damaged or truncated {kind} file" if kind else "a damaged file"
    return InputDataError(
        f"{path}: cannot read ({type(exc).__name__}: {exc}); it looks like {what}: replace it, "
        "or leave it out of the paths"
    )


def _read_lines(f: BinaryIO, path: Path) -> Iterator[bytes]:
    """The lines of an open file; a read failure (damaged compressed data) names the file."""
    lines = iter(f)
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except Exception as exc:  # gzip, zstandard and OS errors differ in type
            raise _unreadable(path, exc) from exc
        yield line


def _decode(
    data: bytes,
    path: Path,
    offset: int,
    errors: EncodingErrors,
    line: int | None,
    encoding_key: str | None = "encoding_errors",
) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        where = f"{path}:{line}" if line is not None else str(path)
        suffix = " (decompressed)" if path.suffix in (".gz", ".zst") else ""
        fix = f", or set {encoding_key}: replace to replace bad bytes" if encoding_key else ""
        raise InputDataError(
            f"{where}: not valid UTF-8 at byte offset {offset + exc.start}{suffix}; "
            f"convert the file to UTF-8{fix}"
        ) from None


def iter_records(
    path: str | Path,
    *,
    on_error: OnError = "raise",
    encoding_errors: EncodingErrors = "strict",
    stats: ReadStats | None = None,
    split: str = "train",
    skip_key: str = "on_error",
    encoding_key: str | None = "encoding_errors",
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line or row number, record) from a jsonl, parquet or `datasets` file.

    Broken JSON or a line that is not an object raises, naming file and line; with
    `on_error="skip"` such lines are skipped and counted in `stats`. The messages name the
    caller's recipe keys: `skip_key` (set to skip), `encoding_key` (None: the caller has none).
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    fmt = file_format(path)
    if fmt == "parquet":
        yield from _iter_parquet(path, stats)
    elif fmt == "datasets":
        yield from _iter_datasets_dir(path, split, stats)
    elif fmt == "jsonl":
        yield from _iter_jsonl(path, on_error, encoding_errors, stats, skip_key, encoding_key)
    else:
        raise InputDataError(
            f"{path}: expected records (.jsonl, .json, .parquet or a datasets directory), "
            "got a plain-text file"
        )


def _iter_jsonl(
    path: Path,
    on_error: OnError,
    encoding_errors: EncodingErrors,
    stats: ReadStats,
    skip_key: str = "on_error",
    encoding_key: str | None = "encoding_errors",
) -> Iterator[tuple[int, dict[str, Any]]]:
    offset = 0
    with open_binary(path) as f:
        for line_no, raw in enumerate(_read_lines(f, path), start=1):
            line_offset, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            text = _decode(raw, path, line_offset, encoding_errors, line_no, encoding_key)
            try:
                record = json.loads(text.rstrip("\r\n"))  # columns as the line shows them
            except json.JSONDecodeError as exc:
                reason = (
                    f"{path}:{line_no}: invalid JSON ({exc.msg.removesuffix(' at')} at column "
                    f"{exc.colno})"
                )
                if on_error == "skip":
                    stats.skip(reason)
                    continue
                raise InputDataError(
                    f"{reason}; fix the line, or set {skip_key}: skip to skip and count such lines"
                ) from None
            if not isinstance(record, dict):
                reason = f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}"
                if on_error == "skip":
                    stats.skip(reason)
                    continue
                raise InputDataError(reason)
            stats.records += 1
            yield line_no, record


def _iter_parquet(path: Path, stats: ReadStats) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise InputDataError(
            f"{path}: cannot read as parquet ({exc}); replace the file, or leave it out of the "
            "paths"
        ) from exc
    row = 0
    batches = parquet.iter_batches(batch_size=1024)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:  # damaged pages: OSError, ArrowInvalid, ...
            raise InputDataError(
                f"{path}: cannot read the rows after row {row} ({type(exc).__name__}: {exc}); "
                "the parquet file looks damaged: replace it, or leave it out of the paths"
            ) from exc
        for record in batch.to_pylist():
            row += 1
            stats.records += 1
            yield row, record


def _iter_datasets_dir(
    path: Path, split: str, stats: ReadStats
) -> Iterator[tuple[int, dict[str, Any]]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError/ValueError for foreign dirs
        raise InputDataError(f"{path}: cannot load with datasets.load_from_disk ({exc})") from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise InputDataError(
                f"{path}: no split {split!r} in this DatasetDict (splits: {', '.join(loaded)})"
            )
        loaded = loaded[split]
    for row, record in enumerate(loaded, start=1):
        stats.records += 1
        yield row, record


def iter_texts(
    path: str | Path,
    *,
    text_field: str = "text",
    text_mode: TextMode = "file",
    on_error: OnError = "raise",
    encoding_errors: EncodingErrors = "strict",
    stats: ReadStats | None = None,
    split: str = "train",
) -> Iterator[str]:
    """Yield the documents of one file as strings.

    Record files give `record[text_field]`; a record without it raises (or is skipped and
    counted with `on_error="skip"`). Plain text gives the whole file as one document
    (`text_mode="file"`), one per line (`"line"`) or one per blank-line-separated paragraph
    (`"paragraph"`); empty documents are never yielded. `split` picks the split of a
    `datasets` DatasetDict directory.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    if file_format(path) == "text":
        yield from _iter_plain_text(path, text_mode, encoding_errors, stats)
        return
    for line_no, record in iter_records(
        path, on_error=on_error, encoding_errors=encoding_errors, stats=stats, split=split
    ):
        text = record.get(text_field)
        if not isinstance(text, str):
            if text_field not in record:
                reason = (
                    f"{path}:{line_no}: record has no field {text_field!r} "
                    f"(fields: {', '.join(map(str, record)) or 'none'})"
                )
                fix = "set text_field to the field that holds the text"
            else:
                reason = (
                    f"{path}:{line_no}: field {text_field!r} holds {type(text).__name__}, not text"
                )
                fix = "fix the record"
            if on_error == "skip":
                stats.skip(reason)
                continue
            raise InputDataError(
                f"{reason}; {fix}, or set on_error: skip to skip and count such records"
            )
        if text:
            yield text
        else:
            stats.empty += 1


def _iter_plain_text(
    path: Path, text_mode: TextMode, encoding_errors: EncodingErrors, stats: ReadStats
) -> Iterator[str]:
    with open_binary(path) as f:
        if text_mode == "file":
            try:
                data = f.read()
            except Exception as exc:  # gzip, zstandard and OS errors differ in type
                raise _unreadable(path, exc) from exc
            text = _decode(data, path, 0, encoding_errors, None)
            if text.strip():
                stats.records += 1
                yield text
            else:
                stats.empty += 1
            return
        offset = 0
        paragraph: list[str] = []
        for line_no, raw in enumerate(_read_lines(f, path), start=1):
            line = _decode(raw, path, offset, encoding_errors, line_no)
            offset += len(raw)
            if text_mode == "line":
                line = line.rstrip("\r\n")
                if line.strip():
                    stats.records += 1
                    yield line
            elif line.strip():
                paragraph.append(line)
            elif paragraph:
                stats.records += 1
                yield "".join(paragraph).rstrip("\r\n")
                paragraph = []
        if paragraph:
            stats.records += 1
            yield "".join(paragraph).rstrip("\r\n")
