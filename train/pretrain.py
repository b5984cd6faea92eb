"""`llmtrain pretrain`: train a model from a data build with the clm, mlm or span objective.

    result = run_pretrain(load_recipe("recipes/tiny.yaml"), resume=None, overwrite=False)

One optimizer step: every process takes `grad_accum` micro-batches of packed windows from its
share of the data, the objective turns them into inputs and labels, and the number of scored
tokens is summed over all micro-batches and processes. Each micro-batch's summed token loss is
divided by that global count (times the world size, which DDP and DeepSpeed average over), so
the gradient is the mean over every scored token of the step however the batch is split.

Everything is checked before training starts (inputs.py); then the run directory is prepared
(refusing to clobber a run unless --resume or --overwrite), the checkpoint is loaded when
resuming, and the loop logs, validates, checkpoints and finally writes final/.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmtrain.errors import RunDirError, StageInputError, TrainingError
from llmtrain.rundir import RunDir
from llmtrain.runtime import dist_env, seed_everything
from llmtrain.tracking import Tracker
from llmtrain.train import checkpoint as ckpt
from llmtrain.train import flops as flops_mod
from llmtrain.train.engine import DeepSpeedEngine, PlainEngine, no_grad_eval
from llmtrain.train.inputs import (
    DataInputs,
    check_enough_data,
    check_objective_fits,
    check_positions,
    grad_accum_steps,
    resolve_data,
)
from llmtrain.train.models import create_model, family_of_config
from llmtrain.train.objectives import (
    ModelInputs,
    build_objective,
    perplexity,
    step_generator,
    token_loss_sum,
)
from llmtrain.train.optim import build_adamw, build_cpu_adam, build_scheduler

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 0x5EED
"""Validation masks/spans come from generators seeded apart from training's."""


@dataclass
class PretrainResult:
    run_dir: Path
    final_dir: Path
    step: int
    model: torch.nn.Module
    """The trained model of this process (under ZeRO-3 its parameters are partitioned)."""
    last_metrics: dict[str, Any]


@dataclass
class StepResult:
    loss: float
    """Mean token loss of the step over all processes."""
    lr: float
    """The learning rate the step used."""
    grad_norm: float | None
    """Global gradient norm before clipping."""
    applied: bool
    """False when the update was skipped (non-finite loss or gradients)."""
    router_aux_loss: float | None


@dataclass
class Plan:
    """The resolved shape of the run (what the recipe says, checked against this launch)."""

    objective: str
    family: str
    seq_len: int
    micro_batch_size: int
    grad_accum: int
    world_size: int
    rank: int
    seed: int
    precision: str

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.world_size


def run_pretrain(
    recipe: Any, *, resume: bool | str | Path | None = None, overwrite: bool = False
) -> PretrainResult:
    """Pretrain as the recipe's `model` and `pretrain` sections say; returns where it wrote."""
    setup = prepare(recipe)
    accelerator = make_accelerator(recipe.pretrain, use_deepspeed=setup.ds_config is not None)
    try:
        return PretrainLoop(recipe, setup, accelerator).run(resume=resume, overwrite=overwrite)
    finally:
        release_accelerator()


@dataclass
class Setup:
    """Everything a run needs, built and checked before any process group or file exists."""

    plan: Plan
    data: DataInputs
    model: torch.nn.Module
    objective: Any
    train_batches: Any
    ds_config: dict[str, Any] | None


def prepare(recipe: Any) -> Setup:
    """Resolve and check inputs, the batch arithmetic, the model and the objective."""
    recipe.check_inputs("model", "pretrain")
    section = recipe.section("pretrain")
    model_section = recipe.section("model")
    env = dist_env()
    seed = section.seed if section.seed is not None else recipe.seed
    seed_everything(seed)
    data = resolve_data(recipe, section)
    family, name = model_family(model_section)
    objective_name = section.objective_for(family)
    check_objective_fits(objective_name, family, name)
    check_precision(section)
    plan = Plan(
        objective=objective_name,
        family=family,
        seq_len=data.seq_len,
        micro_batch_size=section.micro_batch_size,
        grad_accum=grad_accum_steps(
            section.global_batch_size, section.micro_batch_size, env.world_size
        ),
        world_size=env.world_size,
        rank=env.rank,
        seed=seed,
        precision=section.precision,
    )
    model = create_model(model_section, data.tokenizer, objective=objective_name, seed=seed)
    objective = build_objective(
        objective_name,
        data.tokenizer,
        seq_len=data.seq_len,
        section=section,
        model_config=model.config,
    )
    longest = objective.lengths.inputs if objective_name == "span" else data.seq_len
    check_positions(model.config, longest, seq_len=data.seq_len, data_dir=data.data_dir)
    from llmtrain.data_pipeline.loader import TrainBatches, validation_batches

    train_batches = TrainBatches(
        data.data_dir,
        seq_len=data.seq_len,
        micro_batch_size=section.micro_batch_size,
        rank=env.rank,
        world_size=env.world_size,
        seed=seed,
    )
    check_enough_data(
        train_batches.num_windows, section.global_batch_size, data.data_dir, data.seq_len
    )
    # the validation split must fill one micro-step over all ranks (raises before training)
    validation_batches(
        data.data_dir,
        seq_len=data.seq_len,
        micro_batch_size=section.micro_batch_size,
        rank=env.rank,
        world_size=env.world_size,
        max_batches=1,
    )
    ds_config = deepspeed_config(section, plan)
    prepare_model_for_speed(model, section)
    return Setup(plan, data, model, objective, train_batches, ds_config)


def model_family(section: Any) -> tuple[str, str]:
    """(family, name for messages) of the recipe's model, a preset or a directory."""
    if section.path is None:
        return section.family, section.preset
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        str(section.path), trust_remote_code=section.trust_remote_code
    )
    return family_of_config(config), str(section.path)


def check_precision(section: Any) -> None:
    if section.precision == "fp16" and not torch.cuda.is_available():
        raise StageInputError(
            "pretrain.precision fp16 needs a CUDA GPU (loss scaling of half-precision "
            "gradients); use bf16 or fp32 on this machine"
        )


def deepspeed_config(section: Any, plan: Plan) -> dict[str, Any] | None:
    """The DeepSpeed config, or None for plain DDP (no section, or zero_stage 0)."""
    from llmtrain.distributed import build_deepspeed_config, refuse_keys_built_here

    if section.deepspeed is None:
        return None
    config = build_deepspeed_config(
        section.deepspeed,
        micro_batch_size=section.micro_batch_size,
        grad_accum_steps=plan.grad_accum,
        world_size=plan.world_size,
        precision=section.precision,
        grad_clip=section.grad_clip,
        where="pretrain",
    )
    if config["zero_optimization"]["stage"] == 0:
        log.info("pretrain.deepspeed: zero_stage 0 is plain data parallelism; running it as DDP")
        return None
    refuse_keys_built_here(
        config,
        section.deepspeed,
        "pretrain",
        "pretraining",
        {
            "optimizer": "AdamW from pretrain.lr, beta1, beta2, eps and weight_decay",
            "scheduler": "the schedule from pretrain.schedule, warmup_steps, min_lr_ratio and "
            "decay_steps",
        },
    )
    return config


def offloads_optimizer(ds_config: dict[str, Any]) -> bool:
    """Whether a DeepSpeed config keeps optimizer states off the accelerator (ZeRO-Offload),
    set by the recipe or by a DeepSpeed JSON: the optimizer must then be DeepSpeed's CPU Adam."""
    offload = ds_config["zero_optimization"].get("offload_optimizer") or {}
    return offload.get("device", "none") not in (None, "none")


def prepare_model_for_speed(model: torch.nn.Module, section: Any) -> None:
    """Activation checkpointing and Liger kernels, applied to the bare model before wrapping."""
    if section.activation_checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    if section.liger:
        apply_liger(model)


def apply_liger(model: torch.nn.Module) -> None:
    """Liger's Triton kernels for the norms, MLP and RoPE of this model (loss stays ours)."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError as exc:
        raise StageInputError(
            "pretrain.liger: the liger-kernel package is not installed (pip install liger-kernel); "
            "or set liger: false"
        ) from exc
    if not torch.cuda.is_available():
        raise StageInputError(
            "pretrain.liger: Liger kernels are Triton GPU kernels and need a CUDA GPU; set "
            "liger: false on this machine"
        )
    _apply_liger_kernel_to_instance(
        model=model, cross_entropy=False, fused_linear_cross_entropy=False
    )


def make_accelerator(section: Any, *, use_deepspeed: bool) -> Any:
    """accelerate's Accelerator: process group (gloo on CPU), device, autocast, fp16 scaling."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    mixed = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[section.precision]
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision="no" if use_deepspeed else mixed,
        # gradients live in DDP's all-reduce buckets instead of beside them: 4 bytes per
        # parameter less, the same numbers
        kwargs_handlers=[DistributedDataParallelKwargs(gradient_as_bucket_view=True)],
    )


def release_accelerator() -> None:
    """Forget accelerate's process-wide state, so another run in this process starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def summary(record: dict[str, Any]) -> str:
    """One log line of a metrics record."""
    parts = [f"loss {record['loss']:.4f}" if record.get("loss") is not None else "loss -"]
    parts.append(f"lr {record['lr']:.3g}")
    if record.get("grad_norm") is not None:
        parts.append(f"grad norm {record['grad_norm']:.3g}")
    parts.append(f"{record['tokens_per_s']:,.0f} tokens/s")
    if "mfu" in record:
        parts.append(f"MFU {record['mfu']:.1%}")
    return ", ".join(parts)


def finite_or_none(value: float | None) -> float | None:
    """NaN and infinities are not JSON: metrics.jsonl records them as null."""
    return value if value is not None and math.isfinite(value) else None


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class PretrainLoop:
    """The loop of one pretraining run (built once every check in prepare() passed)."""

    def __init__(self, recipe: Any, setup: Setup, accelerator: Any):
        section = recipe.pretrain
        model = setup.model
        self.recipe = recipe
        self.section = section
        self.plan = setup.plan
        self.data = setup.data
        self.objective = setup.objective
        self.train_batches = setup.train_batches
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        self.run_dir = RunDir(recipe.stage_dir("pretrain"))
        self.model_config = model.config
        self.param_counts = flops_mod.parameter_counts(model)  # before ZeRO-3 partitions it
        self.flops_per_step, self.peak = self._flops_setup(model)
        betas = (section.beta1, section.beta2)
        ds_config = setup.ds_config
        if ds_config is not None and offloads_optimizer(ds_config):
            optimizer = build_cpu_adam(
                model,
                lr=section.lr,
                weight_decay=section.weight_decay,
                betas=betas,
                eps=section.eps,
            )
        else:
            optimizer = build_adamw(
                model,
                lr=section.lr,
                weight_decay=section.weight_decay,
                betas=betas,
                eps=section.eps,
                device=accelerator.device,
            )
        self.scheduler = build_scheduler(optimizer, section)
        if ds_config is not None:
            self.engine: PlainEngine | DeepSpeedEngine = DeepSpeedEngine(
                model, optimizer, ds_config
            )
            if section.compile:
                self.engine.engine.compile()
        else:
            if section.compile:
                model = torch.compile(model)
            self.engine = PlainEngine(accelerator, model, optimizer, section.grad_clip)
        self.aux_coef = float(getattr(model.config, "router_aux_loss_coef", 0.0) or 0.0)
        self.has_router = bool(getattr(model.config, "output_router_logits", False))
        self.step = 0
        self.tokens = 0
        self.nonfinite_streak = 0
        self.skipped_steps = 0
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ set-up

    def _flops_setup(self, model: torch.nn.Module) -> tuple[float, float | None]:
        """Model FLOPs of one optimizer step over all processes, and one device's peak."""
        plan = self.plan
        sequences = plan.global_batch_size
        if plan.objective == "span":
            lengths = self.objective.lengths
            per_step = sequences * flops_mod.seq2seq_flops_per_example(
                model.config, input_len=lengths.inputs, target_len=lengths.targets
            )
        else:
            per_token = flops_mod.decoder_flops_per_token(
                model.config, self.param_counts, plan.seq_len
            )
            per_step = sequences * plan.seq_len * per_token
        if self.section.peak_tflops is not None:
            peak = self.section.peak_tflops * 1e12
        elif torch.cuda.is_available():
            peak = flops_mod.peak_flops(torch.cuda.get_device_name(), plan.precision)
        else:
            peak = None
        if peak is None and self.is_main:
            log.info("MFU is not reported: set pretrain.peak_tflops to this device's peak TFLOP/s")
        return per_step, peak

    def _barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def _sum(self, values: torch.Tensor) -> list[float]:
        """Sum a vector over all processes (float64 on the device); returns Python floats."""
        tensor = values.to(device=self.accelerator.device, dtype=torch.float64)
        if self.plan.world_size > 1:
            tensor = self.accelerator.reduce(tensor, reduction="sum")
        return tensor.tolist()

    # ------------------------------------------------------------------ run

    def run(self, *, resume: bool | str | Path | None, overwrite: bool) -> PretrainResult:
        config_yaml = self.recipe.to_yaml()
        # every process checks (so every process raises the same error), then rank 0 writes
        checkpoint = self.run_dir.start(
            config_yaml, resume=resume, overwrite=overwrite, is_main=False
        )
        self._barrier()
        if self.is_main:
            self.run_dir.start(config_yaml, resume=resume, overwrite=overwrite)
        self._barrier()
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        tracker = Tracker(
            self.run_dir,
            self.recipe.logging,
            run_name=f"{self.recipe.name}-pretrain",
            config=self.recipe.model_dump(mode="json"),
            is_main=self.is_main,
            resume_step=self.step if checkpoint is not None else None,
        )
        if self.is_main:
            self._log_start()
        try:
            last = self._loop(tracker)
            final = self.write_final()
        finally:
            tracker.close()
        return PretrainResult(
            run_dir=self.run_dir.path,
            final_dir=final,
            step=self.step,
            model=self.engine.module,
            last_metrics=last,
        )

    def _log_start(self) -> None:
        plan = self.plan
        counts = self.param_counts
        log.info(
            "pretrain %s (%s, %.1fM parameters, %.1fM in matmuls per token): %d steps of %d "
            "sequences x %d tokens (%d processes x %d micro-batches of %d), %s, engine %s",
            plan.objective,
            type(self.engine.module).__name__,
            counts.total / 1e6,
            counts.active_matmul / 1e6,
            self.section.steps,
            plan.global_batch_size,
            plan.seq_len,
            plan.world_size,
            plan.grad_accum,
            plan.micro_batch_size,
            plan.precision,
            self.engine.name
            if not isinstance(self.engine, DeepSpeedEngine)
            else f"deepspeed zero-{self.engine.zero_stage}",
        )

    def _loop(self, tracker: Tracker) -> dict[str, Any]:
        from tqdm.auto import tqdm

        section = self.section
        total = section.steps
        batches = iter(self.train_batches)
        # a bar on an interactive terminal (rank 0); in batch logs the log lines below instead
        interactive = self.is_main and sys.stderr.isatty()
        progress = tqdm(total=total, initial=self.step, disable=not interactive, desc="pretrain")
        window_time = 0.0
        window_steps = 0
        last_record: dict[str, Any] = {}
        if self.step == 0 and section.eval_every:
            baseline = self.evaluate()  # the untrained model, as the curve's starting point
            if baseline:
                tracker.log(0, baseline)
        self.engine.train()
        while self.step < total:
            started = time.perf_counter()
            result = self.train_step(batches)
            window_time += time.perf_counter() - started
            window_steps += 1
            step = self.step  # the step just taken, 1-based
            self._count_nonfinite(result)
            record: dict[str, Any] = {}
            if step % section.log_every == 0 or step == total:
                record.update(self._train_metrics(result, window_time, window_steps))
                window_time, window_steps = 0.0, 0
                progress.set_postfix(loss=f"{result.loss:.4f}")
                if self.is_main and not interactive:
                    log.info("step %d/%d: %s", step, total, summary(record))
            if (section.eval_every and step % section.eval_every == 0) or step == total:
                record.update(self.evaluate())
            if record:
                tracker.log(step, record)
                last_record = {"step": step, **record}
            if self.nonfinite_streak == 0 and (
                (section.save_every and step % section.save_every == 0) or step == total
            ):
                self.save_checkpoint()
            progress.update(1)
        progress.close()
        return last_record

    def _count_nonfinite(self, result: StepResult) -> None:
        """Count a step skipped for a non-finite loss or gradient; stop after too many in a row.

        Under fp16 the loss scaler also skips steps whose gradients overflow while it lowers
        its scale; those are routine and not counted.
        """
        loss_bad = not math.isfinite(result.loss)
        grad_bad = not result.applied and self.plan.precision != "fp16"
        if not (loss_bad or grad_bad):
            self.nonfinite_streak = 0
            return
        self.nonfinite_streak += 1
        self.skipped_steps += 1
        if self.is_main:
            what = (
                f"the loss is {result.loss}"
                if loss_bad
                else f"the gradient norm is {result.grad_norm}"
            )
            log.warning("step %d: %s; the step was skipped", self.step, what)
        if self.nonfinite_streak >= self.section.max_nonfinite_steps:
            kept = (
                f"the last good checkpoint {self.last_checkpoint} is intact"
                if self.last_checkpoint
                else "no checkpoint had been written yet"
            )
            first = self.step - self.nonfinite_streak + 1
            raise TrainingError(
                f"pretrain stopped: {self.nonfinite_streak} steps in a row ({first}-{self.step}) "
                f"had a non-finite loss or gradient (pretrain.max_nonfinite_steps is "
                f"{self.section.max_nonfinite_steps}); {kept}. Lower pretrain.lr, keep grad_clip "
                "on or use bf16 rather than fp16, then continue with --resume"
            )

    def train_step(self, batches: Any) -> StepResult:
        """One optimizer step over grad_accum micro-batches on every process."""
        plan = self.plan
        device = self.accelerator.device
        micro_inputs: list[ModelInputs] = []
        for micro in range(plan.grad_accum):
            windows = next(batches)
            generator = step_generator(plan.seed, self.step, micro, plan.rank)
            micro_inputs.append(self.objective.prepare(windows, generator))
        local_targets = sum(m.num_targets for m in micro_inputs)
        if plan.objective == "clm":  # every position is scored: no need to ask the others
            global_targets = local_targets * plan.world_size
        else:
            global_targets = int(self._sum(torch.tensor([float(local_targets)]))[0])
        if global_targets == 0:
            raise TrainingError(f"step {self.step + 1}: no token to score in the whole batch")
        # DDP and DeepSpeed average gradients over processes: scale back up by the world size
        scale = plan.world_size / global_targets
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # token loss, router aux loss
        for micro, inputs in enumerate(micro_inputs):
            inputs = inputs.to(device)
            with self.engine.micro_batch(last=micro == len(micro_inputs) - 1):
                outputs = self.engine.forward(inputs.inputs)
                micro_loss = token_loss_sum(outputs.logits, inputs.labels)
                loss = micro_loss * scale
                aux = getattr(outputs, "aux_loss", None) if self.has_router else None
                if aux is not None:
                    loss = loss + self.aux_coef * aux / plan.grad_accum
                    sums[1] += aux.detach().double()
                self.engine.backward(loss)
            sums[0] += micro_loss.detach().double()
        total_loss, total_aux = self._sum(sums)
        step_loss = total_loss / global_targets
        lr = self.scheduler.get_last_lr()[0]
        applied, grad_norm = self.engine.step(skip=not math.isfinite(step_loss))
        self.scheduler.step()
        self.step += 1
        self.tokens += plan.global_batch_size * plan.seq_len
        return StepResult(
            loss=step_loss,
            lr=lr,
            grad_norm=grad_norm,
            applied=applied,
            router_aux_loss=(
                total_aux / (plan.grad_accum * plan.world_size) if self.has_router else None
            ),
        )

    def _train_metrics(self, result: StepResult, seconds: float, steps: int) -> dict[str, Any]:
        plan = self.plan
        tokens_per_s = steps * plan.global_batch_size * plan.seq_len / max(seconds, 1e-9)
        record: dict[str, Any] = {
            "loss": finite_or_none(result.loss),
            "lr": result.lr,
            "grad_norm": finite_or_none(result.grad_norm),
            "tokens": self.tokens,
            "tokens_per_s": tokens_per_s,
            "step_time_s": seconds / max(steps, 1),
            "peak_mem_gb": peak_memory_gb(),
        }
        if self.peak is not None:
            achieved = steps * self.flops_per_step / max(seconds, 1e-9)
            record["mfu"] = achieved / (plan.world_size * self.peak)
        if result.router_aux_loss is not None:
            record["router_aux_loss"] = result.router_aux_loss
        if not result.applied:
            record["skipped"] = True
        if self.skipped_steps:
            record["skipped_steps"] = self.skipped_steps
        return record

    # ------------------------------------------------------------------ validation

    def evaluate(self) -> dict[str, float]:
        """Validation loss and perplexity over eval_batches micro-batches (all processes)."""
        from llmtrain.data_pipeline.loader import validation_batches

        plan = self.plan
        device = self.accelerator.device
        per_process = self.section.eval_batches
        if per_process is not None:  # the same validation set whatever the world size
            per_process = -(-per_process // plan.world_size)
        batches = iter(
            validation_batches(
                self.data.data_dir,
                seq_len=plan.seq_len,
                micro_batch_size=plan.micro_batch_size,
                rank=plan.rank,
                world_size=plan.world_size,
                max_batches=per_process,
            )
        )
        loss_sum = 0.0
        targets = 0
        index = 0
        with no_grad_eval(self.engine):
            while True:
                windows = next(batches, None)
                # every process runs the same number of forwards (ZeRO-3 gathers in each one)
                (missing,) = self._sum(torch.tensor([1.0 if windows is None else 0.0]))
                if missing:
                    break
                generator = step_generator(plan.seed + EVAL_SEED_OFFSET, index, 0, plan.rank)
                inputs = self.objective.prepare(windows, generator).to(device)
                outputs = self.engine.forward(inputs.inputs)
                loss_sum += float(token_loss_sum(outputs.logits, inputs.labels))
                targets += inputs.num_targets
                index += 1
        total_loss, total_targets = self._sum(torch.tensor([loss_sum, float(targets)]))
        if total_targets == 0:
            log.warning("validation: the data build has no validation tokens; skipped")
            return {}
        val_loss = total_loss / total_targets
        if self.is_main:
            log.info(
                "step %d: validation loss %.4f, perplexity %.2f (%d tokens)",
                self.step,
                val_loss,
                perplexity(val_loss),
                int(total_targets),
            )
        return {"val_loss": val_loss, "val_ppl": perplexity(val_loss)}

    # ------------------------------------------------------------------ checkpoints

    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "world_size": self.plan.world_size,
            "engine": self.engine.name,
            "zero_stage": self._zero_stage(),
            "objective": self.plan.objective,
            "seq_len": self.plan.seq_len,
            "global_batch_size": self.plan.global_batch_size,
            "nonfinite_streak": self.nonfinite_streak,
            "skipped_steps": self.skipped_steps,
            "scheduler": self.scheduler.state_dict(),
        }

    def save_checkpoint(self) -> Path:
        """Every rank writes its part under a temporary name; rank 0 renames when all are done."""
        final = self.run_dir.checkpoint_dir(self.step)
        tmp = ckpt.temporary_dir(final)
        if self.is_main:
            ckpt.remove_stale(tmp)
            tmp.mkdir(parents=True)
        self._barrier()
        self.engine.save(tmp, self.is_main)
        ckpt.write_rank_state(tmp, self.plan.rank, self.train_batches.state_dict())
        if self.is_main:
            ckpt.write_trainer_state(tmp, self.trainer_state())
        self._barrier()
        if self.is_main:
            ckpt.publish(tmp, final)
            self.run_dir.prune_checkpoints(self.section.keep_last)
        self._barrier()
        self.last_checkpoint = final
        return final

    def _zero_stage(self) -> int:
        return self.engine.zero_stage if isinstance(self.engine, DeepSpeedEngine) else 0

    def load_checkpoint(self, directory: Path) -> None:
        state = ckpt.read_trainer_state(directory)
        ckpt.check_compatible(
            state, world_size=self.plan.world_size, engine=self.engine.name, where=directory
        )
        saved, stage = state.get("zero_stage", self._zero_stage()), self._zero_stage()
        if saved != stage:

            def label(zero: int) -> str:
                return f"DeepSpeed ZeRO-{zero}" if zero else "DDP (no ZeRO)"

            raise RunDirError(
                f"{directory} was written under {label(saved)} and this run uses {label(stage)}; "
                f"resume with pretrain.deepspeed.zero_stage: {saved} (converting a checkpoint to "
                "another ZeRO stage is not supported)"
            )
        self.engine.load(directory)
        rng, data_state = ckpt.read_rank_state(directory, self.plan.rank)
        self.train_batches.load_state_dict(data_state)
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.restore_rng(rng)
        self.step = state["step"]
        self.tokens = state["tokens"]
        self.nonfinite_streak = state["nonfinite_streak"]
        self.skipped_steps = state["skipped_steps"]
        self.last_checkpoint = directory
        if self.is_main:
            log.info("resumed from %s (step %d)", directory, self.step)

    # ------------------------------------------------------------------ final model

    def write_final(self) -> Path:
        """final/: the trained weights as a Hugging Face directory, with the tokenizer."""
        state_dict = self.engine.full_state_dict()  # collective under ZeRO-3
        if self.is_main:
            module = self.engine.module
            module.config.use_cache = True

            def writer(tmp: Path) -> None:
                module.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
                self.data.tokenizer.save_pretrained(str(tmp))

            self.run_dir.save_final(writer)
            log.info("final model written to %s", self.run_dir.final_dir)
        self._barrier()
        return self.run_dir.final_dir
