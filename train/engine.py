"""How one optimizer step is executed: plain (one process or DDP), DeepSpeed ZeRO or FSDP2
(train/fsdp.py).

The engines take the same calls from the loop:

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
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from llmtrain.compat import reset_accelerate_state, zero3_full_state_dict
from llmtrain.errors import RunDirError, StageInputError
from llmtrain.train import checkpoint as ckpt
from llmtrain.train.fsdp import FSDPEngine, release_group_of_one

log = logging.getLogger(__name__)


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
            state = zero3_full_state_dict(self.engine)
            return state if self.engine.global_rank == 0 else None
        return self.module.state_dict() if self.engine.global_rank == 0 else None


Engine = PlainEngine | DeepSpeedEngine | FSDPEngine
"""What build_engine returns (the loop's view of an engine)."""


@contextlib.contextmanager
def no_grad_eval(engine: Engine) -> Iterator[None]:
    engine.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        engine.train()


# ---------------------------------------------------------------------------------------------
# Building an engine: the one place that chooses DDP or DeepSpeed, the optimizer and its groups


def check_precision(precision: str, where: str) -> None:
    """fp16 needs a CUDA GPU (its loss scaler); every stage refuses it here, the same way."""
    if precision == "fp16" and not torch.cuda.is_available():
        raise StageInputError(
            f"{where}.precision fp16 needs a CUDA GPU (loss scaling of half-precision "
            "gradients); use bf16 or fp32 on this machine"
        )


def engine_deepspeed_config(
    section: Any,
    *,
    where: str,
    grad_accum: int,
    world_size: int,
    built: dict[str, str] | None = None,
    builder: str = "",
) -> dict[str, Any] | None:
    """The DeepSpeed config of `<where>.deepspeed`, or None for plain DDP: no section, or
    `zero_stage: 0` (plain data parallelism, whatever the stage). `built` names the DeepSpeed
    keys (optimizer, scheduler) the stage builds itself, which a user JSON may not set."""
    from llmtrain.distributed import build_deepspeed_config, refuse_keys_built_here

    if section.deepspeed is None:
        return None
    config = build_deepspeed_config(
        section.deepspeed,
        micro_batch_size=section.micro_batch_size,
        grad_accum_steps=grad_accum,
        world_size=world_size,
        precision=section.precision,
        grad_clip=section.grad_clip,
        where=where,
    )
    if config["zero_optimization"]["stage"] == 0:
        log.info("%s.deepspeed: zero_stage 0 is plain data parallelism; running it as DDP", where)
        return None
    if built:
        refuse_keys_built_here(config, section.deepspeed, where, builder, built)
    return config


def offloads_optimizer(ds_config: dict[str, Any] | None) -> bool:
    """Whether a DeepSpeed config keeps optimizer states off the accelerator (ZeRO-Offload),
    set by the recipe or by a DeepSpeed JSON: the optimizer must then be DeepSpeed's CPU Adam.
    `offload_optimizer: {device: none}` is no offload."""
    if ds_config is None:
        return False
    offload = ds_config["zero_optimization"].get("offload_optimizer") or {}
    return offload.get("device", "none") not in (None, "none")


def make_accelerator(section: Any, *, engine_precision: bool) -> Any:
    """accelerate's Accelerator: process group (gloo on CPU), device, autocast, fp16 scaling;
    `engine_precision`: the engine runs the precision itself (DeepSpeed, FSDP2), no autocast."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    mixed = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[section.precision]
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision="no" if engine_precision else mixed,
        # gradients live in DDP's all-reduce buckets instead of beside them: 4 bytes per
        # parameter less, the same numbers
        kwargs_handlers=[DistributedDataParallelKwargs(gradient_as_bucket_view=True)],
    )


def release_accelerator() -> None:
    """Forget accelerate's process-wide state (and a process group of one that FSDP2 started),
    so another run in this process starts clean."""
    reset_accelerate_state()
    release_group_of_one()


def build_engine(
    model: torch.nn.Module,
    groups: list[dict[str, Any]],
    *,
    accelerator: Any,
    ds_config: dict[str, Any] | None,
    section: Any,
) -> Engine:
    """The engine of a stage's trainable `model`: DeepSpeed ZeRO when `ds_config` is given (see
    engine_deepspeed_config), FSDP2 when `section.fsdp` is set (train/fsdp.py: the model is
    sharded in place), else accelerate (one process or DDP); the optimizer is AdamW over
    `groups` (optim.param_groups: decay on weight matrices only), DeepSpeed's CPU Adam when the
    config offloads optimizer states; Muon + AdamW with `section.optimizer: muon` (train/muon.py).
    `section` gives lr, beta1, beta2, eps, grad_clip and compile."""
    from llmtrain.train.optim import build_optimizer, fused_available

    fsdp = getattr(section, "fsdp", None)
    if fsdp is not None:
        from llmtrain.train.fsdp import check_fsdp, shard_model, sharded_groups

        check_fsdp(section)
        names = {id(p): name for name, p in model.named_parameters()}
        shard_model(model, section, device=accelerator.device)
        groups = sharded_groups(groups, names, model)
    if getattr(section, "optimizer", "adamw") == "muon":  # pretraining's choice (train/muon.py)
        from llmtrain.train.muon import build_muon, check_muon

        check_muon(ds_config)
        fused = fused_available(accelerator.device) or None
        optimizer: Any = build_muon(model, groups, section, fused=fused)
    else:
        optimizer = build_optimizer(
            groups,
            lr=section.lr,
            betas=(section.beta1, section.beta2),
            eps=section.eps,
            device=accelerator.device,
            cpu_adam=offloads_optimizer(ds_config),
        )
    compile_model = bool(getattr(section, "compile", False))
    if fsdp is not None:
        return FSDPEngine(model, optimizer, section.grad_clip)  # compiled per block when sharded
    if ds_config is not None:
        engine = DeepSpeedEngine(model, optimizer, ds_config)
        if compile_model:
            engine.engine.compile()
        return engine
    if compile_model:
        model = torch.compile(model)
    return PlainEngine(accelerator, model, optimizer, section.grad_clip)


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype frozen models (a reference, reward models) run in: the precision's on a GPU,
    fp32 on a CPU."""
    if not torch.cuda.is_available():
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
