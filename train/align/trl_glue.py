"""Our recipe around TRL's trainers, shared by every TRL-backed method (sft, rm, dpo, grpo).

`AlignRun` is a `StageRun` (stage_run.py: inputs, seed, run directory and tracker, input model,
tokenizer, final/'s generation config, shared with the stages on our own loop shell) plus what a
TRL trainer needs: its arguments, datasets, LoRA, callbacks, checkpoints and final/ from a trainer.

    run = AlignRun(recipe, "sft", section)             # checks the recipe's input files
    model_dir = run.input_model_dir()
    tokenizer = run.load_tokenizer(model_dir)
    ...                                                # load model and data, check them
    run.start(resume=args.resume, overwrite=args.overwrite)   # run dir + tracker
    config = run.training_args(SFTConfig, has_validation=True, max_length=...)
    trainer = MySFTTrainer(run_dir=run.run_dir, keep_last=..., model=..., args=config,
                           callbacks=run.callbacks(), ...)       # MySFTTrainer(RunDirCheckpoints, SFTTrainer)
    run.train(trainer)
    run.save_final(trainer, tokenizer, end_of_turn_id=...)

- **Run directory**: `RunDir` at <output_dir>/<method>: config.yaml, metrics.jsonl, checkpoints,
  final/. The transformers Trainer writes `checkpoints/checkpoint-N/`; `RunDirCheckpoints`
  renames it to `checkpoints/step-N/` once every process has finished writing, so a step-N
  directory is always complete, and prunes to `keep_last`. `--resume` hands step-N to
  `Trainer.train(resume_from_checkpoint=...)` (model, optimizer, scheduler, RNG, data position).
- **Metrics**: `TrackerCallback` forwards every Trainer log (TRL's names: loss, eval_loss,
  rewards/margins, ...) to our `Tracker` on rank 0, and forces a log at the last step.
- **DeepSpeed**: the recipe's `deepspeed` section becomes the Trainer's DeepSpeed dict through
  `build_deepspeed_config`, with batch sizes, precision and clipping taken from the section.
- **FSDP2**: the `fsdp` section becomes the Trainer's `fsdp`/`fsdp_config` (accelerate's FSDP2
  plugin, wrapping the model's transformer blocks); refused without a CUDA GPU, since
  accelerate 1.16 enables FSDP only on accelerators and a CPU launch would train as DDP.
- **final/**: safetensors + tokenizer (+ chat template) + generation config whose eos ids include
  the chat end-of-turn token; LoRA runs write the adapter to <run dir>/adapter and merge it.
- **Guards** (shared with the loop shell): a step with a non-finite gradient is skipped and
  `max_nonfinite_steps` in a row stop the run (`nonfinite_callback`); no checkpoint or final/
  from non-finite weights; on `--resume` the recipe's lr and schedule apply
  (`recipe_lr_callback`), TRL's `num_tokens` continues (`num_tokens.json` in each checkpoint)
  and a checkpoint that cannot be loaded gives one message; a full disk or an unwritable run
  directory gives one message.

Heavy imports (torch, transformers, TRL) happen inside functions: the CLI imports the package.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from llmtrain.atomic import atomic_path
from llmtrain.errors import InputDataError, RecipeError
from llmtrain.rundir import RunDir, disk_errors
from llmtrain.tracking import Tracker
from llmtrain.train.checkpoint import LOAD_ERRORS, unreadable_checkpoint
from llmtrain.train.nonfinite import (
    NonfiniteSteps,
    gradients_nonfinite,
    nonfinite_final_error,
    weights_finite,
)
from llmtrain.train.resume import apply_peak_lrs
from llmtrain.train.stage_run import StageRun, finish_generation_config

log = logging.getLogger(__name__)

SKIPPED_LOG_KEYS = ("total_flos",)


class AlignRun(StageRun):
    """One run of an alignment method: inputs, run directory, tracker, arguments and final/.

    Nothing is written until `start()`, which a method calls once its inputs (model,
    tokenizer, data) have been checked, so a mistake leaves no run directory behind.
    """

    training_begun = False
    """Set once a resumed trainer has loaded its checkpoint (errors before: the checkpoint's)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fsdp_args()  # fsdp without a GPU is refused before anything loads

    # -- inputs --------------------------------------------------------------------------------

    def chat_template(self, records: list[dict], tokenizer: Any, model_dir: Path) -> str | None:
        """The template conversations are rendered with (set on the tokenizer), or None when
        every record is text."""
        from llmtrain.train.align.chat_data import resolve_chat_template, uses_chat_template

        if not uses_chat_template(records):
            return None
        return resolve_chat_template(
            tokenizer,
            self.section.chat_template,
            method=self.method,
            tokenizer_dir=self.section.tokenizer or model_dir,
        )

    def preference_rows(
        self, data: Any, tokenizer: Any, template: str | None
    ) -> tuple[list[dict], list[dict], dict[str, Any]]:
        """(train pairs, validation pairs, data metrics): see fitted_rows."""
        from llmtrain.train.align.chat_data import tokenize_preferences

        return self.fitted_rows(tokenize_preferences, "pairs", data, tokenizer, template)

    def fitted_rows(
        self, tokenize: Any, what: str, data: Any, tokenizer: Any, template: str | None
    ) -> tuple[list[dict], list[dict], dict[str, Any]]:
        """(train rows, validation rows, data metrics): `data` tokenized by `tokenize` (a
        chat_data.tokenize_* function) and fitted to max_length; fewer training rows (`what`:
        pairs, examples) than one global batch is an error."""
        section, method = self.section, self.method
        fit = dict(max_length=section.max_length, on_too_long=section.on_too_long)
        train_rows, train_stats = tokenize(data.train, tokenizer, template, **fit)
        val_rows, val_stats = tokenize(data.validation, tokenizer, template, **fit)
        if len(train_rows) < section.global_batch_size:
            raise InputDataError(
                f"{method}: {len(train_rows)} training {what} are fewer than one batch "
                f"(global_batch_size {section.global_batch_size}); add data or lower "
                f"{method}.global_batch_size"
            )
        metrics = {
            **data.metrics(),
            **train_stats.metrics("data/train"),
            **val_stats.metrics("data/val"),
        }
        return train_rows, val_rows, metrics

    def model_kwargs(self, *, quantized: bool = True) -> dict[str, Any]:
        """from_pretrained arguments: dtype, remote code, QLoRA quantization (unless not
        `quantized`: the full-precision base an adapter is merged into)."""
        import torch

        kwargs: dict[str, Any] = {
            "trust_remote_code": self.section.trust_remote_code,
            "dtype": torch.float32,
        }
        lora = self.section.lora
        if quantized and lora is not None and lora.quantization != "none":
            kwargs["quantization_config"] = qlora_quantization(lora.quantization, self.method)
            kwargs["dtype"] = torch.bfloat16
        return kwargs

    # -- trainer arguments ---------------------------------------------------------------------

    def grad_accum_steps(self) -> int:
        section, world = self.section, self.env.world_size
        per_step = section.micro_batch_size * world
        if section.global_batch_size % per_step:
            raise RecipeError(
                f"{self.method}.global_batch_size {section.global_batch_size} is not a multiple "
                f"of micro_batch_size {section.micro_batch_size} x {world} processes; change one "
                "of them or the number of processes"
            )
        return section.global_batch_size // per_step

    def deepspeed_config(self) -> dict[str, Any] | None:
        """The Trainer's DeepSpeed dict; None (plain DDP) without a section or at zero_stage 0."""
        from llmtrain.train.engine import engine_deepspeed_config

        return engine_deepspeed_config(
            self.section,
            where=self.method,
            grad_accum=self.grad_accum_steps(),
            world_size=self.env.world_size,
        )

    def fsdp_args(self) -> dict[str, Any]:
        """The Trainer's FSDP2 arguments of the `fsdp` section ({} without one)."""
        import torch

        fsdp = self.section.fsdp
        if fsdp is None:
            return {}
        if not torch.cuda.is_available():
            raise RecipeError(
                f"{self.method}.fsdp needs CUDA GPUs: TRL trains through accelerate, which runs "
                "FSDP only on accelerators (on CPU processes it would silently train as DDP, "
                f"unsharded); remove {self.method}.fsdp, or use {self.method}.deepspeed (ZeRO runs "
                "on CPUs too)"
            )
        return {
            "fsdp": True,
            "fsdp_config": {
                "version": 2,
                "reshard_after_forward": fsdp.reshard_after_forward,
                "cpu_offload": fsdp.cpu_offload,
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "state_dict_type": "FULL_STATE_DICT",
            },
        }

    def training_args(self, config_cls: type, *, has_validation: bool, **extra: Any) -> Any:
        """A TRL config (SFTConfig, RewardConfig, DPOConfig, GRPOConfig, ...) from the section."""
        import torch

        from llmtrain.train.engine import check_precision

        section = self.section
        on_gpu = torch.cuda.is_available()
        check_precision(section.precision, self.method)
        schedule = {
            "cosine": "cosine_with_min_lr",
            "linear": "linear",
            "constant": "constant_with_warmup",
        }[section.schedule]
        never = (
            2**31 - 1
        )  # "only at the end": the Trainer also evaluates and saves at the last step
        kwargs: dict[str, Any] = {
            "output_dir": str(self.run_dir.checkpoints_dir),
            "run_name": f"{self.recipe.name}-{self.method}",
            "seed": self.seed,
            "data_seed": self.seed,
            "per_device_train_batch_size": section.micro_batch_size,
            "per_device_eval_batch_size": section.micro_batch_size,
            "gradient_accumulation_steps": self.grad_accum_steps(),
            "num_train_epochs": section.epochs,
            "max_steps": section.max_steps or -1,
            "learning_rate": section.lr,
            "lr_scheduler_type": schedule,
            "lr_scheduler_kwargs": {"min_lr_rate": section.min_lr_ratio}
            if section.schedule == "cosine"
            else None,
            "warmup_steps": section.warmup_steps
            if section.warmup_steps is not None
            else section.warmup_ratio,
            "weight_decay": section.weight_decay,
            "adam_beta1": section.beta1,
            "adam_beta2": section.beta2,
            "adam_epsilon": section.eps,
            "max_grad_norm": section.grad_clip or 0.0,
            "bf16": section.precision == "bf16",
            "fp16": section.precision == "fp16",
            "activation_checkpointing": section.activation_checkpointing,
            "logging_strategy": "steps",
            "logging_steps": section.log_every,
            "logging_first_step": True,
            "eval_strategy": "steps" if has_validation else "no",
            "eval_steps": (section.eval_every or never) if has_validation else None,
            "save_strategy": "steps",
            "save_steps": section.save_every or never,
            "save_total_limit": None,  # RunDirCheckpoints prunes step-N directories
            "report_to": "none",
            "disable_tqdm": not self.env.is_main,
            "deepspeed": self.deepspeed_config(),
            "ddp_backend": "gloo" if self.env.is_distributed and not on_gpu else None,
            "use_cpu": not on_gpu,
            "dataloader_num_workers": 0,
            **self.fsdp_args(),
        }
        kwargs.update(extra)
        return config_cls(**kwargs)

    def dataset(self, rows: list[dict], name: str) -> Any:
        """`rows` as a memory-mapped Dataset in <run dir>/.datasets/<name>.

        The main process writes it, every process reads it (call after `training_args`, which
        sets up the process group). Caches TRL derives from it, such as precomputed reference
        log-probs, then land beside it, where every process finds them.
        """
        from accelerate import PartialState
        from datasets import Dataset, load_from_disk

        path = self.run_dir.path / ".datasets" / name
        state = PartialState()
        if state.is_main_process:
            with atomic_path(path) as tmp:
                Dataset.from_list(rows).save_to_disk(str(tmp))
        state.wait_for_everyone()
        return load_from_disk(str(path))

    def peft_config(self, task_type: str, modules_to_save: tuple[str, ...] = ()) -> Any:
        return lora_config(self.section.lora, task_type, modules_to_save)

    def callbacks(self) -> list[Any]:
        """Our callbacks of every TRL trainer: the non-finite guard, then the tracker."""
        guard = NonfiniteSteps(
            self.method, self.section.max_nonfinite_steps, is_main=self.env.is_main
        )
        callbacks = [nonfinite_callback(guard, self.run_dir), tracker_callback(self.tracker, guard)]
        return callbacks + ([recipe_lr_callback(self)] if self.resume_from is not None else [])

    # -- running -------------------------------------------------------------------------------

    def train(self, trainer: Any) -> Any:
        """trainer.train(), from the resume checkpoint if any. Nothing is unpickled: DeepSpeed
        0.19 loads its checkpoint files with weights_only=False, so it is made to load them
        weights-only (the pretraining loop does the same)."""
        guard = contextlib.nullcontext()
        if self.resume_from is not None:
            log.info("resuming from %s", self.resume_from)
            if self.section.deepspeed is not None:
                from llmtrain.train.checkpoint import weights_only_torch_load

                guard = weights_only_torch_load()
        if self.resume_from is not None:
            load_token_count(trainer, self.resume_from)
        try:
            with guard, disk_errors(self.run_dir.path):
                return trainer.train(
                    resume_from_checkpoint=str(self.resume_from) if self.resume_from else None
                )
        except LOAD_ERRORS as exc:
            if self.resume_from is None or self.training_begun:
                raise
            # raised before the first step: loading the checkpoint failed
            raise unreadable_checkpoint(self.resume_from, exc) from exc
        finally:
            if self.tracker is not None:
                self.tracker.close()

    def load_policy(self, kind: str) -> tuple[Path, Any, Any, str | None, Any]:
        """(model directory, tokenizer, examples of record `kind`, chat template, model): the
        inputs every preference-style method starts from, checked against each other."""
        from transformers import AutoModelForCausalLM

        from llmtrain.train.align.chat_data import load_examples

        model_dir = self.input_model_dir()
        tokenizer = self.load_tokenizer(model_dir)
        data = load_examples(self.section, kind, method=self.method, seed=self.seed)
        template = self.chat_template(data.train + data.validation, tokenizer, model_dir)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **self.model_kwargs())
        self.check_vocab(model, tokenizer, model_dir)
        return model_dir, tokenizer, data, template, model

    def load_reference(self, tokenizer: Any) -> Any:
        """The model of `<method>.ref_model`, or None (TRL then uses a frozen copy of the
        policy, or the base model under LoRA)."""
        if self.section.ref_model is None:
            return None
        from transformers import AutoModelForCausalLM

        ref_dir = self.input_model_dir(self.section.ref_model, key="ref_model")
        ref_model = AutoModelForCausalLM.from_pretrained(str(ref_dir), **self.model_kwargs())
        self.check_vocab(ref_model, tokenizer, ref_dir)
        return ref_model

    def fit(
        self,
        trainer_class: type,
        config: Any,
        model: Any,
        tokenizer: Any,
        rows: tuple[list[dict], list[dict]],
        *,
        peft_config: Any = None,
        **trainer_kwargs: Any,
    ) -> Any:
        """Build `trainer_class` (one of our RunDirCheckpoints trainers) with the training
        arguments `config` on this run's directory, its (train, validation) `rows`, callbacks
        and LoRA settings (default: a causal LM's), train it, return it."""
        train_rows, val_rows = rows
        trainer = trainer_class(
            run_dir=self.run_dir,
            keep_last=self.section.keep_last,
            model=model,
            args=config,
            train_dataset=self.dataset(train_rows, "train"),
            eval_dataset=self.dataset(val_rows, "validation") if val_rows else None,
            processing_class=tokenizer,
            callbacks=self.callbacks(),
            peft_config=peft_config if peft_config is not None else self.peft_config("CAUSAL_LM"),
            **trainer_kwargs,
        )
        self.train(trainer)
        return trainer

    def save_causal_lm(
        self, trainer: Any, tokenizer: Any, *, template: str | None, model_dir: Path
    ) -> Path:
        """final/ of a chat model: the end-of-turn token of `template` among the eos ids; LoRA
        adapters merged into the base model loaded again from `model_dir`."""
        from transformers import AutoModelForCausalLM

        from llmtrain.chat import end_of_turn_token_id

        return self.save_final(
            trainer,
            tokenizer,
            end_of_turn_id=end_of_turn_token_id(tokenizer, template) if template else None,
            base_model_dir=model_dir,
            load_base=lambda path: AutoModelForCausalLM.from_pretrained(
                str(path), **self.model_kwargs(quantized=False)
            ),
        )

    def save_final(self, trainer: Any, tokenizer: Any, **kwargs: Any) -> Path:
        """Write final/ (see write_final); a full disk or a directory that cannot be written
        gives one message naming the run directory."""
        with disk_errors(self.run_dir.path):
            return self.write_final(trainer, tokenizer, **kwargs)

    def write_final(
        self,
        trainer: Any,
        tokenizer: Any,
        *,
        end_of_turn_id: int | None = None,
        base_model_dir: Path | None = None,
        load_base: Any = None,
    ) -> Path:
        """Write final/ (every process takes part: ZeRO-3 gathers the weights).

        LoRA runs: the adapter goes to <run dir>/adapter; with `lora.merge` (the default)
        final/ is the base model (`load_base(base_model_dir)`) with the adapter merged in.
        """
        from accelerate.utils import is_peft_model

        staging = self.run_dir.path / ".final-staging"
        is_main = trainer.accelerator.is_main_process
        if not weights_finite(trainer.model, trainer.accelerator):
            raise nonfinite_final_error(self.method, self.run_dir.latest_checkpoint())
        if is_main and staging.exists():
            shutil.rmtree(staging)
        trainer.accelerator.wait_for_everyone()
        peft = is_peft_model(trainer.accelerator.unwrap_model(trainer.model))
        if peft:
            trainer.save_model(str(self.run_dir.path / "adapter"))
            if is_main:
                (self.run_dir.path / "adapter" / "training_args.bin").unlink(missing_ok=True)
        else:
            trainer.save_model(str(staging))
        trainer.accelerator.wait_for_everyone()
        if is_main:
            if peft and self.section.lora.merge:
                merge_adapter(load_base(base_model_dir), self.run_dir.path / "adapter", staging)
            elif peft:
                shutil.copytree(self.run_dir.path / "adapter", staging)

            def write(tmp: Path) -> None:
                for item in staging.iterdir():
                    os.replace(item, tmp / item.name)
                tokenizer.save_pretrained(str(tmp))
                finish_generation_config(tmp, tokenizer, end_of_turn_id)
                for leftover in ("training_args.bin", "README.md"):
                    (tmp / leftover).unlink(missing_ok=True)

            self.run_dir.save_final(write)
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(self.run_dir.path / ".datasets", ignore_errors=True)
            log.info("final model: %s", self.run_dir.final_dir)
        trainer.accelerator.wait_for_everyone()
        return self.run_dir.final_dir


def lora_config(lora: Any, task_type: str, modules_to_save: tuple[str, ...] = ()) -> Any:
    """peft's LoraConfig from a `lora:` section (None without one); `modules_to_save` are
    trained in full besides the section's own (the value or reward head `score`)."""
    if lora is None:
        return None
    from peft import LoraConfig

    save = list(dict.fromkeys([*lora.modules_to_save, *modules_to_save]))
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        modules_to_save=save or None,
        task_type=task_type,
    )


def merge_adapter(base: Any, adapter_dir: Path, out_dir: Path) -> None:
    """Save `base` with the LoRA adapter of `adapter_dir` merged into its weights."""
    from peft import PeftModel

    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir))


def qlora_quantization(kind: str, method: str) -> Any:
    import torch

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        bitsandbytes = None
    if not torch.cuda.is_available() or bitsandbytes is None:
        raise RecipeError(
            f"{method}.lora.quantization: {kind} (QLoRA) needs a CUDA GPU and the bitsandbytes "
            f"package; install bitsandbytes on a GPU machine or set {method}.lora.quantization: none"
        )
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def nonfinite_callback(guard: NonfiniteSteps, run_dir: RunDir) -> Any:
    """A TrainerCallback giving TRL's trainers pretraining's guard: a step whose gradient is
    not finite (a non-finite loss makes it so) is skipped (its gradients are dropped before the
    optimizer step, so AdamW leaves every weight and moment as it was); `guard` stops the run
    after max_nonfinite_steps in a row. (Under DeepSpeed the gradients live in the engine:
    only the checks of checkpoints and final/ apply.)"""
    from transformers import TrainerCallback

    class NonfiniteCallback(TrainerCallback):
        nonfinite = guard

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            nonfinite = gradients_nonfinite(model)
            if nonfinite is not None:
                for param in model.parameters():
                    param.grad = None
            guard.count(state.global_step + 1, nonfinite, run_dir.latest_checkpoint())
            return control

    return NonfiniteCallback()


def recipe_lr_callback(run: AlignRun) -> Any:
    """A TrainerCallback for a resume: the recipe's learning rate and schedule replace those the
    checkpoint's optimizer and scheduler state brought back (train/resume.py). Called once the
    checkpoint is loaded, it sets `run.training_begun`."""
    from transformers import TrainerCallback

    class RecipeLR(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
            run.training_begun = True
            peaks = [args.learning_rate] * len(optimizer.param_groups)
            apply_peak_lrs(optimizer, lr_scheduler, peaks)
            return control

    return RecipeLR()


def tracker_callback(tracker: Tracker, guard: NonfiniteSteps | None = None) -> Any:
    """A TrainerCallback that sends every Trainer log to `tracker` (with `skipped_steps`
    once `guard` has skipped one) and logs the last step."""
    from transformers import TrainerCallback

    class TrackerCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_log = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                record = {key: value for key, value in logs.items() if key not in SKIPPED_LOG_KEYS}
                if guard is not None and guard.skipped:
                    record["skipped_steps"] = guard.skipped
                tracker.log(state.global_step, record)
            return control

    return TrackerCallback()


TOKEN_COUNT_FILE = "num_tokens.json"


def save_token_count(trainer: Any, checkpoint: Path) -> None:
    """TRL's running `num_tokens` into a checkpoint (TRL keeps it outside its saved state, so
    a resumed run would count from zero)."""
    from llmtrain.compat import add_train_tokens

    try:
        total = add_train_tokens(trainer, 0)
    except AttributeError:  # a trainer that counts no tokens
        return
    (checkpoint / TOKEN_COUNT_FILE).write_text(json.dumps({"num_tokens": total}) + "\n")


def load_token_count(trainer: Any, checkpoint: Path) -> None:
    """Continue TRL's `num_tokens` from the count saved in `checkpoint` (if any)."""
    from llmtrain.compat import add_train_tokens

    path = checkpoint / TOKEN_COUNT_FILE
    if path.is_file():
        with contextlib.suppress(AttributeError):
            add_train_tokens(trainer, json.loads(path.read_text())["num_tokens"])


class RunDirCheckpoints:
    """Trainer mixin: checkpoints become <run dir>/checkpoints/step-N when complete, and weight
    decay follows our rule (every TRL-backed trainer of ours takes this mixin).

    Use as `class Trainer(RunDirCheckpoints, SFTTrainer)` and pass `run_dir=` and `keep_last=`.
    The Trainer writes checkpoint-N under output_dir (= checkpoints/); after every process has
    written its part, the main process renames it to step-N (one atomic rename: a step-N
    directory is always complete) and deletes all but the newest `keep_last`.
    """

    def __init__(self, *args: Any, run_dir: RunDir, keep_last: int, **kwargs: Any):
        self.run_dir = run_dir
        self.keep_last = keep_last
        super().__init__(*args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        step = self.state.global_step  # type: ignore[attr-defined]
        callbacks = self.callback_handler.callbacks  # type: ignore[attr-defined]
        guards = [
            c.nonfinite
            for c in callbacks
            if isinstance(getattr(c, "nonfinite", None), NonfiniteSteps)
        ]
        if any(guard.streak for guard in guards):  # as the loop shell: only after a good step
            return
        if not weights_finite(self.model, self.accelerator):  # type: ignore[attr-defined]
            if self.args.should_save:  # type: ignore[attr-defined]
                log.warning("step %d: the weights are not finite; no checkpoint written", step)
            return
        super()._save_checkpoint(model, trial)  # type: ignore[misc]
        self.accelerator.wait_for_everyone()  # type: ignore[attr-defined]
        if self.args.should_save:  # type: ignore[attr-defined]
            written = Path(self.args.output_dir) / f"checkpoint-{step}"  # type: ignore[attr-defined]
            save_token_count(self, written)
            with atomic_path(self.run_dir.checkpoint_dir(step)) as tmp:
                os.replace(written, tmp)
            self.run_dir.prune_checkpoints(self.keep_last)
        self.accelerator.wait_for_everyone()  # type: ignore[attr-defined]

    def get_decay_parameter_names(self, model: Any) -> list[str]:
        """Weight decay on weight matrices only, the rule of every stage (optim.param_groups);
        the Trainer's own rule also decays embeddings."""
        from llmtrain.train.optim import decayed_parameter_names

        return decayed_parameter_names(model)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """No README.md in the checkpoints folder (final/ documents itself by its config)."""
