"""How one optimizer step is executed: plain (one process or DDP) or DeepSpeed ZeRO.

Both engines take the same calls from the loop:

    with engine.micro_batch(last=...):     # DDP: no gradient all-reduce until the last one
        outputs = engine.forward(inputs)
        engine.backward(loss)              # loss already normalised by the global target count
    applied, grad_norm = engine.step(skip=not finite)

The plain engine runs on `accelerate` (device placement, DDP, autocast and fp16 loss scaling).
DeepSpeed is initialised directly with `deepspeed.initialize`, not through accelerate's
DeepSpeed plugin: accelerate 1.15 enables its DeepSpeed path only on accelerators (on a CPU-only
machine it treats a torchrun launch as one process), and one code path for GPU and CPU is the
one the tests exercise. accelerate still owns the process group and the collectives.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from llmtrain.errors import RunDirError
from llmtrain.train import checkpoint as ckpt


class PlainEngine:
    """One process or DDP on accelerate; gradients accumulate locally until the last micro-batch."""

    name = "ddp"

    def __init__(
        self, accelerator: Any, model: torch.nn.Module, optimizer: Any, grad_clip: float | None
    ):
        self.accelerator = accelerator
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.grad_clip = grad_clip
        # unwrap once: accelerate's unwrap_model costs milliseconds (package metadata look-ups)
        self.module = accelerator.unwrap_model(self.model, keep_torch_compile=False)
        self.parameters = [p for p in self.module.parameters() if p.requires_grad]

    @property
    def base_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer.optimizer

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)

    def forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        return self.model(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def step(self, skip: bool) -> tuple[bool, float | None]:
        """Clip, step and zero the gradients; `skip` drops this step's gradients instead."""
        max_norm = self.grad_clip if self.grad_clip is not None else math.inf
        grad_norm = float(self.accelerator.clip_grad_norm_(self.parameters, max_norm))
        if self.accelerator.scaler is not None:
            # fp16: the loss scaler skips a step with inf/NaN gradients itself and must see it
            # to lower its scale
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            return not self.accelerator.optimizer_step_was_skipped, grad_norm
        if skip or not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return False, grad_norm
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return not self.accelerator.optimizer_step_was_skipped, grad_norm

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def save(self, directory: Path, is_main: bool) -> None:
        if is_main:
            extra = {}
            if self.accelerator.scaler is not None:
                extra["scaler"] = self.accelerator.scaler.state_dict()
            ckpt.save_model_and_optimizer(directory, self.module, self.base_optimizer, extra)

    def load(self, directory: Path) -> None:
        if not (directory / "model.safetensors").is_file():
            raise RunDirError(
                f"{directory}: model.safetensors is missing; not a complete checkpoint"
            )
        extra = ckpt.load_model_and_optimizer(directory, self.module, self.base_optimizer)
        if "scaler" in extra and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(extra["scaler"])

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Every weight, for final/ (collective: call on every rank; None off rank 0)."""
        return self.module.state_dict() if self.accelerator.is_main_process else None


class DeepSpeedEngine:
    """DeepSpeed ZeRO 1-3 (optionally offloading optimizer states and parameters to the CPU)."""

    name = "deepspeed"

    def __init__(self, model: torch.nn.Module, optimizer: Any, config: dict[str, Any]):
        import deepspeed

        self.zero_stage = config["zero_optimization"]["stage"]
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config
        )
        self.model = self.engine

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def base_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        # DeepSpeed counts micro-batches itself (gradient_accumulation_steps in its config)
        return contextlib.nullcontext()

    def forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        return self.engine(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        # the loss is normalised by the loop; DeepSpeed must not divide it again
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()  # applies the update only at the accumulation boundary

    def step(self, skip: bool) -> tuple[bool, float | None]:
        """The update already ran in the last backward(); DeepSpeed skips a step itself when
        the gradients hold inf/NaN (its overflow check), which a non-finite loss produces."""
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else None
        return bool(self.engine.was_step_applied()), norm

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()

    def save(self, directory: Path, is_main: bool) -> None:
        self.engine.save_checkpoint(str(directory), tag=ckpt.DEEPSPEED_TAG, save_latest=False)

    def load(self, directory: Path) -> None:
        if not (directory / ckpt.DEEPSPEED_TAG).is_dir():
            raise RunDirError(
                f"{directory}: no {ckpt.DEEPSPEED_TAG}/ inside; not a ZeRO checkpoint"
            )
        with ckpt.weights_only_torch_load():
            path, _ = self.engine.load_checkpoint(
                str(directory),
                tag=ckpt.DEEPSPEED_TAG,
                load_optimizer_states=True,
                load_lr_scheduler_states=False,
            )
        if path is None:
            raise RunDirError(f"{directory}: DeepSpeed could not load this checkpoint")

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Every weight, for final/: under ZeRO-3 gathered from all ranks (collective)."""
        if self.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
            return state if self.engine.global_rank == 0 else None
        return self.module.state_dict() if self.engine.global_rank == 0 else None


@contextlib.contextmanager
def no_grad_eval(engine: PlainEngine | DeepSpeedEngine) -> Iterator[None]:
    engine.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        engine.train()
