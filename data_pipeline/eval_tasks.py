"""lm-evaluation-harness tasks as decontamination sources (data.decontamination.tasks).

Each named task (or group, or tag: all its tasks) is loaded with lm-eval's TaskManager; each
document the harness evaluates (`Task.eval_docs`) gives one eval item: its prompt
(`doc_to_text`), its answer (`doc_to_target`) and, for multiple-choice tasks, every choice
(`doc_to_choice`), one per line. The datasets must load offline (the Hugging Face cache, or
local files such as `dataset_path: json` with `dataset_kwargs.data_files`); a task that cannot
load stops the build with one message naming it and what it needs.

Names found under `include_path` alone are loaded from an index of that directory only,
which saves indexing lm-eval's ~15,000 task files (seconds).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llmtrain.errors import RecipeError

log = logging.getLogger("llmtrain.data")

KEY = "data.decontamination.tasks"
LOCAL_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow", "pandas"})
"""datasets' builders of local files: their data cannot be downloaded, only pointed at."""


def _task_manager(names: list[str], include_path: Path | None) -> Any:
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise RecipeError(
            f"{KEY} needs lm-evaluation-harness; install it with `pip install "
            "'llmtrain[eval]'`, or give the eval text as data.decontamination.eval_files"
        ) from None
    if include_path is not None:
        custom = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(name in custom.task_index for name in names):
            return custom
    manager = TaskManager(include_path=None if include_path is None else str(include_path))
    unknown = [name for name in names if name not in manager.task_index]
    if unknown:
        raise RecipeError(
            f"{KEY}: {', '.join(map(repr, unknown))} is not an lm-eval task, group or tag "
            "(`lm_eval ls tasks` lists them); check the name, or set "
            "data.decontamination.include_path to the directory of its yaml file"
        )
    return manager


def _dataset_of(manager: Any, name: str) -> tuple[str, ...]:
    """(dataset_path[, dataset_name]) of a task's config, for messages; () when it names none
    (a group, a Python task)."""
    entry = manager.task_index.get(name)
    config = getattr(entry, "cfg", None) or {}
    path, subset = config.get("dataset_path"), config.get("dataset_name")
    if not path:
        return ()
    return (str(path), str(subset)) if subset else (str(path),)


def _load(manager: Any, name: str) -> dict[str, Any]:
    """{task name: Task} of one requested name; a RecipeError naming it when it cannot load."""
    try:
        return manager.load(name)["tasks"]
    except Exception as exc:  # datasets' offline, missing-file and hub errors differ in type
        dataset = _dataset_of(manager, name)
        if dataset and dataset[0] in LOCAL_BUILDERS:
            what = f"the files of its dataset ({dataset[0]}, dataset_kwargs.data_files)"
            fix = "check the data_files of its yaml"
        elif dataset:
            subset = f" (config {dataset[1]})" if len(dataset) > 1 else ""
            what = f"its dataset {dataset[0]}{subset}"
            arguments = ", ".join(map(repr, dataset))
            fix = (
                f'download it once with `python -c "import datasets; datasets.load_dataset('
                f'{arguments})"` on a machine with network access, into the Hugging Face '
                "cache this build reads (HF_HOME)"
            )
        else:
            what = "its datasets"
            fix = f"run `lm_eval --tasks {name} ...` once on a machine with network access"
        lines = str(exc).strip().splitlines()
        raise RecipeError(
            f"{KEY}: {name} needs {what}, which could not be loaded ({type(exc).__name__}: "
            f"{lines[0] if lines else ''}); {fix}, or give the eval text as "
            "data.decontamination.eval_files"
        ) from None


def _strings(value: Any, choices: list[str] | None) -> list[str]:
    """A prompt or target as text: a string, an index into the choices, or a list of them."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, int) and choices is not None and 0 <= value < len(choices):
        return [str(choices[value])]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item, choices)]
    return []


def doc_text(task: Any, doc: Any) -> str:
    """One eval item: the document's prompt, answer and (multiple choice) every choice."""
    choices = None
    if task.OUTPUT_TYPE == "multiple_choice":
        choices = [str(c) for c in task.doc_to_choice(doc)]
    parts = _strings(task.doc_to_text(doc), choices) + _strings(task.doc_to_target(doc), choices)
    parts += choices or []
    return "\n".join(dict.fromkeys(p for p in parts if p.strip()))


def task_items(names: list[str], include_path: Path | None) -> list[tuple[str, list[str]]]:
    """(name, eval items) of each named task, group or tag, in the order given."""
    if not names:
        return []
    manager = _task_manager(names, include_path)
    out = []
    for name in names:
        items = [
            doc_text(task, doc) for task in _load(manager, name).values() for doc in task.eval_docs
        ]
        log.info("decontamination: lm-eval %s: %d documents", name, len(items))
        out.append((name, items))
    return out
