"""`llmtrain tokenizer eval`: the held-out measures of report.json, for any fast tokenizer
directories, on a corpus given on the command line, side by side."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from llmtrain.atomic import atomic_write_json
from llmtrain.data_pipeline.readers import expand_paths, iter_texts
from llmtrain.errors import InputDataError, StageInputError

from .corpus import describe_files
from .measure import measure


def load(path: str | Path):
    """A fast tokenizer from a directory, or a StageInputError saying what is wrong."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise StageInputError(f"tokenizer eval: {path} is not a directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises OSError, ValueError, ... for foreign dirs
        raise StageInputError(
            f"tokenizer eval: cannot load a tokenizer from {path} ({exc}); give directories "
            "written by save_pretrained (tokenizer.json, tokenizer_config.json)"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise StageInputError(f"tokenizer eval: {path} holds no fast tokenizer (tokenizer.json)")
    return tokenizer


def documents(
    files: Sequence[Path], text_field: str, text_mode: str, max_docs: int | None
) -> Iterator[str]:
    texts = itertools.chain.from_iterable(
        iter_texts(f, text_field=text_field, text_mode=text_mode) for f in files
    )
    return itertools.islice(texts, max_docs)


def evaluate(
    dirs: Sequence[str | Path],
    corpus: Sequence[str],
    *,
    text_field: str = "text",
    text_mode: str = "file",
    max_docs: int | None = None,
) -> list[dict]:
    """One row of measures per tokenizer directory, on the same documents."""
    files = expand_paths(corpus, key="--corpus")
    tokenizers = [(Path(d), load(d)) for d in dirs]  # every directory checked before measuring
    rows = []
    for path, tokenizer in tokenizers:
        texts = documents(files, text_field, text_mode, max_docs)
        measures = measure(tokenizer.backend_tokenizer, texts, tokenizer.unk_token_id)
        if measures["documents"] == 0:
            raise InputDataError(
                f"--corpus: no text in {describe_files(files)}; check the files and "
                f"--text-field ({text_field!r})"
            )
        report = _report(path)
        model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["type"]
        rows.append(
            {
                "tokenizer": str(path),
                "model": model,
                "backend": report.get("backend", ""),
                "vocab_size": len(tokenizer),
                **measures,
            }
        )
    return rows


def _report(path: Path) -> dict:
    try:
        return json.loads((path / "report.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


COLUMNS = [
    ("tokenizer", "tokenizer", "{}"),
    ("model", "model", "{}"),
    ("backend", "backend", "{}"),
    ("vocab", "vocab_size", "{}"),
    ("bytes/token", "bytes_per_token", "{:.3f}"),
    ("chars/token", "chars_per_token", "{:.3f}"),
    ("tokens/word", "tokens_per_word", "{:.3f}"),
    ("unk rate", "unknown_rate", "{:.2e}"),
    ("round trip", "round_trip", "{}"),
]


def format_table(rows: list[dict]) -> str:
    """A Markdown table, one tokenizer per row."""

    def cell(row: dict, key: str, fmt: str) -> str:
        if key == "round_trip":
            failures = row["round_trip_failures"]
            return "exact" if failures == 0 else f"{failures}/{row['documents']} differ"
        value = row.get(key)
        return "-" if value is None or value == "" else fmt.format(value)

    header = "| " + " | ".join(title for title, _, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, key, fmt) for _, key, fmt in COLUMNS) + " |")
    if rows:
        first = rows[0]
        lines.append(
            f"\n{first['documents']} documents, {first['bytes']} bytes, {first['words']} words"
        )
    return "\n".join(lines)


def write_json(path: str | Path, rows: list[dict]) -> None:
    atomic_write_json(path, rows)
