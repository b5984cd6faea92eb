"""Streaming readers for corpora and record files, shared by every stage that reads user data.

Formats, by file name: `.jsonl`/`.json` (one JSON object per line; also `.gz`/`.zst`),
`.parquet`, plain text (anything else; also `.gz`/`.zst`), and `datasets` directories saved
with `save_to_disk`. Nothing is loaded whole except a plain-text file read as one document.
Every problem names the file and the line (or byte offset) and says what to do.

A part of a file (`part=(start, stop)`, bytes) can be read on its own, for a build that spreads
one large file over several tasks: the records that begin in it (whole lines of jsonl and plain
text, after an empty line in paragraph mode; whole row groups of parquet), so that the parts
of a file, read one after the other, give exactly the file's records. Compressed files, a
plain-text file read as one document and `datasets` directories cannot be read in parts.
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


EXAMPLES = 5
"""Reasons for skipped records that ReadStats keeps (the first ones)."""


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
        if len(self.examples) < EXAMPLES:
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


def splittable(path: Path, text_mode: TextMode = "file") -> bool:
    """Whether a part of the file can be read on its own (`part` of iter_texts)."""
    if path.suffix in (".gz", ".zst"):  # a compressed stream is read from its start
        return False
    fmt = file_format(path)
    return fmt in ("jsonl", "parquet") or (fmt == "text" and text_mode != "file")


def _part_start(f: BinaryIO, position: int, size: int, paragraphs: bool) -> int:
    """Where the part of a line file that `position` would start begins: the first line start
    at or after it; for paragraphs, the end of the first empty line that starts at or after it
    (a paragraph never spans two parts). Both neighbours of a boundary find the same place."""
    if position <= 0:
        return 0
    if position >= size:
        return size
    f.seek(position - 1)
    f.readline()  # the rest of the line holding the byte before `position`
    if paragraphs:
        for line in iter(f.readline, b""):
            if line in (b"\n", b"\r\n"):
                return f.tell()
        return size
    return f.tell()


def _line_bounds(path: Path, part: tuple[int, int] | None, paragraphs: bool) -> tuple[int, int]:
    """Byte range [start, stop) of whole lines that `part` of a line file reads."""
    if part is None:
        return 0, -1
    size = path.stat().st_size
    with open(path, "rb") as f:
        return tuple(_part_start(f, p, size, paragraphs) for p in part)  # type: ignore[return-value]


class _LineNumbers:
    """Line (or row) numbers for messages, from a record's index within the part read: the
    lines before the part are counted (by reading the file up to it) only when a message needs
    a number, so reading a part costs nothing more than reading its bytes."""

    def __init__(self, path: Path, start: int = 0, before: int | None = None):
        self.path, self.start = path, start
        self.before = before if before is not None else (0 if start == 0 else None)

    def __call__(self, index: int) -> int:
        if self.before is None:
            self.before = 0
            with open(self.path, "rb") as f:
                left = self.start
                while left > 0:
                    block = f.read(min(left, 1 << 24))
                    if not block:
                        break
                    self.before += block.count(b"\n")
                    left -= len(block)
        return self.before + index


def _unreadable(path: Path, exc: Exception) -> InputDataError:
    kind = {".gz": "gzip", ".zst": "zstandard"}.get(path.suffix, "")
    what = f"a damaged or truncated {kind} file" if kind else "a damaged file"
    return InputDataError(
        f"{path}: cannot read ({type(exc).__name__}: {exc}); it looks like {what}: replace it, "
        "or leave it out of the paths"
    )


def _read_lines(f: BinaryIO, path: Path, size: int = -1) -> Iterator[bytes]:
    """The lines of an open file (the next `size` bytes of it: whole lines, when not -1); a
    read failure (damaged compressed data) names the file."""
    lines = iter(f)
    while size:
        try:
            line = next(lines)
        except StopIteration:
            return
        except Exception as exc:  # gzip, zstandard and OS errors differ in type
            raise _unreadable(path, exc) from exc
        size -= len(line) if size > 0 else 0
        yield line


def _decode(
    data: bytes,
    path: Path,
    offset: int,
    errors: EncodingErrors,
    numbers: _LineNumbers | None,
    index: int = 0,
    encoding_key: str | None = "encoding_errors",
) -> str:
    """`data` decoded; a failure names the file, the line (`numbers(index)`) and the offset."""
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        where = f"{path}:{numbers(index)}" if numbers is not None else str(path)
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
    keys = (skip_key, encoding_key)
    records, numbers = _records(path, on_error, encoding_errors, stats, split, None, keys)
    for index, record in records:
        yield numbers(index), record


def _records(
    path: Path,
    on_error: OnError,
    encoding_errors: EncodingErrors,
    stats: ReadStats,
    split: str,
    part: tuple[int, int] | None,
    keys: tuple[str, str | None] = ("on_error", "encoding_errors"),
) -> tuple[Iterator[tuple[int, dict[str, Any]]], _LineNumbers]:
    """(index within the part read, record) of a record file or of a part of it, and the line
    (row) numbers of those indices."""
    fmt = file_format(path)
    if fmt == "parquet":
        parquet = _open_parquet(path)
        groups, before = _row_groups(parquet, part)
        return _iter_parquet(path, parquet, groups, before, stats), _LineNumbers(path, 0, before)
    if fmt == "datasets":
        return _iter_datasets_dir(path, split, stats), _LineNumbers(path)
    if fmt == "jsonl":
        start, stop = _line_bounds(path, part, paragraphs=False)
        numbers = _LineNumbers(path, start)
        lines = _iter_jsonl(path, on_error, encoding_errors, stats, numbers, start, stop, *keys)
        return lines, numbers
    raise InputDataError(
        f"{path}: expected records (.jsonl, .json, .parquet or a datasets directory), "
        "got a plain-text file"
    )


def _iter_jsonl(
    path: Path,
    on_error: OnError,
    encoding_errors: EncodingErrors,
    stats: ReadStats,
    numbers: _LineNumbers,
    start: int = 0,
    stop: int = -1,
    skip_key: str = "on_error",
    encoding_key: str | None = "encoding_errors",
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index of the line from `start`, record) of the lines in bytes [start, stop)."""
    offset = start
    with open_binary(path) as f:
        if start:
            f.seek(start)
        size = stop - start if stop >= 0 else -1
        for index, raw in enumerate(_read_lines(f, path, size), start=1):
            line_offset, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            text = _decode(raw, path, line_offset, encoding_errors, numbers, index, encoding_key)
            try:
                record = json.loads(text.rstrip("\r\n"))  # columns as the line shows them
            except json.JSONDecodeError as exc:
                reason = (
                    f"{path}:{numbers(index)}: invalid JSON ({exc.msg.removesuffix(' at')} at "
                    f"column {exc.colno})"
                )
                if on_error == "skip":
                    stats.skip(reason)
                    continue
                raise InputDataError(
                    f"{reason}; fix the line, or set {skip_key}: skip to skip and count such lines"
                ) from None
            if not isinstance(record, dict):
                reason = (
                    f"{path}:{numbers(index)}: expected a JSON object, got {type(record).__name__}"
                )
                if on_error == "skip":
                    stats.skip(reason)
                    continue
                raise InputDataError(reason)
            stats.records += 1
            yield index, record


def _open_parquet(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise InputDataError(
            f"{path}: cannot read as parquet ({exc}); replace the file, or leave it out of the "
            "paths"
        ) from exc


def _row_groups(parquet: Any, part: tuple[int, int] | None) -> tuple[list[int] | None, int]:
    """The row groups a part of a parquet file reads (those whose first page lies in it; None:
    all) and the rows before the first of them."""
    if part is None:
        return None, 0
    metadata = parquet.metadata
    groups, before = [], 0
    for number in range(metadata.num_row_groups):
        group = metadata.row_group(number)
        column = group.column(0)
        first_page = column.data_page_offset
        if column.has_dictionary_page and column.dictionary_page_offset is not None:
            first_page = min(first_page, column.dictionary_page_offset)
        if part[0] <= first_page < part[1]:
            groups.append(number)
        elif first_page < part[0]:
            before += group.num_rows
    return groups, before


def _iter_parquet(
    path: Path, parquet: Any, groups: list[int] | None, before: int, stats: ReadStats
) -> Iterator[tuple[int, dict[str, Any]]]:
    if groups == []:
        return
    row = 0
    batches = parquet.iter_batches(batch_size=1024, row_groups=groups)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:  # damaged pages: OSError, ArrowInvalid, ...
            raise InputDataError(
                f"{path}: cannot read the rows after row {before + row} ({type(exc).__name__}: "
                f"{exc}); the parquet file looks damaged: replace it, or leave it out of the paths"
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
    part: tuple[int, int] | None = None,
) -> Iterator[str]:
    """Yield the documents of one file as strings.

    Record files give `record[text_field]`; a record without it raises (or is skipped and
    counted with `on_error="skip"`). Plain text gives the whole file as one document
    (`text_mode="file"`), one per line (`"line"`) or one per blank-line-separated paragraph
    (`"paragraph"`); empty documents are never yielded. `split` picks the split of a
    `datasets` DatasetDict directory. `part` (start, stop byte offsets; see the module doc and
    `splittable`): only the documents of that part, with the file's line numbers in messages.
    """
    for text, _ in iter_texts_and_urls(
        path,
        text_field=text_field,
        text_mode=text_mode,
        on_error=on_error,
        encoding_errors=encoding_errors,
        stats=stats,
        split=split,
        part=part,
    ):
        yield text


def iter_texts_and_urls(
    path: str | Path,
    *,
    url_field: str | None = None,
    text_field: str = "text",
    text_mode: TextMode = "file",
    on_error: OnError = "raise",
    encoding_errors: EncodingErrors = "strict",
    stats: ReadStats | None = None,
    split: str = "train",
    part: tuple[int, int] | None = None,
) -> Iterator[tuple[str, Any]]:
    """(text, url) of each document of `iter_texts`: the url is the record's `url_field`
    value (None when the record lacks it, or without `url_field`). Plain text has no fields:
    a `url_field` for a plain-text file is a ValueError (the build checks it first)."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    if part is not None and not splittable(path, text_mode):
        raise ValueError(f"{path} cannot be read in parts ({text_mode=})")
    if file_format(path) == "text":
        if url_field is not None:
            raise ValueError(f"{path} is plain text: it has no field {url_field!r}")
        for text in _iter_plain_text(path, text_mode, encoding_errors, stats, part):
            yield text, None
        return
    records, numbers = _records(path, on_error, encoding_errors, stats, split, part)
    for index, record in records:
        text = record.get(text_field)
        if not isinstance(text, str):
            if text_field not in record:
                reason = (
                    f"{path}:{numbers(index)}: record has no field {text_field!r} "
                    f"(fields: {', '.join(map(str, record)) or 'none'})"
                )
                fix = "set text_field to the field that holds the text"
            else:
                reason = (
                    f"{path}:{numbers(index)}: field {text_field!r} holds "
                    f"{type(text).__name__}, not text"
                )
                fix = "fix the record"
            if on_error == "skip":
                stats.skip(reason)
                continue
            raise InputDataError(
                f"{reason}; {fix}, or set on_error: skip to skip and count such records"
            )
        if text:
            yield text, None if url_field is None else record.get(url_field)
        else:
            stats.empty += 1


def _iter_plain_text(
    path: Path,
    text_mode: TextMode,
    encoding_errors: EncodingErrors,
    stats: ReadStats,
    part: tuple[int, int] | None = None,
) -> Iterator[str]:
    start, stop = _line_bounds(path, part, paragraphs=text_mode == "paragraph")
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
        if start:
            f.seek(start)
        numbers = _LineNumbers(path, start)
        offset = start
        paragraph: list[str] = []
        lines = _read_lines(f, path, stop - start if stop >= 0 else -1)
        for index, raw in enumerate(lines, start=1):
            line = _decode(raw, path, offset, encoding_errors, numbers, index)
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
