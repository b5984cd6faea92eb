"""The run directory every training stage writes (pretrain and each alignment method).

<output_dir>/<stage>/
    config.yaml           the fully resolved recipe
    metrics.jsonl         one JSON object per logged step ({"step": N, ...})
    checkpoints/step-N/   complete checkpoints only (written under a temporary name)
    final/                a Hugging Face model directory, the next stage's input
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmtrain.atomic import atomic_path, atomic_write_text
from llmtrain.errors import RunDirError
from llmtrain.locking import hold_lock

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d+)$")
_LEFTOVER = re.compile(r"^\.(step-\d+|final|config\.yaml|metrics\.jsonl)\.(tmp|tmp-.+|old-\d+)$")
"""Temporaries of checkpoints/step-N, final/ and the run's files (llmtrain.atomic, checkpoint)."""


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoints_dir = self.path / "checkpoints"
        self.final_dir = self.path / "final"

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step}"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as (step, path), oldest first. Temporaries are ignored."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for child in self.checkpoints_dir.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def prune_checkpoints(self, keep_last: int) -> None:
        """Delete all but the newest `keep_last` checkpoints (keep_last <= 0 keeps all)."""
        if keep_last <= 0:
            return
        for _, path in self.checkpoints()[:-keep_last]:
            shutil.rmtree(path, ignore_errors=True)

    def start(
        self,
        config_yaml: str,
        *,
        resume: bool | str | Path | None = None,
        overwrite: bool = False,
        is_main: bool = True,
    ) -> Path | None:
        """Prepare the directory for a run and return the checkpoint to resume from, if any.

        - `overwrite`: delete what is there and start from scratch.
        - `resume=True`: continue from the latest complete checkpoint; a path: from that one.
        - neither: the directory must not already hold checkpoints or a final model.
        Only the main process writes; every process gets the same answer.
        """
        if overwrite and resume:
            raise RunDirError("--resume and --overwrite contradict each other; pass one of them")
        if is_main:
            hold_lock(self.path, "training run")
        if overwrite and is_main and self.path.exists():
            shutil.rmtree(self.path)
        if is_main:
            self.remove_leftovers()
        checkpoint = None
        if resume:
            checkpoint = self._resume_point(resume)
        elif not overwrite:
            self._refuse_existing_run()
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            if checkpoint and self.config_path.is_file():
                if self.config_path.read_text(encoding="utf-8") != config_yaml:
                    log.warning(
                        "the recipe changed since %s was written; resuming with the new one",
                        self.config_path,
                    )
            atomic_write_text(self.config_path, config_yaml)
        return checkpoint

    def remove_leftovers(self) -> None:
        """Delete the temporaries a killed run left (a partial `.step-N.tmp`, `.final.tmp-*`,
        a directory moved aside while replaced); called under the run's lock, so no other
        run is writing them."""
        for folder in (self.path, self.checkpoints_dir):
            if not folder.is_dir():
                continue
            for child in folder.iterdir():
                if _LEFTOVER.match(child.name):
                    log.info("removing %s, left by an interrupted run", child)
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)

    def _resume_point(self, resume: bool | str | Path) -> Path:
        if resume is True:
            latest = self.latest_checkpoint()
            if latest is None:
                raise RunDirError(
                    f"--resume: no complete checkpoint in {self.checkpoints_dir}; "
                    "start without --resume"
                )
            return latest
        path = Path(resume).expanduser().resolve()
        if not path.is_dir() or not _STEP_DIR.match(path.name):
            raise RunDirError(
                f"--resume {resume}: not a checkpoint directory (expected .../checkpoints/step-N); "
                f"complete ones here: {[str(p) for _, p in self.checkpoints()] or 'none'}"
            )
        return path

    def _refuse_existing_run(self) -> None:
        found = self.checkpoints()
        if found or self.final_dir.exists():
            held = f"checkpoints up to step {found[-1][0]}" if found else "a final model"
            raise RunDirError(
                f"{self.path} already holds a run ({held}); pass --resume to continue it "
                "or --overwrite to start again"
            )

    def save_final(self, writer: Any) -> Path:
        """Write final/ atomically: `writer(tmp_dir)` fills a temporary directory; then the KV
        cache is switched on in its configs and the model card (README.md) is written."""
        from llmtrain.model_card import write_model_card

        with atomic_path(self.final_dir) as tmp:
            tmp.mkdir(parents=True)
            writer(tmp)
            enable_kv_cache(tmp)
            write_model_card(tmp, self.path)
        return self.final_dir


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def disk_errors(directory: Path) -> Iterator[None]:
    """A full disk or a directory that cannot be written while a stage writes `directory`
    becomes one RunDirError naming it (not a traceback from deep inside a save)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_SPACE + NOT_WRITABLE:
            raise
        writing = f" (writing {exc.filename})" if exc.filename else ""
        if exc.errno in NO_SPACE:
            raise RunDirError(
                f"{directory}: no space left on its disk{writing}; free space or set output_dir "
                "to a larger disk, then continue with --resume"
            ) from exc
        raise RunDirError(
            f"{directory}: cannot write there ({exc.strerror}){writing}; make it writable or "
            "set output_dir to a writable directory"
        ) from exc


def enable_kv_cache(model_dir: Path) -> None:
    """`use_cache: true` in config.json and generation_config.json: training runs with the
    cache off, but a saved model must generate with it (else transformers re-feeds the whole
    sequence for every new token)."""
    for name in ("config.json", "generation_config.json"):
        path = Path(model_dir) / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        if config.get("use_cache") is not True:
            config["use_cache"] = True
            atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step, appended and flushed as it goes."""

    def __init__(self, path: str | Path, *, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (left by a run killed after its last checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl; a torn last line (killed mid-write) is ignored."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars as plain Python numbers; NaN and infinities as null, so every
    line is strict JSON (a bare NaN is not JSON)."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
