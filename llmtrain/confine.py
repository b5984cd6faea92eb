"""Paths read from a file we wrote (a manifest, a checkpoint, a step record) stay inside the
directory that file describes: an absolute path or a `..` in such a record is an error, never
a read elsewhere."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from llmtrain.errors import StageInputError


def inside(directory: Path, relative: str, where: str) -> Path:
    """`directory / relative`, or StageInputError when `relative` would leave `directory`."""
    parts = PurePosixPath(str(relative)).parts
    if not parts or PurePosixPath(str(relative)).is_absolute() or ".." in parts:
        raise StageInputError(
            f"{where}: the path {relative!r} is not inside {directory}; a record may only name "
            "files in its own directory (rebuild or restore the directory instead of editing it)"
        )
    return directory / Path(*parts)
