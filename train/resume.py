"""What a `--resume` may change, and making the changes take effect.

A resume continues the saved model, optimizer moments and data position; the recipe it
continues with may differ from the run's config.yaml only in the settings of `RESUMABLE`
(learning rate and schedule, length, clipping, cadence). Anything else (model shape, seq_len,
batch sizes, objective, data, seed, ...) would not apply to what was saved, so it is refused
with a message naming it. An accepted change is recorded in metrics.jsonl (a `resumed` record
at the checkpoint's step) and at the top of config.yaml (a comment), and applies from the next
step: `apply_peak_lrs` puts the new peak learning rates into the optimizer and scheduler that
the checkpoint just overwrote (the schedule's shape comes from the new settings already).
"""

from __future__ import annotations

from typing import Any

import yaml

from llmtrain.errors import RecipeError

RESUMABLE = frozenset(
    {
        "lr",
        "muon_lr",
        "schedule",
        "warmup_steps",
        "warmup_ratio",
        "min_lr_ratio",
        "decay_steps",
        "steps",
        "max_steps",
        "epochs",
        "grad_clip",
        "max_nonfinite_steps",
        "resume_on_changed_data",
        "log_every",
        "eval_every",
        "eval_batches",
        "save_every",
        "keep_last",
        "compile",
        "liger",
        "activation_checkpointing",
        "peak_tflops",
    }
)
"""Keys of a training stage's own section that a resume may change."""

HISTORY_PREFIX = "# resumed at step "


def resume_changes(old_yaml: str, new_yaml: str, sections: tuple[str, ...]) -> dict[str, Any]:
    """{"<section>.<key>": (old, new)} for every setting of `sections` (and the recipe's seed)
    that differs between the run's config.yaml and the recipe it resumes with. A key only one
    of them has (a setting added or removed by another llmtrain version) is not a change."""
    old, new = yaml.safe_load(old_yaml) or {}, yaml.safe_load(new_yaml) or {}
    changes: dict[str, Any] = {}
    if old.get("seed") != new.get("seed"):
        changes["seed"] = (old.get("seed"), new.get("seed"))
    for name in sections:
        before, after = old.get(name) or {}, new.get(name) or {}
        for key in sorted(set(before) & set(after)):
            if before[key] != after[key]:
                changes[f"{name}.{key}"] = (before.get(key), after.get(key))
    return changes


def check_resume_changes(changes: dict[str, Any], stage: str) -> None:
    """Refuse changes a resume cannot apply, naming each."""
    refused = [
        key
        for key in changes
        if not key.startswith(f"{stage}.") or key.split(".", 1)[1] not in RESUMABLE
    ]
    if not refused:
        return
    named = "; ".join(f"{key} {changes[key][0]!r} -> {changes[key][1]!r}" for key in refused)
    raise RecipeError(
        f"--resume: the recipe changed settings a resume cannot apply to the saved model, "
        f"optimizer and data position ({named}); set them back, or start a new run with "
        f"--overwrite. A resume may change {stage}.lr, the schedule, the number of steps, "
        "grad_clip and the log/eval/save cadence (docs/recipes.md#resume)"
    )


def history_comment(step: int, changes: dict[str, Any]) -> str:
    """The config.yaml comment line recording an accepted change."""
    named = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
    return f"{HISTORY_PREFIX}{step}, applying from step {step + 1}: {named}\n"


def previous_history(config_yaml: str) -> str:
    """The `# resumed at step ...` lines of a config.yaml, kept across resumes."""
    return "".join(
        line + "\n" for line in config_yaml.splitlines() if line.startswith(HISTORY_PREFIX)
    )


def apply_peak_lrs(optimizer: Any, scheduler: Any, peaks: list[float]) -> None:
    """Make the recipe's peak learning rates (one per parameter group) take effect after a
    checkpoint overwrote the optimizer's and the LambdaLR's: the lr of every group becomes
    peak x the (new) schedule's multiplier at the resumed step."""
    import warnings

    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper
    scheduler.base_lrs = list(peaks)
    for group, peak in zip(optimizer.param_groups, peaks, strict=True):
        group["initial_lr"] = peak
    scheduler.last_epoch -= 1  # step() again to the resumed step: lr = peak x multiplier
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "step() before optimizer.step()"
        scheduler.step()
