"""Building blocks for recipe sections: the strict base model and path types.

Every section of the recipe is a `Section` (unknown keys are errors). Paths in a recipe are
relative to the folder of the recipe file that wrote them (a `--set` value: to the current
directory); the loader tags each string with that folder (`SourcedStr`), and the path types
below resolve against it. Input paths are checked for existence by `missing_inputs` when the
stage that reads them starts.
"""

from __future__ import annotations

import glob
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationInfo,
    field_validator,
)


class Section(BaseModel):
    """Base of every recipe section: unknown keys are rejected, field docstrings document,
    numbers are finite (`lr: .inf` is an error) and a boolean is not a number (`steps: true`
    would otherwise be 1)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            if not _admits(annotation, (bool,)) and _admits(annotation, (int, float)):
                kind = "a number" if _admits(annotation, (float,)) else "an integer"
                raise ValueError(f"expected {kind}, got {str(value).lower()}")
        return value


def _admits(annotation: Any, types_: tuple[type, ...]) -> bool:
    """Whether a field annotation (unions and Literal/Annotated wrappers included) takes one of
    `types_` (bool is not taken for int)."""
    if annotation in types_:
        return True
    return any(_admits(arg, types_) for arg in typing.get_args(annotation) if arg is not None)


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


class MustExist:
    """Marks a path type whose file must exist when the stage that reads it starts."""


def _resolve_pattern(value: Any) -> str:
    return str(resolve_path(value))


_as_str = PlainSerializer(str, return_type=str, when_used="always")

InputPath = Annotated[Path, BeforeValidator(resolve_path), MustExist(), _as_str]
"""A file or directory the stage reads; it must exist when the stage starts."""

OutputPath = Annotated[Path, BeforeValidator(resolve_path), _as_str]
"""A path resolved against its recipe; it need not exist yet."""

InputGlob = Annotated[str, BeforeValidator(_resolve_pattern), MustExist()]
"""A path or glob pattern (`**` allowed) that must match a file when the stage starts."""


def missing_inputs(section: BaseModel, prefix: str = "") -> list[str]:
    """`key.path: file not found: ...` for every input path of `section` that does not exist.

    Input paths are checked when the stage that reads them starts (and by `config check`), not
    when a recipe is loaded: a recipe written for another machine still loads and shows.
    """
    problems: list[str] = []
    for name, field in type(section).model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        annotation = field.annotation
        if field.metadata:
            annotation = Annotated[(annotation, *field.metadata)]  # type: ignore[misc]
        _check(getattr(section, name), annotation, key, problems)
    return problems


def _check(value: Any, annotation: Any, key: str, problems: list[str]) -> None:
    if value is None:
        return
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = typing.get_args(annotation)
        if any(isinstance(m, MustExist) for m in metadata):
            problem = _existence_problem(str(value))
            if problem:
                problems.append(f"{key}: {problem}")
            return
        _check(value, inner, key, problems)
    elif origin in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            if member is not type(None) and _matches(value, member):
                _check(value, member, key, problems)
                return
    elif origin is list and isinstance(value, list):
        (item_type,) = typing.get_args(annotation) or (Any,)
        for index, item in enumerate(value):
            _check(item, item_type, f"{key}[{index}]", problems)
    elif origin is dict and isinstance(value, dict):
        item_type = typing.get_args(annotation)[1]
        for name, item in value.items():
            _check(item, item_type, f"{key}.{name}", problems)
    elif isinstance(value, BaseModel):
        problems.extend(missing_inputs(value, key))


def _matches(value: Any, annotation: Any) -> bool:
    base = (
        typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    )
    origin = typing.get_origin(base) or base
    return isinstance(origin, type) and isinstance(value, origin)


def _existence_problem(pattern: str) -> str | None:
    if glob.has_magic(pattern):
        return None if glob.glob(pattern, recursive=True) else f"no file matches {pattern}"
    return None if Path(pattern).exists() else f"file not found: {pattern}"
