"""`llmtrain align --method sft`: supervised fine-tuning on chat or prompt/completion records.

We render and tokenize the records ourselves (chat_data: the assistant mask from the template's
{% generation %} spans, truncation counted) and hand TRL's SFTTrainer ready `input_ids` and
`labels`; TRL packs (best-fit decreasing, no example split, position_ids restarting per
example so attention and loss stay inside each example) or runs padding-free, and trains.
"""

from __future__ import annotations

import logging
from typing import Any

from llmtrain.errors import InputDataError, StageInputError
from llmtrain.train.align.chat_data import (
    load_examples,
    missing_template_tokens,
    stop_token_trained,
    tokenize_sft,
    training_template,
)
from llmtrain.train.align.trl_glue import AlignRun, RunDirCheckpoints

log = logging.getLogger(__name__)


def sft_trainer_class() -> type:
    from trl import SFTTrainer

    class LLMTrainSFTTrainer(RunDirCheckpoints, SFTTrainer):
        """TRL's SFTTrainer writing checkpoints into our run directory."""

    return LLMTrainSFTTrainer


def add_template_tokens(model: Any, tokenizer: Any, tokens: list[str], *, lora: bool) -> None:
    """Add the special tokens a built-in template needs and grow the embeddings to match."""
    if lora:
        raise StageInputError(
            f"sft.chat_template: chatml needs the tokens {', '.join(tokens)}, which the tokenizer "
            "lacks, and LoRA cannot train new embeddings; fine-tune without sft.lora once, or "
            "use a tokenizer that has them (tokenizer stage) or the tokenizer's own template"
        )
    log.warning("adding the chat template's tokens %s to the tokenizer and model", tokens)
    tokenizer.add_tokens(tokens, special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)


def run_sft(recipe: Any, args: Any) -> Any:
    """Train, write <output_dir>/sft/ and return the trainer."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    section = recipe.section("sft")
    run = AlignRun(recipe, "sft", section)
    model_dir = run.input_model_dir()
    tokenizer = run.load_tokenizer(model_dir)
    data = load_examples(section, "sft", method="sft", seed=run.seed)
    template = run.chat_template(data.train + data.validation, tokenizer, model_dir)
    loss_template = None  # text prompt/completion records need no chat template
    if template is not None:
        loss_template = (
            training_template(tokenizer, template, method="sft")
            if section.assistant_only_loss
            else template
        )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **run.model_kwargs())
    missing = missing_template_tokens(tokenizer, section.chat_template) if template else []
    if missing:
        add_template_tokens(model, tokenizer, missing, lora=section.lora is not None)
    if (
        loss_template
        and section.assistant_only_loss
        and not stop_token_trained(tokenizer, loss_template)
    ):
        log.warning(
            "the chat template leaves the end-of-turn token after an assistant turn out of its "
            "{% generation %} span, so the model is not trained to stop; put the token inside "
            "the span, set sft.chat_template: chatml, or set sft.assistant_only_loss: false"
        )
    run.check_vocab(model, tokenizer, model_dir)

    tokenize = dict(
        max_length=section.max_length,
        on_too_long=section.on_too_long,
        assistant_only=section.assistant_only_loss,
    )
    train_rows, train_stats = tokenize_sft(data.train, tokenizer, loss_template, **tokenize)
    val_rows, val_stats = tokenize_sft(data.validation, tokenizer, loss_template, **tokenize)
    if len(train_rows) < section.global_batch_size:
        raise InputDataError(
            f"sft: {len(train_rows)} training examples are fewer than one batch "
            f"(global_batch_size {section.global_batch_size}); add data or lower "
            "sft.global_batch_size"
        )

    padding_free_only = section.padding_free and not section.packing
    data_metrics = {
        **data.metrics(),
        **train_stats.metrics("data/train"),
        **val_stats.metrics("data/val"),
    }
    run.start(resume=args.resume, overwrite=args.overwrite, data_metrics=data_metrics)
    config = run.training_args(
        SFTConfig,
        has_validation=bool(val_rows),
        # examples are already cut to max_length; TRL needs None for padding-free without packing
        max_length=None if padding_free_only else section.max_length,
        packing=section.packing,
        packing_strategy="bfd",
        padding_free=section.padding_free,
        assistant_only_loss=False,  # labels are built above
        completion_only_loss=False,
        shuffle_dataset=False,
    )
    trainer = run.fit(sft_trainer_class(), config, model, tokenizer, (train_rows, val_rows))
    run.save_causal_lm(trainer, tokenizer, template=template, model_dir=model_dir)
    return trainer
