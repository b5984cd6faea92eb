"""`llmtrain align --method kto`: KTO on TRL's KTOTrainer (maintained in TRL 1.16).

Data: unpaired examples {prompt, completion, label} (chat_data's `unpaired` kind; preference
pairs count as one good and one bad example), tokenized and fitted to max_length by chat_data
as dpo's pairs are. TRL's own tokenization is skipped for them; what it adds after tokenizing
(the mismatched completions its KL estimate reads) we add the same way: each micro-batch's
completions rotated by one.

Policy: the input model (by default sft/final); reference: a frozen copy unless `kto.ref_model`
names another (with LoRA the base with adapters disabled).
"""

from __future__ import annotations

import logging
from typing import Any

from llmtrain.errors import InputDataError
from llmtrain.train.align.chat_data import tokenize_unpaired
from llmtrain.train.align.trl_glue import AlignRun, RunDirCheckpoints

log = logging.getLogger(__name__)


def with_kl_completions(dataset: Any, batch_size: int) -> Any:
    """Add KL_completion_ids: within each run of `batch_size` rows, every row gets the previous
    row's completion (the first row the last one's), as TRL's KTOTrainer builds them."""

    def rotate(batch: dict) -> dict:
        batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
        return batch

    return dataset.map(rotate, batched=True, batch_size=batch_size)


def kto_trainer_class() -> type:
    from trl import KTOTrainer

    class LLMTrainKTOTrainer(RunDirCheckpoints, KTOTrainer):
        """TRL's KTOTrainer on rows chat_data tokenized, with checkpoints in our run dir."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" not in dataset.column_names:
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if self.calculate_KL:
                return with_kl_completions(dataset, args.per_device_train_batch_size)
            return dataset

    return LLMTrainKTOTrainer


def unpaired_rows(
    run: AlignRun, data: Any, tokenizer: Any, template: str | None
) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(train rows, validation rows, data metrics), tokenized and fitted to max_length, with
    both kinds of example among the training rows."""
    train_rows, val_rows, metrics = run.fitted_rows(
        tokenize_unpaired, "examples", data, tokenizer, template
    )
    good = sum(row["label"] for row in train_rows)
    if good in (0, len(train_rows)):
        kind = "good (label: true)" if good == 0 else "bad (label: false)"
        raise InputDataError(
            f"kto: the training data has no {kind} examples; KTO learns from both kinds "
            "(for good examples alone, use sft)"
        )
    metrics["data/train_desirable"] = good
    metrics["data/train_undesirable"] = len(train_rows) - good
    return train_rows, val_rows, metrics


def run_kto(recipe: Any, args: Any) -> Any:
    """Train, write <output_dir>/kto/ and return the trainer."""
    from trl import KTOConfig

    section = recipe.section("kto")
    run = AlignRun(recipe, "kto", section)
    model_dir, tokenizer, data, template, model = run.load_policy("unpaired")
    ref_model = run.load_reference(tokenizer)
    train_rows, val_rows, data_metrics = unpaired_rows(run, data, tokenizer, template)

    run.start(resume=args.resume, overwrite=args.overwrite, data_metrics=data_metrics)
    config = run.training_args(
        KTOConfig,
        has_validation=bool(val_rows),
        max_length=None,  # examples are already fitted to max_length
        beta=section.beta,
        loss_type=section.loss_type,
        desirable_weight=section.desirable_weight,
        undesirable_weight=section.undesirable_weight,
        precompute_ref_log_probs=section.precompute_ref_log_probs,
        disable_dropout=True,
    )
    trainer = run.fit(
        kto_trainer_class(), config, model, tokenizer, (train_rows, val_rows), ref_model=ref_model
    )
    run.save_causal_lm(trainer, tokenizer, template=template, model_dir=model_dir)
    return trainer
