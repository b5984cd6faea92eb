"""`llmtrain pretrain`: train a model from a data build with the clm, mlm or span objective.

    result = run_pretrain(load_recipe("recipes/tiny.yaml"), resume=None, overwrite=False)

One optimizer step: every process takes `grad_accum` micro-batches of packed windows from its
share of the data, the objective turns them into inputs and labels, and the number of scored
tokens is summed over all micro-batches and processes. Each micro-batch's summed token loss is
divided by that global count (times the world size, which DDP and DeepSpeed average over), so
the gradient is the mean over every scored token of the step however the batch is split.

Everything is checked before training starts (inputs.py); then the loop shell (loop.py) runs
`PretrainLoop`, the pretraining method: it prepares the run directory (refusing to clobber a run
unless --resume or --overwrite), loads the checkpoint when resuming, logs, validates,
checkpoints and finally writes final/.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmtrain.compat import apply_liger_kernel
from llmtrain.errors import StageInputError, TrainingError
from llmtrain.runtime import dist_env
from llmtrain.train import flops as flops_mod
from llmtrain.train.engine import (
    DeepSpeedEngine,
    Engine,
    build_engine,
    check_precision,
    engine_deepspeed_config,
    make_accelerator,
    no_grad_eval,
    release_accelerator,
)
from llmtrain.train.float8 import apply_float8
from llmtrain.train.inputs import (
    DataInputs,
    check_enough_data,
    check_objective_fits,
    check_positions,
    check_token_ids,
    grad_accum_steps,
    resolve_data,
)
from llmtrain.train.loop import TrainingLoop
from llmtrain.train.models import create_model, family_of_config
from llmtrain.train.objectives import (
    ModelInputs,
    build_objective,
    perplexity,
    step_generator,
    token_loss_sum,
)
from llmtrain.train.optim import build_scheduler, param_groups
from llmtrain.train.packing import DocumentMasking, check_document_masking
from llmtrain.train.stage_run import StageRun

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 0x5EED
"""Validation masks/spans come from generators seeded apart from training's."""


@dataclass
class PretrainResult:
    run_dir: Path
    final_dir: Path
    step: int
    model: torch.nn.Module
    """The trained model of this process (under ZeRO-3 and FSDP2 its parameters are sharded)."""
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
    nonfinite: str | None = None
    """What was not finite when the step was skipped for it (fp16's loss scaler also skips
    steps whose gradients overflow while it lowers its scale; those are routine: None)."""


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
    accelerator = make_accelerator(
        recipe.pretrain,
        engine_precision=setup.ds_config is not None or recipe.pretrain.fsdp is not None,
    )
    try:
        method = PretrainLoop(recipe, setup, accelerator)
        loop = TrainingLoop(method, setup.run, accelerator, recipe.pretrain)
        final_dir = loop.run(resume=resume, overwrite=overwrite)
        return PretrainResult(
            run_dir=setup.run.run_dir.path,
            final_dir=final_dir,
            step=method.step,
            model=method.engine.module,
            last_metrics=loop.last_record,
        )
    finally:
        release_accelerator()


@dataclass
class Setup:
    """Everything a run needs, built and checked before any process group or file exists."""

    plan: Plan
    run: StageRun
    data: DataInputs
    model: torch.nn.Module
    objective: Any
    train_batches: Any
    ds_config: dict[str, Any] | None


def start_model(recipe: Any) -> Any:
    """The model section, pointed at the input stage's final/ when this pretraining continues
    another stage's model (a `stages:` entry with `inputs: {model: STAGE}`)."""
    model_section = recipe.section("model")
    source = recipe.input_stage("pretrain", "model")
    if source is None:
        return model_section
    final = recipe.output_dir / source / "final"
    if not (final / "config.json").is_file():
        raise StageInputError(
            f"pretrain: no model at {final} to continue from; run "
            f"`{recipe.stage_kind(source).shell_command(source)}` first"
        )
    return model_section.model_copy(update={"path": final, "preset": None})


def prepare(recipe: Any) -> Setup:
    """Resolve and check inputs, the batch arithmetic, the model and the objective."""
    section = recipe.section("pretrain")
    run = StageRun(recipe, "pretrain", section, inputs=("model", "pretrain"))
    model_section = start_model(recipe)
    env = dist_env()
    seed = run.seed
    data = resolve_data(recipe, section)
    family, name = model_family(model_section)
    objective_name = section.objective_for(family)
    check_objective_fits(objective_name, family, name)
    if section.document_masking:
        check_document_masking(objective_name)
    check_precision(section.precision, "pretrain")
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
    if section.document_masking:
        objective = DocumentMasking(objective, model.config)
    longest = objective.lengths.inputs if objective_name == "span" else data.seq_len
    check_positions(model.config, longest, seq_len=data.seq_len, data_dir=data.data_dir)
    check_token_ids(data.manifest, model.get_input_embeddings().num_embeddings, data.data_dir)
    from llmtrain.data_pipeline.loader import TrainBatches, validation_batches

    train_batches = TrainBatches(
        data.data_dir,
        seq_len=data.seq_len,
        micro_batch_size=section.micro_batch_size,
        rank=env.rank,
        world_size=env.world_size,
        seed=seed,
        resume_on_changed_data=section.resume_on_changed_data,
        document_positions=section.document_masking,
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
    return Setup(plan, run, data, model, objective, train_batches, ds_config)


def model_family(section: Any) -> tuple[str, str]:
    """(family, name for messages) of the recipe's model, a preset or a directory."""
    if section.path is None:
        return section.family, section.preset
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        str(section.path), trust_remote_code=section.trust_remote_code
    )
    return family_of_config(config), str(section.path)


def deepspeed_config(section: Any, plan: Plan) -> dict[str, Any] | None:
    """The DeepSpeed config, or None for plain DDP (no section, or zero_stage 0)."""
    return engine_deepspeed_config(
        section,
        where="pretrain",
        grad_accum=plan.grad_accum,
        world_size=plan.world_size,
        builder="pretraining",
        built={
            "optimizer": "AdamW from pretrain.lr, beta1, beta2, eps and weight_decay",
            "scheduler": "the schedule from pretrain.schedule, warmup_steps, min_lr_ratio and "
            "decay_steps",
        },
    )


def prepare_model_for_speed(model: torch.nn.Module, section: Any) -> None:
    """Activation checkpointing and Liger kernels, applied to the bare model before wrapping."""
    if section.activation_checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    if section.liger:
        apply_liger(model)
    if section.float8:
        apply_float8(model, section.precision)


def apply_liger(model: torch.nn.Module) -> None:
    """Liger's Triton kernels for the norms, MLP and RoPE of this model (loss stays ours)."""
    try:
        import liger_kernel.transformers  # noqa: F401
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
    apply_liger_kernel(model, cross_entropy=False, fused_linear_cross_entropy=False)


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
    """Pretraining as a method of the loop shell (loop.Method), built once every check in
    prepare() passed: one optimizer step, validation, its state, final/."""

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
        self.model_config = model.config
        self.param_counts = flops_mod.parameter_counts(model)  # before ZeRO-3 partitions it
        self.flops_per_step, self.peak = self._flops_setup(model)
        self.engine: Engine = build_engine(
            model,
            param_groups(model, section.weight_decay),
            accelerator=accelerator,
            ds_config=setup.ds_config,
            section=section,
        )
        self.scheduler = build_scheduler(self.engine.base_optimizer, section)
        self.aux_coef = float(getattr(model.config, "router_aux_loss_coef", 0.0) or 0.0)
        self.has_router = bool(getattr(model.config, "output_router_logits", False))
        self.step = 0
        self.total_steps = section.steps
        self.evaluate_at_start = bool(section.eval_every)
        self.tokens = 0
        self.batches = iter(self.train_batches)

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

    def _sum(self, values: torch.Tensor) -> list[float]:
        """Sum a vector over all processes (float64 on the device); returns Python floats."""
        tensor = values.to(device=self.accelerator.device, dtype=torch.float64)
        if self.plan.world_size > 1:
            tensor = self.accelerator.reduce(tensor, reduction="sum")
        return tensor.tolist()

    # ------------------------------------------------------------------ the method

    def start_record(self) -> dict[str, Any]:
        if self.is_main:
            self._log_start()
        return {}

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

    def describe(self, record: dict[str, Any]) -> str:
        return summary(record)

    def train_step(self, batches: Any = None) -> StepResult:
        """One optimizer step over grad_accum micro-batches on every process (of `batches`, by
        default the training data)."""
        batches = self.batches if batches is None else batches
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
        if not math.isfinite(step_loss):
            nonfinite = f"the loss is {step_loss}"
        elif not applied and plan.precision != "fp16":
            nonfinite = f"the gradient norm is {grad_norm}"
        else:
            nonfinite = None
        return StepResult(
            loss=step_loss,
            lr=lr,
            grad_norm=grad_norm,
            applied=applied,
            router_aux_loss=(
                total_aux / (plan.grad_accum * plan.world_size) if self.has_router else None
            ),
            nonfinite=nonfinite,
        )

    def step_record(self, result: StepResult, seconds: float, steps: int) -> dict[str, Any]:
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
                document_positions=self.section.document_masking,
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

    def state_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "objective": self.plan.objective,
            "seq_len": self.plan.seq_len,
            "global_batch_size": self.plan.global_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokens = state["tokens"]

    def rank_state(self) -> dict[str, Any]:
        return self.train_batches.state_dict()

    def load_rank_state(self, state: dict[str, Any]) -> None:
        self.train_batches.load_state_dict(state)
        self.batches = iter(self.train_batches)

    # ------------------------------------------------------------------ final model

    def save_final(self, directory: Path, state_dict: dict[str, torch.Tensor]) -> None:
        """final/: the trained weights as a Hugging Face directory, with the tokenizer."""
        module = self.engine.module
        module.config.use_cache = True
        module.save_pretrained(str(directory), state_dict=state_dict, safe_serialization=True)
        self.data.tokenizer.save_pretrained(str(directory))
