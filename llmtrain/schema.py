"""Building blocks for recipe sections: the strict base model and path types.

Every section of the recipe is a `Section` (unknown keys are errors). Paths in a recipe are
relative to the folder of the recipe file that wrote them (a `--set` value: to the current
directory); the loader tags each string with that folder (`SourcedStr`), and the path types
below resolve against it.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer


class Section(BaseModel):
    """Base of every recipe section: unknown keys are rejected, field docstrings document."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class SourcedStr(str):
    """A string read from a recipe file, remembering the folder relative paths start from."""

    base_dir: Path

    def __new__(cls, value: str, base_dir: Path) -> SourcedStr:
        obj = super().__new__(cls, value)
        obj.base_dir = base_dir
        return obj


def tag_strings(value: Any, base_dir: Path) -> Any:
    """Return `value` with every string inside it tagged with `base_dir`."""
    if isinstance(value, str) and not isinstance(value, SourcedStr):
        return SourcedStr(value, base_dir)
    if isinstance(value, dict):
        return {key: tag_strings(item, base_dir) for key, item in value.items()}
    if isinstance(value, list):
        return [tag_strings(item, base_dir) for item in value]
    return value


def resolve_path(value: Any) -> Path:
    """Absolute path for a recipe value: `~` expanded, relative paths against their recipe."""
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str):
        path = Path(os.path.expanduser(value))
    else:
        raise ValueError(f"expected a path, got {value!r}")
    if path.is_absolute():
        return path
    base = getattr(value, "base_dir", None) or Path.cwd()
    return (base / path).resolve()


def _existing_path(value: Any) -> Path:
    path = resolve_path(value)
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    return path


def _glob_pattern(value: Any) -> str:
    pattern = str(resolve_path(value))
    if glob.has_magic(pattern):
        if not glob.glob(pattern, recursive=True):
            raise ValueError(f"no file matches {pattern}")
    elif not Path(pattern).exists():
        raise ValueError(f"file not found: {pattern}")
    return pattern


_as_str = PlainSerializer(str, return_type=str, when_used="always")

InputPath = Annotated[Path, BeforeValidator(_existing_path), _as_str]
"""A file or directory that must exist when the recipe is loaded."""

OutputPath = Annotated[Path, BeforeValidator(resolve_path), _as_str]
"""A path resolved against its recipe; it need not exist yet."""

InputGlob = Annotated[str, BeforeValidator(_glob_pattern)]
"""A path or glob pattern (`**` allowed) that must match at least one file."""
