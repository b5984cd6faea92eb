"""`llmtrain align --method dpo`: direct preference optimisation with TRL's DPOTrainer.

Policy: the input model (by default sft/final); reference: a frozen copy of it unless
`dpo.ref_model` names another (with LoRA the reference is the base with adapters disabled; with
`precompute_ref_log_probs` it scores every pair once before training and is freed).

Padding-free: TRL 1.16 has switched DPO's padding-free mode off, so we provide it.
`PaddingFreeForward` lays the real tokens of the micro-batch's chosen and rejected sequences end
to end in one row with position_ids restarting per sequence and no attention mask (transformers
then keeps attention inside each sequence: a block-diagonal mask with SDPA/eager, varlen
kernels with flash-attention), and hands the per-token outputs back in TRL's padded layout, so
TRL's losses and metrics run unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from llmtrain.train.align.trl_glue import AlignRun, RunDirCheckpoints

log = logging.getLogger(__name__)

PER_TOKEN_FIELDS = (
    "log_probs",
    "entropy",
    "log_sum_sq_probs",
    "mean_logits",
    "is_top1",
    "label_mask",
)


class PaddingFreeForward:
    """Call a (fused-LM-head) causal LM on a padded batch as one unpadded row.

    Outputs per token (TRL's FusedCausalLMOutput fields, shape (batch, seq_len - 1): entry j
    scores token j + 1) come back in the padded layout, zero where the padded call would have
    had no token. Every other attribute is the wrapped model's.
    """

    def __init__(self, model: Any):
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(
        self, input_ids: Any, attention_mask: Any, labels: Any = None, **kwargs: Any
    ) -> Any:
        mask = attention_mask.bool()
        positions = attention_mask.long().cumsum(-1) - 1
        flat_ids = input_ids[mask][None]
        flat_positions = positions[mask][None]
        flat_labels = None
        if labels is not None:
            # a sequence's first token would be "predicted" from the previous sequence's last
            flat_labels = labels[mask][None].masked_fill(flat_positions == 0, -100)
        outputs = self._model(
            input_ids=flat_ids, position_ids=flat_positions, labels=flat_labels, **kwargs
        )
        # index of every real token in the flat row; entry j of a padded row scores token j + 1
        flat_index = mask.flatten().long().cumsum(0).view(mask.shape) - 1
        source = flat_index[:, 1:].clamp(min=1) - 1
        valid = mask[:, 1:] & mask[:, :-1]
        for name in PER_TOKEN_FIELDS:
            value = getattr(outputs, name, None)
            if value is None:
                continue
            outputs[name] = value[0][source].masked_fill(~valid, 0)
        return outputs


def dpo_trainer_class() -> type:
    from trl import DPOTrainer

    class LLMTrainDPOTrainer(RunDirCheckpoints, DPOTrainer):
        """TRL's DPOTrainer with our padding-free forward and checkpoints in our run dir."""

        def __init__(self, *args: Any, padding_free: bool = False, **kwargs: Any):
            self.padding_free_forward = padding_free
            super().__init__(*args, **kwargs)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in dataset.column_names:  # tokenized and fitted by chat_data
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        @contextlib.contextmanager
        def _padding_free_reference(self) -> Iterator[None]:
            if not self.padding_free_forward or self.ref_model is None:
                yield
                return
            reference = self.ref_model
            self.ref_model = PaddingFreeForward(reference)
            try:
                yield
            finally:
                self.ref_model = reference

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self.padding_free_forward:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            with self._padding_free_reference():
                return super().compute_loss(
                    PaddingFreeForward(model), inputs, return_outputs, num_items_in_batch
                )

        def compute_ref_log_probs(self, model, inputs):
            if self.padding_free_forward:
                model = PaddingFreeForward(model)
            return super().compute_ref_log_probs(model, inputs)

    return LLMTrainDPOTrainer


def run_dpo(recipe: Any, args: Any) -> Any:
    """Train, write <output_dir>/dpo/ and return the trainer."""
    from trl import DPOConfig

    section = recipe.section("dpo")
    run = AlignRun(recipe, "dpo", section)
    model_dir, tokenizer, data, template, model = run.load_policy("preference")
    ref_model = run.load_reference(tokenizer)
    train_rows, val_rows, data_metrics = run.preference_rows(data, tokenizer, template)

    run.start(resume=args.resume, overwrite=args.overwrite, data_metrics=data_metrics)
    config = run.training_args(
        DPOConfig,
        has_validation=bool(val_rows),
        max_length=None,  # pairs are already fitted to max_length
        beta=section.beta,
        loss_type=list(section.loss_type),
        loss_weights=section.loss_weights,
        label_smoothing=section.label_smoothing,
        precompute_ref_log_probs=section.precompute_ref_log_probs,
        padding_free=False,  # ours, see PaddingFreeForward
        disable_dropout=True,
    )
    trainer = run.fit(
        dpo_trainer_class(),
        config,
        model,
        tokenizer,
        (train_rows, val_rows),
        padding_free=section.padding_free,
        ref_model=ref_model,
    )
    run.save_causal_lm(trainer, tokenizer, template=template, model_dir=model_dir)
    return trainer
