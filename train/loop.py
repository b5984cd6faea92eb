"""The training loop shell of the stages we train ourselves (pretraining, PPO).

The shell owns everything around an optimizer step; a method owns the step itself:

    method = PretrainLoop(...)                  # implements Method (below)
    final_dir = TrainingLoop(method, run, accelerator, section).run(resume=..., overwrite=...)

The shell: the run directory and tracker (StageRun.start: every process checks, the main one
writes, with barriers), resume (engine: model and optimizer; scheduler; this rank's RNG and
data position; the method's own state), log / evaluation / checkpoint cadence, checkpoints
written by every rank under a temporary name and renamed by rank 0 once complete (keep_last),
non-finite steps (skipped by the method; `max_nonfinite_steps` in a row stop the run; a
checkpoint is written only after a good step, and neither a checkpoint nor final/ is written
from weights holding NaN or infinities), and final/.

`section` gives the cadence: log_every, eval_every, save_every (0: only at the end),
keep_last, max_nonfinite_steps, lr and grad_clip (named in the non-finite message).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from llmtrain.errors import RunDirError
from llmtrain.rundir import disk_errors
from llmtrain.train import checkpoint as ckpt
from llmtrain.train.engine import DeepSpeedEngine, Engine
from llmtrain.train.nonfinite import NonfiniteSteps, nonfinite_final_error, weights_finite
from llmtrain.train.resume import apply_peak_lrs
from llmtrain.train.stage_run import StageRun

log = logging.getLogger(__name__)


class StepResult(Protocol):
    nonfinite: str | None
    """What was not finite when the method skipped the update ("the loss is nan"), else None."""


class Method(Protocol):
    """One training method on the shell. `step` counts optimizer steps (or PPO iterations)
    taken; `train_step()` takes the next one and advances it."""

    step: int
    total_steps: int
    engine: Engine
    scheduler: Any
    evaluate_at_start: bool
    """Evaluate the untrained model as step 0 of the curve."""

    def train_step(self) -> StepResult: ...

    def step_record(self, result: Any, seconds: float, steps: int) -> dict[str, Any]:
        """The metrics logged for the step just taken (`steps` steps took `seconds` since the
        last logged one)."""

    def describe(self, record: dict[str, Any]) -> str:
        """One log line of a logged step."""

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics ({} when there is nothing to evaluate); every process takes part."""

    def start_record(self) -> dict[str, Any]:
        """Called once the run directory is ready (and the checkpoint loaded): what to log at
        step 0 when the run starts from scratch (data counts), possibly {}."""

    def state_dict(self) -> dict[str, Any]:
        """The method's own state for trainer_state.json (JSON; the main process writes it)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def rank_state(self) -> dict[str, Any]:
        """This process's own state (its data position), JSON."""

    def load_rank_state(self, state: dict[str, Any]) -> None: ...

    def save_final(self, directory: Path, state_dict: dict[str, torch.Tensor]) -> None:
        """Fill final/'s temporary directory from the full weights (main process only)."""


class TrainingLoop:
    def __init__(self, method: Method, run: StageRun, accelerator: Any, section: Any):
        self.method = method
        self.run_info = run
        self.stage = run.method
        self.run_dir = run.run_dir
        self.accelerator = accelerator
        self.section = section
        self.is_main = accelerator.is_main_process
        self.rank = accelerator.process_index
        self.world_size = accelerator.num_processes
        self.nonfinite = NonfiniteSteps(
            self.stage, section.max_nonfinite_steps, is_main=self.is_main
        )
        self.last_checkpoint: Path | None = None
        self.last_record: dict[str, Any] = {}
        """The last logged record, with its step."""

    # ------------------------------------------------------------------ run

    def run(self, *, resume: bool | str | Path | None, overwrite: bool) -> Path:
        """Train to the last step (from a checkpoint when resuming) and write final/."""
        run = self.run_info
        run.start(resume=resume, overwrite=overwrite)
        tracker = run.tracker
        try:
            with disk_errors(self.run_dir.path):  # disk full, not writable: one message
                if run.resume_from is not None:
                    self.load_checkpoint(run.resume_from)
                record = self.method.start_record()
                if record and run.resume_from is None:
                    tracker.log(0, record)
                self._loop(tracker)
                return self.write_final()
        finally:
            tracker.close()

    def _loop(self, tracker: Any) -> None:
        from tqdm.auto import tqdm

        method, section = self.method, self.section
        total = method.total_steps
        # a bar on an interactive terminal (rank 0); in batch logs the log lines instead
        interactive = self.is_main and sys.stderr.isatty()
        progress = tqdm(total=total, initial=method.step, disable=not interactive, desc=self.stage)
        window_time, window_steps = 0.0, 0
        if method.step == 0 and method.evaluate_at_start:
            baseline = method.evaluate()  # the untrained model, as the curve's starting point
            if baseline:
                tracker.log(0, baseline)
        method.engine.train()
        while method.step < total:
            started = time.perf_counter()
            result = method.train_step()
            window_time += time.perf_counter() - started
            window_steps += 1
            step = method.step  # the step just taken, 1-based
            self.nonfinite.count(step, result.nonfinite, self.last_checkpoint)
            last = step == total
            record: dict[str, Any] = {}
            if step % section.log_every == 0 or last:
                record.update(method.step_record(result, window_time, window_steps))
                if self.nonfinite.skipped:
                    record["skipped_steps"] = self.nonfinite.skipped
                window_time, window_steps = 0.0, 0
                if self.is_main and not interactive:
                    log.info("%s step %d/%d: %s", self.stage, step, total, method.describe(record))
            if (section.eval_every and step % section.eval_every == 0) or last:
                record.update(method.evaluate())
            if record:
                tracker.log(step, record)
                self.last_record = {"step": step, **record}
            if self.nonfinite.streak == 0 and (
                (section.save_every and step % section.save_every == 0) or last
            ):
                self.save_checkpoint()
            progress.update(1)
        progress.close()

    # ------------------------------------------------------------------ across processes

    def _barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def weights_finite(self) -> bool:
        """Whether every weight of every process's share is finite (collective)."""
        return weights_finite(self.method.engine.module, self.accelerator)

    # ------------------------------------------------------------------ checkpoints

    def zero_stage(self) -> int:
        engine = self.method.engine
        return engine.zero_stage if isinstance(engine, DeepSpeedEngine) else 0

    def trainer_state(self) -> dict[str, Any]:
        return {
            **self.method.state_dict(),
            "step": self.method.step,
            "world_size": self.world_size,
            "engine": self.method.engine.name,
            "zero_stage": self.zero_stage(),
            "nonfinite_streak": self.nonfinite.streak,
            "skipped_steps": self.nonfinite.skipped,
            "scheduler": self.method.scheduler.state_dict(),
        }

    def save_checkpoint(self) -> Path | None:
        """Every rank writes its part under a temporary name; rank 0 renames when all are done.
        Weights holding NaN or infinities are not saved (the last good checkpoint stays)."""
        step = self.method.step
        if not self.weights_finite():
            if self.is_main:
                log.warning("step %d: the weights are not finite; no checkpoint written", step)
            return None
        final = self.run_dir.checkpoint_dir(step)
        tmp = ckpt.temporary_dir(final)
        if self.is_main:
            ckpt.remove_stale(tmp)
            tmp.mkdir(parents=True)
        self._barrier()
        self.method.engine.save(tmp, self.is_main)
        ckpt.write_rank_state(tmp, self.rank, self.method.rank_state())
        if self.is_main:
            ckpt.write_trainer_state(tmp, self.trainer_state())
        self._barrier()
        if self.is_main:
            ckpt.publish(tmp, final)
            self.run_dir.prune_checkpoints(self.section.keep_last)
        self._barrier()
        self.last_checkpoint = final
        return final

    def load_checkpoint(self, directory: Path) -> None:
        method = self.method
        state = ckpt.read_trainer_state(directory)
        ckpt.check_compatible(
            state, world_size=self.world_size, engine=method.engine.name, where=directory
        )
        saved, stage = state.get("zero_stage", self.zero_stage()), self.zero_stage()
        if saved != stage:

            def label(zero: int) -> str:
                return f"DeepSpeed ZeRO-{zero}" if zero else "DDP (no ZeRO)"

            raise RunDirError(
                f"{directory} was written under {label(saved)} and this run uses {label(stage)}; "
                f"resume with {self.stage}.deepspeed.zero_stage: {saved} (converting a checkpoint "
                "to another ZeRO stage is not supported)"
            )
        optimizer = method.scheduler.optimizer
        peaks = [group["initial_lr"] for group in optimizer.param_groups]  # the recipe's
        try:
            method.engine.load(directory)
            rng, rank_state = ckpt.read_rank_state(directory, self.rank)
        except ckpt.LOAD_ERRORS as exc:  # a truncated file, weights of another shape
            raise ckpt.unreadable_checkpoint(directory, exc) from exc
        method.load_rank_state(rank_state)
        method.scheduler.load_state_dict(state["scheduler"])
        apply_peak_lrs(optimizer, method.scheduler, peaks)  # a changed lr/schedule applies
        method.load_state_dict(state)
        ckpt.restore_rng(rng)
        method.step = state["step"]
        self.nonfinite.streak = state.get("nonfinite_streak", 0)
        self.nonfinite.skipped = state.get("skipped_steps", 0)
        self.last_checkpoint = directory
        if self.is_main:
            log.info("%s: resumed from %s (step %d)", self.stage, directory, method.step)

    # ------------------------------------------------------------------ final model

    def write_final(self) -> Path:
        """final/: the trained weights as a Hugging Face directory (every process takes part:
        ZeRO-3 gathers the weights); refused when they hold NaN or infinities."""
        if not self.weights_finite():
            raise nonfinite_final_error(self.stage, self.last_checkpoint)
        state_dict = self.method.engine.full_state_dict()  # collective under ZeRO-3
        if self.is_main:
            self.run_dir.save_final(lambda tmp: self.method.save_final(tmp, state_dict))
            log.info("%s: final model written to %s", self.stage, self.run_dir.final_dir)
        self._barrier()
        return self.run_dir.final_dir
