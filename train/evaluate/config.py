"""The `eval` section of the recipe (no heavy imports: the recipe schema imports this)."""

from __future__ import annotations

from pydantic import Field

from llmtrain.schema import InputGlob, Section
from llmtrain.train.evaluate.generation import DecodingSection
from llmtrain.train.evaluate.tasks import TaskSection

CAUSAL_LM_STAGES = ("pretrain", "sft", "dpo", "ppo", "grpo")
"""Stages whose final/ is a causal LM that `eval` can score and generate with."""


class PerplexitySection(Section):
    data: bool = True
    """Score the data build's validation split (when the recipe has a data stage that ran)."""
    max_batches: int = Field(50, gt=0)
    """Validation batches of the data build to score."""
    files: list[InputGlob] = []
    """Text or jsonl files to score as well (documents joined by EOS)."""
    text_field: str = "text"
    max_tokens: int = Field(100_000, gt=0)
    """Tokens read from `files` at most."""
    seq_len: int | None = Field(None, gt=0)
    """Window length; default: data.seq_len, else the model's positions (at most 1024)."""


class EvalSection(Section):
    models: list[str] = []
    """Stage names (pretrain, sft, dpo, ppo, grpo) or model directories to evaluate; empty:
    every causal-LM stage of the recipe whose final/ exists."""
    after_each_stage: bool = True
    """`llmtrain run` evaluates each stage's model as soon as the stage finishes."""
    perplexity: PerplexitySection = PerplexitySection()
    tasks: list[TaskSection] = []
    batch_size: int = Field(16, gt=0)
    seed: int | None = None
    """Seed for sampling and few-shot draws; default: the recipe's seed."""
    decoding: DecodingSection | None = None
    """Decoding for generation tasks that set none of their own."""
