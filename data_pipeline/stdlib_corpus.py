"""A real corpus present on every machine: Python's standard library, as source and as docs.

Tests, benchmarks and the demo build their corpora from here, since nothing can be downloaded.
`source` documents are whole .py files; `docs` documents are the docstrings of each module
with its classes and functions (read with `ast`, nothing is imported). Add `site-packages`
roots for a larger source corpus (benchmarks need 100 MB; the stdlib alone is about 30 MB).
"""

from __future__ import annotations

import ast
import json
import re
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

Kind = Literal["source", "docs"]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def python_files(roots: Iterable[Path] | None = None) -> list[Path]:
    """Every .py file under the roots (default: the stdlib without site-packages), sorted."""
    files: list[Path] = []
    for root in roots or [stdlib_root()]:
        for path in sorted(Path(root).rglob("*.py")):
            if "site-packages" in path.relative_to(root).parts:
                continue
            files.append(path)
    return files


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _docs_of(source: str, module_name: str) -> str | None:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(f"{module_name}\n\n{doc}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc and not node.name.startswith("_"):
                parts.append(f"{node.name}\n\n{doc}")
    return "\n\n".join(parts) if parts else None


def iter_documents(
    kind: Kind = "source", roots: Iterable[Path] | None = None, max_bytes: int | None = None
) -> Iterator[str]:
    """Documents of the given kind, in a fixed order, until `max_bytes` of UTF-8 text."""
    total = 0
    for path in python_files(roots):
        source = _read(path)
        if not source or not source.strip():
            continue
        text = source if kind == "source" else _docs_of(source, path.stem)
        if not text:
            continue
        total += len(text.encode("utf-8"))
        yield text
        if max_bytes is not None and total >= max_bytes:
            return


def write_jsonl(path: str | Path, documents: Iterable[str], field: str = "text") -> int:
    """Write documents as jsonl records; return how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for text in documents:
            f.write(json.dumps({field: text}, ensure_ascii=False) + "\n")
            count += 1
    return count


def reference_documents(min_words: int = 150) -> list[str]:
    """The Python language reference as it ships with the stdlib (`pydoc_data.topics`, the
    text `help()` shows): each topic's paragraphs grouped, in order, into documents of at
    least `min_words` words (a topic's short tail joins its last document)."""
    from pydoc_data.topics import topics

    documents: list[str] = []
    for name in sorted(topics):
        first = len(documents)
        current: list[str] = []
        words = 0
        for paragraph in re.split(r"\n\s*\n", topics[name].strip()):
            current.append(paragraph)
            words += len(paragraph.split())
            if words >= min_words:
                documents.append("\n\n".join(current))
                current, words = [], 0
        if current and len(documents) > first:
            documents[-1] += "\n\n" + "\n\n".join(current)
    return documents
