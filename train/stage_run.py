"""What every training stage does around its training, whatever trains it (our loop shell or a
TRL trainer): check its inputs, seed, prepare its run directory and tracker, find its input
model and tokenizer, and finish the generation config of its final/.

    run = StageRun(recipe, "ppo", section)           # checks the recipe's input files, seeds
    model_dir = run.input_model_dir()
    tokenizer = run.load_tokenizer(model_dir)
    ...                                              # load and check the rest
    run.start(resume=..., overwrite=...)             # run directory + tracker; run.resume_from

Nothing is written before `start()`, so a mistake found while loading leaves no run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llmtrain.errors import StageInputError
from llmtrain.rundir import RunDir, disk_errors
from llmtrain.runtime import dist_env, seed_everything
from llmtrain.tracking import Tracker

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def step_of(checkpoint: Path | None) -> int | None:
    return int(checkpoint.name.split("-")[-1]) if checkpoint is not None else None


def barrier() -> None:
    """Wait for every process of a launch (nothing to wait for in a single process). Sets up
    accelerate's process group if no stage did yet (gloo on CPUs, as the stages use)."""
    if not dist_env().is_distributed:
        return
    import torch
    from accelerate import PartialState

    on_gpu = torch.cuda.is_available()
    PartialState(cpu=not on_gpu, backend=None if on_gpu else "gloo").wait_for_everyone()


class StageRun:
    """One run of a training stage: its inputs, seed, run directory and tracker."""

    def __init__(self, recipe: Any, stage: str, section: Any, inputs: tuple[str, ...] = ()):
        recipe.check_inputs(*(inputs or (stage,)))
        self.recipe = recipe
        self.method = stage
        self.section = section
        self.env = dist_env()
        self.seed = section.seed if section.seed is not None else recipe.seed
        seed_everything(self.seed)
        self.run_dir = RunDir(recipe.stage_dir(stage))
        self.resume_from: Path | None = None
        self.resume_changes: dict[str, Any] = {}
        """Settings changed on this resume: "<section>.<key>" -> (old, new)."""
        self.tracker: Tracker | None = None

    def start(
        self,
        *,
        resume: bool | str | Path | None = None,
        overwrite: bool = False,
        data_metrics: dict[str, Any] | None = None,
    ) -> None:
        """Prepare the run directory (see RunDir.start) and the tracker: every process checks
        (so every process raises the same error), then the main process writes while the
        others wait; `resume_from` is the checkpoint to continue from, if any. `data_metrics`
        are logged as the run's step-0 record (see log_data)."""
        config_yaml = self.recipe.to_yaml()
        self.resume_from = self.run_dir.start(
            config_yaml, resume=resume, overwrite=overwrite, is_main=False
        )
        config_yaml = self.resumed_config(config_yaml)
        barrier()
        with disk_errors(self.run_dir.path):
            if self.env.is_main:
                self.run_dir.start(config_yaml, resume=resume, overwrite=overwrite)
            barrier()
            self.start_tracker(step_of(self.resume_from))
        if self.resume_changes and self.tracker is not None:
            changed = {
                key: {"from": old, "to": new} for key, (old, new) in self.resume_changes.items()
            }
            self.tracker.log(step_of(self.resume_from), {"resumed": changed})
        if data_metrics is not None:
            self.log_data(data_metrics)

    def resumed_config(self, config_yaml: str) -> str:
        """The config.yaml of this run. On a resume, settings changed since the run's
        config.yaml are checked (train/resume.py: a change a resume cannot apply is refused),
        kept in `resume_changes` and recorded as a comment above the recipe."""
        from llmtrain.train.resume import (
            check_resume_changes,
            history_comment,
            previous_history,
            resume_changes,
        )

        self.resume_changes = {}
        path = self.run_dir.config_path
        if self.resume_from is None or not path.is_file():
            return config_yaml
        old = path.read_text(encoding="utf-8")
        kind = self.recipe.stage_kind(self.method)
        changes = resume_changes(old, config_yaml, (kind.name, *kind.extra_sections))
        check_resume_changes(changes, kind.name)
        self.resume_changes = changes
        step = step_of(self.resume_from)
        added = history_comment(step, changes) if changes else ""
        return previous_history(old) + added + config_yaml

    def start_tracker(self, resume_step: int | None) -> None:
        self.tracker = Tracker(
            self.run_dir,
            self.recipe.logging,
            run_name=f"{self.recipe.name}-{self.method}",
            config=self.recipe.model_dump(mode="json"),
            is_main=self.env.is_main,
            resume_step=resume_step,
        )

    def log_data(self, metrics: dict[str, Any]) -> None:
        """Data counts as the step-0 record of metrics.jsonl (once, not again on resume)."""
        for key, value in metrics.items():
            log.info("%s: %s", key, value)
        if self.resume_from is None and self.tracker is not None:
            self.tracker.log(0, metrics)

    # -- inputs --------------------------------------------------------------------------------

    def input_model_dir(self, path: Path | None = None, key: str = "model") -> Path:
        """The model directory to start from: `<method>.<key>`, else the input stage's final/."""
        given = path if path is not None else getattr(self.section, key)
        if given is None:
            stage = self.recipe.input_stage(self.method, "model")
            default = self.recipe.output_dir / stage / "final"
            if not default.is_dir():
                raise StageInputError(
                    f"{self.method}: no input model at {default}; run "
                    f"`{self.recipe.stage_kind(stage).shell_command(stage)}` first, or set "
                    f"{self.method}.{key} to a Hugging Face model directory"
                )
            given = default
        given = Path(given)
        if not given.is_dir():
            raise StageInputError(
                f"{self.method}.{key}: model directory not found: {given}; give a directory "
                "written by save_pretrained (config.json, weights, tokenizer)"
            )
        if not (given / "config.json").is_file():
            raise StageInputError(
                f"{self.method}.{key}: {given} has no config.json, so it is not a Hugging Face "
                "model directory; save the model with save_pretrained"
            )
        from llmtrain.train.models import check_model_kind

        check_model_kind(given, self.model_kinds(), f"{self.method}.{key}")
        return given

    def model_kinds(self) -> tuple[str, ...]:
        """The kinds of model this stage starts from: what its input stage writes, or what it
        writes itself (continuing a model of its own kind)."""
        own = self.recipe.stage_kind(self.method).produces
        source = self.recipe.input_stage(self.method, "model")
        read = self.recipe.stage_kind(source).produces if source else own
        return tuple(dict.fromkeys((read, own)))

    def load_tokenizer(self, model_dir: Path) -> Any:
        """The tokenizer of `<method>.tokenizer`, else of the model directory; pad = eos if unset."""
        from transformers import AutoTokenizer

        where = self.section.tokenizer or model_dir
        key = f"{self.method}.tokenizer" if self.section.tokenizer else f"{self.method}.model"
        if not any((Path(where) / name).is_file() for name in TOKENIZER_FILES):
            raise StageInputError(
                f"{key}: {where} has no tokenizer ({', '.join(TOKENIZER_FILES[:2])}); save the "
                f"tokenizer into the model directory (tokenizer.save_pretrained) or set "
                f"{self.method}.tokenizer to a tokenizer directory"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                str(where), trust_remote_code=self.section.trust_remote_code
            )
        except (OSError, ValueError, TypeError) as exc:
            raise StageInputError(f"{key}: cannot load the tokenizer in {where} ({exc})") from exc
        if self.section.tokenizer:  # not the model's own: as many tokens as the model's own
            from llmtrain.train.models import check_same_vocabulary

            fix = f"use the model's own tokenizer (remove {key}) or a model trained with this one"
            check_same_vocabulary(model_dir, tokenizer, self.method, key, fix)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise StageInputError(
                    f"{key}: the tokenizer in {where} has neither a pad nor an eos token; "
                    "add one (tokenizer.add_special_tokens) and save it again"
                )
            log.info("the tokenizer has no pad token; padding with eos %r", tokenizer.eos_token)
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def check_vocab(self, model: Any, tokenizer: Any, model_dir: Path) -> None:
        rows = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows:
            raise StageInputError(
                f"{self.method}: the tokenizer has {len(tokenizer)} tokens but the model in "
                f"{model_dir} has {rows} embedding rows; they do not belong together: use the "
                f"tokenizer the model was trained with (set {self.method}.tokenizer)"
            )


def finish_generation_config(model_dir: Path, tokenizer: Any, end_of_turn_id: int | None) -> None:
    """final/'s generation config: eos ids = the chat end-of-turn token and the tokenizer's
    eos; pad id set (causal LMs; a sequence classifier has no generation config)."""
    from transformers import GenerationConfig

    if not (model_dir / "generation_config.json").is_file():
        return
    config = GenerationConfig.from_pretrained(str(model_dir))
    eos = config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    wanted = [i for i in (end_of_turn_id, tokenizer.eos_token_id) if i is not None]
    config.eos_token_id = list(dict.fromkeys([*wanted, *eos]))
    config.pad_token_id = tokenizer.pad_token_id
    config.save_pretrained(str(model_dir))
