"""The stage registry: what a pipeline stage is, declared once by the stage's own package.

Each stage package declares its stages in the light `cli.py` that also registers its command:

    STAGES = (
        Stage(
            name="dpo",
            section=DPOSection,
            command=("align", "--method", "dpo"),
            reads={"model": "sft"},
            produces="causal_lm",
            curves=("loss", "rewards/margins"),
            entry="llmtrain.train.align.dpo:run_dpo",
        ),
    )

The core (recipe, CLI, `run`, `report`, `eval`) iterates `registry()` and imports nothing else
of a stage. `llmtrain.cli.STAGE_COMMANDS` is the one list of such modules; the order of their
stages is the order `llmtrain run` runs them in.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Produces = Literal["tokenizer", "data", "causal_lm", "reward_model", "eval"]


@dataclass(frozen=True)
class Stage:
    """One kind of stage. A recipe has at most one section of each kind under the kind's name,
    and any number of further instances under `stages:` (see `llmtrain.recipe`)."""

    name: str
    """The kind's name: its recipe section, its output directory <output_dir>/<name>."""
    section: type
    """The `Section` class of its recipe section."""
    command: tuple[str, ...]
    """`llmtrain` arguments that run it before the recipe path (e.g. ("align", "--method",
    "dpo")); `--stage NAME` selects an instance."""
    reads: Mapping[str, str | None] = field(default_factory=dict)
    """Input role -> the stage whose output it reads by default (None: an optional role, read
    only when an instance's `inputs:` names a stage). An instance may name any stage that
    produces the same kind of output; a change upstream reruns the stage."""
    extra_sections: Mapping[str, type] = field(default_factory=dict)
    """Recipe sections besides its own that it brings to the recipe and that shape its output
    (pretrain: {"model": ModelSection})."""
    produces: Produces = "causal_lm"
    """What its output directory holds; `causal_lm` and `reward_model` in `final/`."""
    curves: tuple[str, ...] = ()
    """The metrics the report draws first for it (every other numeric metric follows)."""
    entry: str | None = None
    """"module:function" called with (recipe, args) by a command shared among stages
    (`llmtrain align --method NAME`); other stages' commands call their code themselves."""
    repeatable: bool = True
    """Whether a recipe may hold further instances of it under `stages:`."""

    @property
    def training(self) -> bool:
        """A stage that trains a model writes a run directory with checkpoints: an interrupted
        run resumes (`--resume`) and torchrun launches it on several processes."""
        return self.produces in ("causal_lm", "reward_model")

    def shell_command(self, instance: str | None = None) -> str:
        """How a user runs it, for messages."""
        words = ["llmtrain", *self.command, "RECIPE"]
        if instance and instance != self.name:
            words += ["--stage", instance]
        return " ".join(words)


@functools.cache
def registry() -> dict[str, Stage]:
    """Every registered stage kind by name, in pipeline order."""
    from llmtrain.cli import stage_command_modules

    kinds: dict[str, Stage] = {}
    for module in stage_command_modules():
        for stage in getattr(module, "STAGES", ()):
            if stage.name in kinds:
                raise ValueError(f"stage {stage.name!r} is registered twice ({module.__name__})")
            kinds[stage.name] = stage
    return kinds


def stage_kind(name: str) -> Stage:
    kinds = registry()
    if name not in kinds:
        raise KeyError(f"unknown stage kind {name!r}; kinds are: {', '.join(kinds)}")
    return kinds[name]
