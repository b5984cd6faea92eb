"""The `eval` section of the recipe (no heavy imports: the recipe schema imports this)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmtrain.schema import InputGlob, InputPath, Section
from llmtrain.train.evaluate.generation import DecodingSection
from llmtrain.train.evaluate.tasks import TaskSection


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


class LmEvalSection(Section):
    """Benchmarks of lm-evaluation-harness (the optional extra: pip install 'llmtrain[eval]')."""

    tasks: list[str] = Field(min_length=1)
    """lm-eval task, group or tag names (hellaswag, arc_easy, mmlu, gsm8k, ...), including the
    tasks defined by the YAML files in include_path."""
    num_fewshot: int | None = Field(None, ge=0)
    """Few-shot examples per question; default: each task's own setting (0 when it has none)."""
    limit: int | float | None = Field(None, gt=0)
    """Questions per task at most: a count, or a fraction of each task when below 1."""
    apply_chat_template: bool | None = None
    """Render prompts (few-shot examples as earlier turns) with the model's chat template;
    default: on for chat models, i.e. a tokenizer with a chat template on the model of a
    post-training stage (sft, dpo, ppo, grpo, or a directory `.../<that stage>/final`)."""
    batch_size: int | None = Field(None, gt=0)
    """Default: eval.batch_size."""
    max_length: int | None = Field(None, gt=0)
    """Tokens of context at most (longer inputs are cut, rolling log-likelihoods use windows
    of it); default: the model's max_position_embeddings, lm-eval's own default. A model
    pretrained on shorter sequences than its positions scores better at its pretrain.seq_len."""
    include_path: list[InputPath] = []
    """Folders of your own task YAMLs (lm-eval's task format; local data with
    `dataset_path: json` and `dataset_kwargs: {data_files: ...}`)."""
    confirm_run_unsafe_code: bool = False
    """Run the code the model writes, for tasks lm-eval marks unsafe (humaneval, mbpp, ...;
    their metric also needs HF_ALLOW_CODE_EVAL=1)."""
    backend: Literal["auto", "hf", "vllm"] = "auto"
    """hf: lm-eval's Hugging Face backend on the model already loaded for eval; vllm: its vLLM
    backend on the model directory; auto: vllm when the vllm package and a CUDA GPU are there."""


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
    lm_eval: LmEvalSection | None = None
    """Standard benchmarks through lm-evaluation-harness, run on each model after `tasks`."""
