"""Metrics fan-out: metrics.jsonl always; wandb and TensorBoard when the recipe asks.

Only the main process (rank 0) writes anything. wandb runs offline unless the user configured
an API key (WANDB_API_KEY or `wandb login`), set `mode: online`, or set WANDB_MODE.
"""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
from pathlib import Path
from typing import Any, Literal

from llmtrain.rundir import MetricsLog, RunDir
from llmtrain.schema import Section

log = logging.getLogger(__name__)


class WandbSection(Section):
    project: str
    """wandb project name."""
    entity: str | None = None
    """wandb team or user; default: the logged-in user."""
    name: str | None = None
    """Run name; default: <recipe name>-<stage>."""
    tags: list[str] = []
    mode: Literal["online", "offline", "disabled"] | None = None
    """None: the WANDB_MODE environment variable if set, else online when an API key is
    configured, else offline (sync later with `wandb sync`)."""


class LoggingSection(Section):
    wandb: WandbSection | None = None
    """Log to Weights & Biases as well as metrics.jsonl."""
    tensorboard: bool = False
    """Also write TensorBoard event files to <run dir>/tensorboard."""


def wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class Tracker:
    """Log a step's metrics everywhere the recipe asks; a no-op on non-main processes."""

    def __init__(
        self,
        run_dir: RunDir,
        logging_section: LoggingSection,
        *,
        run_name: str,
        config: dict[str, Any],
        is_main: bool = True,
        resume_step: int | None = None,
    ):
        self.is_main = is_main
        self.metrics = MetricsLog(run_dir.metrics_path, enabled=is_main)
        self._wandb = None
        self._tensorboard = None
        if not is_main:
            return
        if resume_step is not None:
            self.metrics.truncate_after(resume_step)
        if logging_section.wandb is not None:
            self._wandb = _start_wandb(logging_section.wandb, run_dir.path, run_name, config)
        if logging_section.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(run_dir.path / "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.metrics.log(step, metrics)
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)
        if self._tensorboard is not None:
            for key, value in numbers.items():
                self._tensorboard.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def wandb_mode(section: WandbSection) -> str:
    """The recipe's mode; else WANDB_MODE (wandb.init's `mode=` would override it); else online
    when an API key is configured, offline when not."""
    if section.mode is not None:
        return section.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if wandb_key_configured() else "offline"


def _start_wandb(section: WandbSection, run_path: Path, run_name: str, config: dict) -> Any:
    import wandb

    mode = wandb_mode(section)
    log.info("wandb: project %s, mode %s", section.project, mode)
    return wandb.init(
        project=section.project,
        entity=section.entity,
        name=section.name or run_name,
        tags=section.tags,
        mode=mode,
        dir=str(run_path),
        config=config,
        resume="allow",
        id=_stable_run_id(run_path),
    )


def _stable_run_id(run_path: Path) -> str:
    """The same wandb run id for the same run directory, so a resumed run continues its curve."""
    return hashlib.sha1(str(run_path.resolve()).encode()).hexdigest()[:16]
