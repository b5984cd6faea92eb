"""The non-finite guard of every training stage (our loop shell and the TRL-backed methods).

A step whose loss or gradient is not finite is skipped (the method or the TRL callback leaves
the weights untouched); `NonfiniteSteps` counts such steps and stops the run after
`<stage>.max_nonfinite_steps` in a row; `weights_finite` tells whether a checkpoint or final/
may be written (neither is ever written from weights holding NaN or infinities).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llmtrain.errors import TrainingError

log = logging.getLogger(__name__)


class NonfiniteSteps:
    """Counts skipped steps: `streak` in a row now, `skipped` in the whole run."""

    def __init__(self, stage: str, limit: int, *, is_main: bool = True):
        self.stage = stage
        self.limit = limit
        self.is_main = is_main
        self.streak = 0
        self.skipped = 0

    def count(self, step: int, nonfinite: str | None, last_checkpoint: Path | None) -> None:
        """Record step `step` (1-based): `nonfinite` says what was not finite when it was
        skipped ("the loss is nan"), None for a good step. Raises TrainingError after `limit`
        skipped steps in a row, naming `last_checkpoint` (the last one written from finite
        weights, or None)."""
        if nonfinite is None:
            self.streak = 0
            return
        self.streak += 1
        self.skipped += 1
        stage, limit = self.stage, self.limit
        if self.is_main:
            log.warning("step %d: %s; the step was skipped", step, nonfinite)
        if self.streak >= limit:
            kept = (
                f"the last good checkpoint {last_checkpoint} is intact"
                if last_checkpoint
                else "no checkpoint had been written yet"
            )
            first = step - self.streak + 1
            raise TrainingError(
                f"{stage} stopped: {self.streak} steps in a row ({first}-{step}) "
                f"had a non-finite loss or gradient ({stage}.max_nonfinite_steps is {limit}); "
                f"{kept}. Lower {stage}.lr, keep grad_clip on or use bf16 rather than fp16, "
                "then continue with --resume"
            )


def weights_finite(module: Any, accelerator: Any) -> bool:
    """Whether every weight of every process's share is finite (collective when several
    processes run: every process must call it)."""
    import torch

    bad = 0.0
    for param in module.parameters():
        local = getattr(param, "ds_tensor", param)  # ZeRO-3: this rank's partition
        if hasattr(local, "to_local"):  # FSDP2: a DTensor; this rank's shard
            local = local.to_local()
        if not bool(torch.isfinite(local.detach()).all()):
            bad = 1.0
            break
    flag = torch.tensor([bad], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum")
    return float(flag[0]) == 0.0


def nonfinite_final_error(stage: str, last_checkpoint: Path | None) -> TrainingError:
    """The error when the trained weights are not finite at the end, so final/ is not written."""
    kept = (
        f"the last good checkpoint is {last_checkpoint}"
        if last_checkpoint
        else "no checkpoint was written"
    )
    return TrainingError(
        f"{stage}: the trained weights hold NaN or infinite values, so final/ was "
        f"not written; {kept}. Lower {stage}.lr or keep grad_clip on, then train "
        "again (or continue from the checkpoint with --resume)"
    )


def gradients_nonfinite(module: Any) -> str | None:
    """What is not finite among the gradients of `module` ("the gradient norm is nan"), or
    None when every gradient is finite (or there is none: DeepSpeed keeps its own)."""
    import torch

    grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
    if not grads:
        return None
    norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    )
    if bool(torch.isfinite(norm)):
        return None
    return f"the gradient norm is {float(norm)}"
