"""The recipe: one YAML file that describes a pipeline, loaded and validated before any work.

    recipe = load_recipe("recipes/tiny.yaml", overrides=["pretrain.steps=10"])

Loading reads the file (and the files it `extends`, deep-merged, child wins, lists replaced),
applies `--set KEY=VALUE` overrides with YAML typing, then validates every section. A problem
is reported as a `RecipeError` naming the key path (`pretrain.lr_shedule: unknown key; did you
mean lr_schedule?`), never as a traceback from inside a stage.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_serializer,
    model_validator,
)

from llmtrain.errors import RecipeError
from llmtrain.schema import OutputPath, Section, SourcedStr, missing_inputs, tag_strings
from llmtrain.stages import Stage, registry
from llmtrain.tracking import LoggingSection

INSTANCE_NAME = re.compile(r"[a-z][a-z0-9_]*")
INSTANCE_KEYS = ("kind", "inputs")
"""Keys of a `stages:` entry that are not its kind's section keys."""


@dataclass(frozen=True)
class StageInstance:
    """A further stage of a registered kind, declared under the recipe's `stages:`."""

    name: str
    kind: Stage
    section: Any
    inputs: dict[str, str]
    """Input role -> stage name, as written (roles left out read the kind's defaults)."""


class RecipeBase(Section):
    """A whole pipeline. Each command reads the sections it needs; absent sections are None.

    One optional section per registered stage kind (`llmtrain.stages.registry()`), under the
    kind's name, plus further instances of a kind under `stages:`:

        stages:
          sft_math: {kind: sft, inputs: {model: sft}, data: [{path: math.jsonl}]}
    """

    name: str
    """Name of the pipeline; used for run names in trackers."""
    output_dir: OutputPath
    """Root of all outputs: each stage writes <output_dir>/<stage>/."""
    seed: int = 1234
    """Seed for every random choice (sampling, shuffling, initialisation, masking)."""
    license: str | None = None
    """Licence of the trained models, as a Hugging Face licence id (e.g. apache-2.0, mit,
    cc-by-4.0, other): the `license` of the model card every final/ gets; null: not stated."""
    logging: LoggingSection = LoggingSection()

    _source: Path | None = PrivateAttr(default=None)
    _instances: dict[str, StageInstance] = PrivateAttr(default_factory=dict)
    _view: tuple[str, str] | None = PrivateAttr(default=None)
    """(kind, instance name) when this recipe is `for_stage(instance)`."""

    @model_validator(mode="after")
    def _validate_instances(self) -> RecipeBase:
        self._instances = {
            name: _validate_instance(self, name, body) for name, body in self.stages.items()
        }
        for name in self._instances:
            _check_acyclic(self, name, ())
        return self

    @field_serializer("stages", check_fields=False)
    def _dump_instances(self, stages: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        out = {}
        for name, instance in self._instances.items():
            out[name] = {
                "kind": instance.kind.name,
                "inputs": dict(instance.inputs),
                **instance.section.model_dump(mode="json"),
            }
        return out

    @property
    def source(self) -> Path | None:
        """The recipe file this was loaded from (None when built in code)."""
        return self._source

    # -- stages --------------------------------------------------------------------------------

    def stage_names(self) -> list[str]:
        """Every stage the recipe has (sections and instances), in the order they run: the
        registry's order, each instance right after its kind, never before what it reads."""
        kinds = list(registry())
        present = [k for k in kinds if getattr(self, k, None) is not None]
        present += list(self._instances)
        rank = {
            name: (kinds.index(self.stage_kind(name).name), i) for i, name in enumerate(present)
        }
        order: list[str] = []
        waiting = sorted(present, key=rank.__getitem__)
        while waiting:
            ready = next(
                n
                for n in waiting
                if all(u in order or u not in present for u in self.stage_inputs(n).values())
            )
            order.append(ready)
            waiting.remove(ready)
        return order

    def stage_kind(self, name: str) -> Stage:
        """The kind of a stage name (a kind's own section or an instance)."""
        if name in self._instances:
            return self._instances[name].kind
        kinds = registry()
        if name in kinds:
            return kinds[name]
        raise RecipeError(f"unknown stage {name!r}; stages are: {', '.join(self.known_stages())}")

    def known_stages(self) -> list[str]:
        return [*registry(), *self._instances]

    def instance_names(self) -> list[str]:
        """The names declared under `stages:`, in recipe order."""
        return list(self._instances)

    def stage_inputs(self, name: str) -> dict[str, str]:
        """Input role -> the stage it reads (defaults filled in; optional roles left out)."""
        kind = self.stage_kind(name)
        given = self._instances[name].inputs if name in self._instances else {}
        reads = {role: stage for role, stage in kind.reads.items() if stage is not None}
        return {**reads, **given}

    def input_stage(self, kind: str, role: str) -> str | None:
        """The stage a stage of `kind` reads for `role` (in `for_stage(name)`, the instance's
        input), or None for an optional role that is not given."""
        name = self._view[1] if self._view and self._view[0] == kind else kind
        return self.stage_inputs(name).get(role)

    def input_dir(self, kind: str, role: str) -> Path | None:
        """The output directory of `input_stage(kind, role)`."""
        stage = self.input_stage(kind, role)
        return None if stage is None else self.output_dir / stage

    def for_stage(self, name: str) -> Recipe:
        """This recipe as the stage `name` sees it: for an instance, its kind's section is the
        instance's settings and its kind's directory is the instance's."""
        if name not in self._instances:
            self.stage_kind(name)  # an unknown name is an error
            return self  # type: ignore[return-value]
        instance = self._instances[name]
        view = self.model_copy(update={instance.kind.name: instance.section})
        view._source = self._source
        view._instances = self._instances
        view._view = (instance.kind.name, name)
        return view  # type: ignore[return-value]

    def stage_dir(self, stage: str) -> Path:
        """The directory a stage writes: <output_dir>/<stage> (in a view, the instance's)."""
        if self._view and stage == self._view[0]:
            return self.output_dir / self._view[1]
        if stage not in registry() and stage not in self._instances:
            raise ValueError(f"unknown stage {stage!r}")
        return self.output_dir / stage

    def section(self, name: str) -> Any:
        """The section a stage needs, or a RecipeError saying it is missing."""
        value = getattr(self, name)
        if value is None:
            where = f" ({self._source})" if self._source else ""
            raise RecipeError(
                f"the recipe{where} has no `{name}` section, which this stage needs; "
                f"add one (see docs/recipes.md#{name})"
            )
        return value

    def check_inputs(self, *sections: str) -> None:
        """Raise a RecipeError listing every input file of these sections (or stage instances)
        that does not exist."""
        problems = []
        for name in sections:
            if name in self._instances:
                problems.extend(missing_inputs(self._instances[name].section, f"stages.{name}"))
                continue
            value = getattr(self, name)
            if isinstance(value, BaseModel):
                problems.extend(missing_inputs(value, name))
        if problems:
            where = f"{self._source}: " if self._source else ""
            if len(problems) == 1:
                raise RecipeError(where + problems[0])
            raise RecipeError(
                f"{where}{len(problems)} input files are missing:\n  " + "\n  ".join(problems)
            )

    def to_yaml(self) -> str:
        """The fully resolved recipe (defaults filled in, paths absolute) as YAML."""
        return dump_yaml(self.model_dump(mode="json"))

    def fingerprint(self, *sections: str) -> str:
        """sha256 of the resolved settings of the named sections or stage instances (all when
        none named)."""
        data = self.model_dump(mode="json")
        if sections:
            data = {
                name: data["stages"][name] if name in self._instances else data[name]
                for name in sections
            }
        return hashlib.sha256(dump_yaml(data).encode()).hexdigest()


def _validate_instance(recipe: RecipeBase, name: str, body: Any) -> StageInstance:
    where = f"stages.{name}"
    kinds = registry()
    if not INSTANCE_NAME.fullmatch(name) or name in type(recipe).model_fields:
        taken = " (that name is taken by a section)" if name in type(recipe).model_fields else ""
        raise ValueError(
            f"{where}: a stage name is lower-case letters, digits and _, not a section's name"
            f"{taken}; e.g. {next(iter(kinds))}_2"
        )
    if not isinstance(body, dict) or "kind" not in body:
        raise ValueError(f"{where}: expected a mapping with `kind:` (one of {', '.join(kinds)})")
    kind_name = str(body["kind"])
    repeatable = [k for k, stage in kinds.items() if stage.repeatable]
    if kind_name not in repeatable:
        raise ValueError(
            f"{where}.kind: expected one of {', '.join(repeatable)}, got {kind_name!r}"
        )
    kind = kinds[kind_name]
    inputs = body.get("inputs") or {}
    if not isinstance(inputs, dict):
        raise ValueError(f"{where}.inputs: expected a mapping of role to stage name")
    for role, stage in inputs.items():
        if role not in kind.reads:
            roles = ", ".join(kind.reads) or "none"
            raise ValueError(
                f"{where}.inputs.{role}: {kind_name} reads no {role!r} (roles: {roles})"
            )
        _check_input(recipe, where, kind, str(role), str(stage))
    settings = {key: value for key, value in body.items() if key not in INSTANCE_KEYS}
    try:
        section = kind.section.model_validate(settings)
    except ValidationError as exc:
        problems = [f"{where}.{format_error(err, kind.section)}" for err in exc.errors()]
        raise ValueError("; ".join(problems)) from None
    return StageInstance(name, kind, section, {str(r): str(s) for r, s in inputs.items()})


def _check_input(recipe: RecipeBase, where: str, kind: Stage, role: str, stage: str) -> None:
    kinds = registry()
    declared = recipe.stages.get(stage)
    if isinstance(declared, dict) and str(declared.get("kind")) in kinds:
        produces = kinds[str(declared["kind"])].produces
    elif stage in kinds and getattr(recipe, stage, None) is not None:
        produces = kinds[stage].produces
    else:
        raise ValueError(
            f"{where}.inputs.{role}: no stage {stage!r} in this recipe; name a section or an "
            "entry of `stages:`"
        )
    default = kind.reads[role]
    wanted = kinds[default].produces if default else None
    if wanted and produces != wanted:
        raise ValueError(
            f"{where}.inputs.{role}: {stage!r} writes {produces}, but {role} needs {wanted}"
        )


def _check_acyclic(recipe: RecipeBase, name: str, chain: tuple[str, ...]) -> None:
    if name in chain:
        raise ValueError(f"stages: {' -> '.join((*chain, name))} read from each other in a cycle")
    if name in recipe._instances:
        for stage in recipe._instances[name].inputs.values():
            _check_acyclic(recipe, stage, (*chain, name))


def _recipe_class() -> type[RecipeBase]:
    """RecipeBase with one optional section per registered stage kind (and the sections the
    kinds bring: pretrain's `model`)."""
    fields: dict[str, Any] = {}
    for stage in registry().values():
        for name, section in {**stage.extra_sections, stage.name: stage.section}.items():
            fields[name] = (section | None, None)
    stages = Field(
        default={},
        description="Further stages: name -> {kind: a stage kind, inputs: {role: stage name}, "
        "and the keys of that kind's section}. Each runs after the stages it reads from.",
    )
    fields["stages"] = (dict[str, dict[str, Any]], stages)
    return create_model("Recipe", __base__=RecipeBase, __module__=__name__, **fields)


Recipe = _recipe_class()


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


# ---------------------------------------------------------------------------------------------
# Loading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *base` merges; the mapping's own keys win over merged ones
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise RecipeError(
                f"{mark.name}:{mark.line + 1}: key {key!r} appears twice in the same mapping; "
                "keep one"
            )
        seen.add(key)
    loader.flatten_mapping(node)  # merged pairs first, so later (own) keys overwrite them
    mapping: dict = {}
    for key_node, value_node in node.value:
        mapping[loader.construct_object(key_node, deep=deep)] = loader.construct_object(
            value_node, deep=deep
        )
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml_file(path: Path) -> dict:
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc})") from exc
    try:
        stream = io.StringIO(text)
        stream.name = str(path)  # so YAML marks name the file
        loader = _StrictLoader(stream)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expansion(node, path)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise RecipeError(f"{where}: invalid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    return data


MAX_RECIPE_VALUES = 100_000
"""A recipe expands (aliases resolved) to at most this many YAML nodes: a few nested aliases
can otherwise stand for billions of values (the "billion laughs")."""


def _check_expansion(root: yaml.Node, path: Path) -> None:
    """Refuse a recursive alias (an anchor inside itself) and a recipe whose aliases expand
    past MAX_RECIPE_VALUES, before anything is built from it."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            mark = node.start_mark
            raise RecipeError(
                f"{path}:{mark.line + 1}: this anchor is used inside itself (a recursive "
                "alias); a recipe must be a tree, so copy the values instead"
            )
        open_nodes.add(id(node))
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(key) + size(value) for key, value in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        open_nodes.discard(id(node))
        if total > MAX_RECIPE_VALUES:
            raise RecipeError(
                f"{path}: the recipe expands to more than {MAX_RECIPE_VALUES:,} values once its "
                "aliases are resolved (nested `*alias` lists?); a recipe is a few hundred keys"
            )
        sizes[id(node)] = total
        return total

    size(root)


def deep_merge(base: dict, child: dict) -> dict:
    """Merge `child` over `base`: mappings merge key by key, anything else (lists too) replaces."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_raw(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The recipe at `path` with its `extends` chain merged in; strings tagged with their folder."""
    path = Path(path).expanduser().resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise RecipeError(f"`extends` forms a cycle: {cycle}")
    data = tag_strings(_read_yaml_file(path), path.parent)
    parents = data.pop("extends", None)
    if parents is None:
        return data
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise RecipeError(f"{path}: extends: expected a file name or a list of them")
    merged: dict = {}
    for parent in parents:
        parent_path = path.parent / Path(parent).expanduser()
        if not parent_path.is_file():
            raise RecipeError(f"{path}: extends: file not found: {parent_path.resolve()}")
        merged = deep_merge(merged, load_raw(parent_path, (*_chain, path)))
    return deep_merge(merged, data)


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `--set a.b.c=value` to `raw` in place; the value is parsed as YAML."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"--set {assignment!r}: expected KEY=VALUE, e.g. pretrain.lr=3e-4")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {key}: the value {text!r} is not valid YAML ({exc})") from exc
    value = tag_strings(value, Path.cwd())
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(
                    f"--set {key}: {where}: expected a list index below {len(node)}, got {part!r}"
                )
            index = int(part)
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if last:
            node[part] = value
            continue
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict | list):
            raise RecipeError(
                f"--set {key}: {where} is a value, not a section; it has no {parts[depth + 1]}"
            )
        node = node[part]


def load_recipe(path: str | Path, overrides: typing.Iterable[str] = ()) -> Recipe:
    """Read, merge, override and validate a recipe. Raises RecipeError on any problem."""
    raw = load_raw(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    recipe = validate_recipe(raw, source=Path(path))
    return recipe


def validate_recipe(raw: dict, source: Path | None = None) -> Recipe:
    """Validate a raw recipe mapping; every problem is reported with its key path."""
    recipe = validate_section(Recipe, raw, source=source)
    recipe._source = Path(source).resolve() if source else None
    return recipe


SectionT = typing.TypeVar("SectionT", bound=BaseModel)


def validate_section(model: type[SectionT], raw: Any, source: Path | str | None = None) -> SectionT:
    """Validate `raw` as `model`, turning pydantic's errors into one RecipeError."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        where = f"{source}: " if source else ""
        problems = [format_error(err, model) for err in exc.errors()]
        if len(problems) == 1:
            raise RecipeError(where + problems[0]) from None
        listing = "\n  ".join(problems)
        raise RecipeError(f"{where}{len(problems)} problems in the recipe:\n  {listing}") from None


# ---------------------------------------------------------------------------------------------
# Error messages


def format_loc(loc: typing.Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_EXPECTED = {
    "float_type": "a number",
    "float_parsing": "a number",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "path_type": "a path",
}


def format_error(err: dict, model: type[BaseModel]) -> str:
    """One pydantic error of validating `model`, as `key.path: what is wrong`."""
    loc = [part for part in err["loc"] if not _is_pydantic_tag(part)]
    path = format_loc(loc)
    return f"{path}: {_describe(err, model, loc)}" if path else _describe(err, model, loc)


def _describe(err: dict, model: type[BaseModel], loc: list[str | int]) -> str:
    kind = err["type"]
    value = err.get("input")
    if isinstance(value, SourcedStr):
        value = str(value)
    if kind == "extra_forbidden":
        return f"unknown key; {_suggest(model, loc)}"
    if kind == "missing":
        return "required key is missing"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {value!r}"
    if kind in ("literal_error", "enum"):
        return f"expected one of {err['ctx']['expected']}, got {value!r}"
    message = err["msg"]
    if kind in ("value_error", "assertion_error"):
        return message.split(", ", 1)[1] if ", " in message else message
    if message.startswith("Input should be "):
        return f"expected {message.removeprefix('Input should be ')}, got {value!r}"
    return f"{message} (got {value!r})"


def _is_pydantic_tag(part: str | int) -> bool:
    # pydantic puts the branch of a union ("function-after[...]", a class name) into the loc
    return isinstance(part, str) and ("[" in part or part[:1].isupper())


def _suggest(model: type[BaseModel], loc: list[str | int]) -> str:
    key = str(loc[-1])
    fields = _fields_at(model, loc[:-1])
    if not fields:
        return "remove it"
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    return "valid keys: " + ", ".join(sorted(fields))


def _fields_at(model: type[BaseModel], loc: list[str | int]) -> list[str]:
    """Field names of the section at `loc`, following the annotations of `model`."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(part, int):
            args = typing.get_args(annotation)
            annotation = args[0] if args else None
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            annotation = field.annotation if field else None
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated wrappers down to the one model or container inside."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation
