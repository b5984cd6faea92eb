"""Recipe sections of the reinforcement-learning methods: `ppo:` (ours); `grpo:`, `gspo:`,
`rloo:` and `online_dpo:` (TRL).

    ppo:
      data: [{path: ../runs/corpus/prompts.jsonl}]     # {"prompt": ..., "answer": ...}
      rewards:
        - {type: answer_match, pattern: 'The answer is (-?\\d+)\\.'}
        - {type: reward_model}                          # default <output_dir>/rm/final
      rollout_batch_size: 64
      kl_coef: 0.05
    grpo:
      data: [{path: ../runs/corpus/prompts.jsonl}]
      rewards: [{type: answer_match}]
      num_generations: 8

All extend the common alignment section (model, data, batch sizes, optimizer, precision,
DeepSpeed, intervals). Light module: no torch here.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from llmtrain.schema import InputPath, Section
from llmtrain.train.align.config import AlignSection

RewardType = Literal[
    "answer_match", "numeric_match", "format", "length_penalty", "reward_model", "function"
]


class RewardSection(Section):
    """One reward source; a method's rewards are summed with their weights."""

    type: RewardType
    """answer_match: 1 when the completion's final answer equals the record's answer (after
    normalisation); numeric_match: 1 when the numbers agree within tolerance; format: 1 when
    the completion matches `pattern`; length_penalty: -coef per token beyond target_length;
    reward_model: the score of a sequence classifier; function: a Python function (runs your
    code)."""
    name: str | None = None
    """Name in the metrics (reward/<name>); default: the type (numbered when repeated)."""
    weight: float = 1.0
    pattern: str | None = None
    """answer_match / numeric_match: regex whose first group is the answer (default: the text
    after the last 'answer is', else the last number); format: the regex a completion must
    match (searched, DOTALL)."""
    answer_field: str = "answer"
    """answer_match / numeric_match: the record field holding the reference answer."""
    tolerance: float = Field(default=1e-6, ge=0)
    """numeric_match: |predicted - reference| <= tolerance x max(1, |reference|)."""
    target_length: int = Field(default=256, ge=0)
    """length_penalty: completion tokens allowed before the penalty starts."""
    coef: float = Field(default=0.01, ge=0)
    """length_penalty: penalty per token beyond target_length."""
    path: InputPath | None = None
    """reward_model: a sequence-classifier directory with one output; default
    <output_dir>/rm/final (the rm stage)."""
    batch_size: int = Field(default=16, gt=0)
    """reward_model: sequences scored per forward pass."""
    function: str | None = None
    """function: `package.module:function`, imported and called as
    function(prompts, completions, **record_fields) -> list[float]. It runs your code."""

    @model_validator(mode="after")
    def _fields_for_type(self) -> RewardSection:
        if self.type == "function" and not self.function:
            raise ValueError("a reward of type function needs function: 'package.module:name'")
        if self.function and self.type != "function":
            raise ValueError(f"function applies to type function, not {self.type}")
        if self.function and ":" not in self.function:
            raise ValueError(f"function {self.function!r}: expected 'package.module:function_name'")
        if self.type == "format" and not self.pattern:
            raise ValueError("a reward of type format needs pattern: the regex to match")
        if self.pattern is not None:
            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regex ({exc})") from None
            if self.type in ("answer_match", "numeric_match") and compiled.groups < 1:
                raise ValueError(
                    "pattern needs a group around the answer, e.g. 'The answer is (-?\\d+)'"
                )
        if self.path is not None and self.type != "reward_model":
            raise ValueError(f"path applies to type reward_model, not {self.type}")
        return self


class RLSection(AlignSection):
    """What PPO and GRPO share: prompts, rewards and sampling."""

    rewards: list[RewardSection] = Field(min_length=1)
    """Reward sources, summed with their weights. (`max_length` of the common keys is not used:
    sequences are at most max_prompt_length + max_new_tokens.)"""
    max_prompt_length: int = Field(default=512, gt=0)
    """Longest prompt in tokens; longer ones are truncated from the left or dropped
    (on_too_long), and counted."""
    max_new_tokens: int = Field(default=256, gt=0)
    """Longest completion; sampling stops earlier at the end-of-sequence or end-of-turn token."""
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    """Sample among the k most likely tokens; 0: no limit."""
    chat_template: str = "tokenizer"
    """How message-list prompts are rendered: the tokenizer's template, chatml, or Jinja."""


class PPOSection(RLSection):
    """PPO (InstructGPT-style RLHF): rollouts, KL penalty to a frozen reference, GAE, clipped
    policy and value losses. `global_batch_size` is the minibatch of one optimizer step. With
    `lora`, the policy and the value model train adapters (the value head in full) and the
    reference is the policy with its adapters disabled."""

    rollout_batch_size: int = Field(default=64, gt=0)
    """Prompts sampled per PPO iteration over all processes (a multiple of global_batch_size)."""
    ppo_epochs: int = Field(default=4, gt=0)
    """Passes over each rollout batch."""
    max_steps: int | None = Field(default=None, gt=0)
    """PPO iterations (rollout + update); default: `epochs` passes over the prompts."""
    lr: float = Field(default=1e-6, gt=0)
    value_lr: float | None = Field(default=None, gt=0)
    """Learning rate of the value model; default: lr."""
    kl_coef: float = Field(default=0.05, ge=0)
    """Initial coefficient of the per-token KL penalty to the reference."""
    kl_target: float | None = Field(default=None, gt=0)
    """Adapt kl_coef towards this KL per sequence (Ziegler et al. 2019); null: fixed kl_coef."""
    kl_horizon: int = Field(default=10000, gt=0)
    """Adaptive KL: horizon (in sequences) of the proportional controller."""
    gamma: float = Field(default=1.0, ge=0, le=1)
    lam: float = Field(default=0.95, ge=0, le=1)
    """GAE lambda."""
    cliprange: float = Field(default=0.2, gt=0)
    """Policy ratio clip."""
    cliprange_value: float = Field(default=0.2, gt=0)
    """Value clip around the rollout's values."""
    vf_coef: float = Field(default=0.1, ge=0)
    """Weight of the value loss."""
    entropy_coef: float = Field(default=0.0, ge=0)
    """Weight of an entropy bonus (0: none)."""
    value_model: Literal["auto", "reward_model", "policy"] = "auto"
    """Where the value model starts: the reward model (its scalar head, read at every token) or
    the policy with a new scalar head; auto: the reward model when a reward_model reward shares
    the policy's tokenizer, else the policy."""
    reward_normalization: Literal["none", "running", "batch"] = "running"
    """Scores are standardised by running mean and std over rollouts, by the batch's, or not."""
    reward_clip: float | None = Field(default=10.0, gt=0)
    """Clip normalised scores to [-reward_clip, reward_clip]."""
    missing_eos_penalty: float | None = Field(default=1.0, ge=0)
    """Subtract this from the score of a completion that ends without an end token."""
    whiten_advantages: bool = True
    eval_max_prompts: int = Field(default=64, gt=0)
    """Held-out prompts scored (greedy) at each evaluation."""
    weight_decay: float = Field(default=0.0, ge=0)
    """On weight matrices only (not norms, biases or embeddings), as in every stage."""
    max_nonfinite_steps: int = Field(default=5, gt=0)
    """An update with a non-finite loss or gradient norm is skipped; this many iterations in a
    row with such updates stop the run (the last checkpoint stays intact)."""

    @model_validator(mode="after")
    def _rollout_is_whole_minibatches(self) -> PPOSection:
        if self.lora is not None and self.lora.quantization != "none":
            raise ValueError(
                f"lora.quantization: {self.lora.quantization} (QLoRA) is not offered for ppo "
                "(its policy and value model train from fp32 weights); set quantization: none"
            )
        if self.rollout_batch_size % self.global_batch_size:
            raise ValueError(
                f"rollout_batch_size {self.rollout_batch_size} is not a multiple of "
                f"global_batch_size {self.global_batch_size} (the minibatch of one update)"
            )
        return self


class GroupSection(RLSection):
    """What GRPO, GSPO, RLOO and online DPO share (all on TRL's GRPOTrainer design): a group of
    completions per prompt whose rewards are compared with each other (no value model), a
    reference model, generation with transformers or vLLM. `global_batch_size` counts
    completions (a multiple of num_generations)."""

    num_generations: int = Field(default=8, ge=2)
    """Completions sampled per prompt (the group)."""
    beta: float = Field(default=0.04, ge=0)
    """KL coefficient to the reference model (0: no reference model is loaded)."""
    num_iterations: int = Field(default=1, gt=0)
    """Updates per generated batch (mu)."""
    mask_truncated_completions: bool = False
    """Leave completions that hit max_new_tokens out of the loss."""
    lr: float = Field(default=1e-6, gt=0)
    use_vllm: bool = False
    """Generate with vLLM (needs vllm and a CUDA GPU)."""
    vllm_mode: Literal["colocate", "server"] = "colocate"
    """colocate: vLLM runs inside each training process and shares its GPU; server: a separate
    `trl vllm-serve` process (on GPUs of its own) at vllm_server_url."""
    vllm_gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1)
    """colocate: share of each GPU's memory vLLM may take."""
    vllm_server_url: str | None = None
    """server: base URL of the `trl vllm-serve` server; default http://localhost:8000."""

    @model_validator(mode="after")
    def _batch_is_whole_groups(self) -> GroupSection:
        if self.global_batch_size % self.num_generations:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} (completions per step) is not a "
                f"multiple of num_generations {self.num_generations}"
            )
        return self


class ClippedGroupSection(GroupSection):
    """GRPO, GSPO and RLOO: a policy-gradient loss with a clipped importance ratio."""

    epsilon: float = Field(default=0.2, gt=0)
    """Lower clip of the importance ratio."""
    epsilon_high: float | None = Field(default=None, gt=0)
    """Upper clip (DAPO's clip-higher); default: epsilon."""
    steps_per_generation: int = Field(default=1, gt=0)
    """Optimizer steps (of global_batch_size completions each) that one generated batch is
    split into: generation happens every steps_per_generation x num_iterations steps."""


class GRPOSection(ClippedGroupSection):
    """GRPO on TRL's GRPOTrainer: advantages relative to the group's mean reward."""

    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"] = "dapo"
    """How token losses are aggregated (TRL's loss types; dapo removes the length bias)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the reward std of the group, of the batch, or not (Dr. GRPO)."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """The importance ratio (and its clip) per token, or per sequence (the geometric mean of
    the token ratios: GSPO)."""


class GSPOSection(GRPOSection):
    """GSPO (Zheng et al. 2025): GRPO with one importance ratio per sequence, clipped in a much
    narrower range. On-policy (one update per generated batch) the ratio is 1 and GSPO's update
    equals GRPO's with loss_type grpo; the sequence ratio acts from the second update on a batch
    (num_iterations > 1)."""

    importance_sampling_level: Literal["token", "sequence"] = "sequence"
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"] = "grpo"
    """As in the paper: each sequence's token losses averaged, then the sequences'."""
    epsilon: float = Field(default=3e-4, gt=0)
    """Lower clip of the sequence ratio (the paper's 3e-4)."""
    epsilon_high: float | None = Field(default=4e-4, gt=0)
    """Upper clip of the sequence ratio (the paper's 4e-4)."""
    beta: float = Field(default=0.0, ge=0)
    """KL coefficient to the reference model (the paper uses none: no reference is loaded)."""
    num_iterations: int = Field(default=2, gt=0)
    """Updates per generated batch: from the second on, the sequence ratio and its clip act."""


class RLOOSection(ClippedGroupSection):
    """RLOO (Ahmadian et al. 2024) on TRL's RLOOTrainer: each completion's advantage is its
    reward minus the mean reward of the other completions of its prompt; the KL penalty to the
    reference is subtracted from the reward (not added to the loss)."""

    num_generations: int = Field(default=4, ge=2)
    """Completions sampled per prompt (k in the paper: 2 or 4)."""
    beta: float = Field(default=0.05, ge=0)
    """KL coefficient in the reward (0: no reference model is loaded)."""
    normalize_advantages: bool = False
    """Standardise the advantages over the generated batch (mean 0, std 1)."""
    reward_clip_range: tuple[float, float] | None = None
    """Clip the summed reward to [min, max] before the advantages; null: no clipping."""


class OnlineDPOSection(GroupSection):
    """Online DPO (Guo et al. 2024): two completions sampled per prompt from the current policy,
    ranked by the rewards, and DPO's loss on the pair against a frozen reference; our loss on
    TRL's GRPOTrainer. `global_batch_size` counts completions (two per prompt)."""

    num_generations: int = Field(default=2, ge=2, le=2)
    """Always 2: a pair per prompt."""
    beta: float = Field(default=0.1, gt=0)
    """Strength of the pull towards the reference (ipo: the regulariser tau)."""
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """DPO's loss on each pair."""
    lr: float = Field(default=5e-7, gt=0)

    @model_validator(mode="after")
    def _micro_batch_is_whole_pairs(self) -> OnlineDPOSection:
        if self.micro_batch_size % 2:
            raise ValueError(
                f"micro_batch_size {self.micro_batch_size} must be even: a micro-batch holds "
                "both completions of each of its prompts"
            )
        return self
