"""Recipe sections of pretraining: the top-level `model:` and `pretrain:`.

    model: {preset: llama-1b, max_position_embeddings: 4096}
    pretrain:
      objective: clm            # default: the one the model family trains with
      steps: 20000
      global_batch_size: 512    # sequences per optimizer step, over all processes
      micro_batch_size: 8       # sequences per process per forward pass
      lr: 3.0e-4
      deepspeed: {zero_stage: 2}

Light module: the recipe imports it to build the schema, so no torch here.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llmtrain.distributed import DeepSpeedSection, FSDPSection, Precision, one_sharding_engine
from llmtrain.schema import InputPath, Section
from llmtrain.train.presets import FAMILY_OBJECTIVE, MOE_FAMILIES, PRESETS

Objective = Literal["clm", "mlm", "span"]

# model: keys that size the network (None: the preset's value)
SIZE_KEYS = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "max_position_embeddings",
    "rope_theta",
    "tie_word_embeddings",
    "num_experts",
    "experts_per_token",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "router_aux_loss_coef",
)
MOE_KEYS = (
    "num_experts",
    "experts_per_token",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "router_aux_loss_coef",
)


class ModelSection(Section):
    """The network to pretrain: a preset with any dimension overridden, or an existing model."""

    preset: str | None = None
    """Architecture and size, e.g. llama-tiny, llama-1b, gpt3-125m, moe-tiny, bert-base, t5-small
    (`docs/recipes.md#model` lists them all). Every other key below overrides the preset."""
    path: InputPath | None = None
    """Instead of a preset: a Hugging Face model directory to continue pretraining from."""
    trust_remote_code: bool = False
    """Allow custom model code from `path` (off: only built-in transformers classes)."""
    vocab_size: int | None = Field(default=None, gt=0)
    """Embedding rows; default: the tokenizer's size rounded up to a multiple of 64."""
    hidden_size: int | None = Field(default=None, gt=0)
    num_layers: int | None = Field(default=None, gt=0)
    """Transformer blocks (T5: in the encoder and in the decoder)."""
    num_heads: int | None = Field(default=None, gt=0)
    num_kv_heads: int | None = Field(default=None, gt=0)
    """Key/value heads for grouped-query attention (Llama and MoE families); must divide
    num_heads."""
    head_dim: int | None = Field(default=None, gt=0)
    """Per-head width; default hidden_size / num_heads."""
    intermediate_size: int | None = Field(default=None, gt=0)
    """MLP width (dense layers)."""
    max_position_embeddings: int | None = Field(default=None, gt=0)
    """Longest sequence the model accepts (learned positions: the table size)."""
    rope_theta: float | None = Field(default=None, gt=0)
    """RoPE base frequency (Llama and MoE families)."""
    tie_word_embeddings: bool | None = None
    """Share the input embedding with the output projection."""
    num_experts: int | None = Field(default=None, gt=0)
    """MoE: routed experts per layer."""
    experts_per_token: int | None = Field(default=None, gt=0)
    """MoE: experts each token is routed to (top-k)."""
    moe_intermediate_size: int | None = Field(default=None, gt=0)
    """MoE: width of each routed expert's MLP."""
    shared_expert_intermediate_size: int | None = Field(default=None, ge=0)
    """MoE (qwen2_moe family only): width of the always-on shared expert."""
    router_aux_loss_coef: float | None = Field(default=None, ge=0)
    """MoE: weight of the router's load-balancing loss added to the training loss."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on attention and residual paths (0 is usual for pretraining)."""
    init_std: float = Field(default=0.02, gt=0)
    """Standard deviation of the normal initialisation of weights and embeddings."""
    scale_residual_init: bool = True
    """Initialise residual output projections with init_std / sqrt(2 x num_layers) (GPT-2)."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = None
    """Attention kernel; default sdpa where the class supports it, else eager.
    flash_attention_2 needs the flash-attn package and a CUDA GPU."""
    config: dict[str, Any] = {}
    """Any other key of the transformers config, passed as is (e.g. {rms_norm_eps: 1.0e-5})."""

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, preset: str | None) -> str | None:
        if preset is not None and preset not in PRESETS:
            close = difflib.get_close_matches(preset, PRESETS, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(f"unknown preset {preset!r}; {hint}presets: {', '.join(PRESETS)}")
        return preset

    @model_validator(mode="after")
    def _check(self) -> ModelSection:
        if (self.preset is None) == (self.path is None):
            raise ValueError("set exactly one of preset (a new model) and path (an existing one)")
        if self.path is not None:
            given = [key for key in SIZE_KEYS + ("vocab_size",) if getattr(self, key) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} cannot change a model loaded from path; "
                    "remove them or start from a preset"
                )
            return self
        dims = self.dims()
        family = dims["family"]
        if family not in MOE_FAMILIES:
            moe_given = [key for key in MOE_KEYS if getattr(self, key) is not None]
            if moe_given:
                raise ValueError(
                    f"{', '.join(moe_given)} only apply to mixture-of-experts presets; "
                    f"{self.preset} is a dense {family} model"
                )
        if self.shared_expert_intermediate_size is not None and family != "qwen2_moe":
            raise ValueError(
                f"shared_expert_intermediate_size: the {family} class has no shared expert; "
                "use a qwen2_moe preset (e.g. qwen2-moe-tiny)"
            )
        if dims.get("head_dim") is None and dims["hidden_size"] % dims["num_heads"]:
            raise ValueError(
                f"hidden_size {dims['hidden_size']} is not divisible by num_heads "
                f"{dims['num_heads']}; change one of them or set head_dim"
            )
        kv = dims.get("num_kv_heads")
        if kv is not None and dims["num_heads"] % kv:
            raise ValueError(f"num_kv_heads {kv} must divide num_heads {dims['num_heads']}")
        if family in MOE_FAMILIES and dims["experts_per_token"] > dims["num_experts"]:
            raise ValueError(
                f"experts_per_token {dims['experts_per_token']} exceeds num_experts "
                f"{dims['num_experts']}"
            )
        return self

    def dims(self) -> dict[str, Any]:
        """The preset's values with this section's overrides applied (preset models only)."""
        if self.preset is None:
            raise ValueError("dims() needs a preset")
        dims = dict(PRESETS[self.preset])
        for key in SIZE_KEYS:
            value = getattr(self, key)
            if value is not None:
                dims[key] = value
        return dims

    @property
    def family(self) -> str | None:
        """The preset's family (None for a model loaded from path: known once loaded)."""
        return PRESETS[self.preset]["family"] if self.preset else None


class MLMSection(Section):
    probability: float = Field(default=0.15, gt=0, lt=1)
    """Share of (non-special) positions chosen for prediction in each sequence."""
    mask_fraction: float = Field(default=0.8, ge=0, le=1)
    """Of the chosen positions: share replaced by the mask token."""
    random_fraction: float = Field(default=0.1, ge=0, le=1)
    """Of the chosen positions: share replaced by a random token (the rest stay unchanged)."""

    @model_validator(mode="after")
    def _fractions(self) -> MLMSection:
        if self.mask_fraction + self.random_fraction > 1:
            raise ValueError(
                f"mask_fraction {self.mask_fraction} + random_fraction {self.random_fraction} "
                "exceeds 1"
            )
        return self


class SpanSection(Section):
    noise_density: float = Field(default=0.15, gt=0, lt=1)
    """Share of tokens hidden behind sentinels (T5: 0.15)."""
    mean_span_length: float = Field(default=3.0, ge=1)
    """Mean length of a hidden span (T5: 3)."""


class PretrainSection(Section):
    """Pretraining from a data build: objective, batch, optimizer, schedule, parallelism."""

    steps: int = Field(gt=0)
    """Optimizer steps to train for."""
    objective: Objective | None = None
    """clm (next token), mlm (masked tokens, encoders) or span (T5 span corruption); default:
    the objective of the model family."""
    data: InputPath | None = None
    """Data build directory; default <output_dir>/data."""
    tokenizer: InputPath | None = None
    """Tokenizer directory; default: the one recorded in the data build's manifest."""
    seq_len: int | None = Field(default=None, gt=0)
    """Tokens per training sequence; default the data build's seq_len (windows are cut from
    the build's token stream, so any length works)."""
    global_batch_size: int = Field(default=256, gt=0)
    """Sequences per optimizer step over all processes (= micro_batch_size x processes x
    gradient accumulation steps)."""
    micro_batch_size: int = Field(default=8, gt=0)
    """Sequences per process in one forward/backward pass."""
    precision: Precision = "bf16"
    """bf16 (autocast, or DeepSpeed's bf16), fp16 (loss scaling; GPU only) or fp32."""
    lr: float = Field(default=3e-4, gt=0)
    """Peak learning rate."""
    schedule: Literal["cosine", "linear", "wsd", "constant"] = "cosine"
    """After warmup: cosine or linear decay to min_lr_ratio x lr over the remaining steps;
    wsd holds lr then decays linearly over the last decay_steps; constant holds it."""
    warmup_steps: int | None = Field(default=None, ge=0)
    """Linear warmup from 0; default 5% of steps, at most 2000."""
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """Final learning rate as a share of lr (cosine, linear, wsd)."""
    decay_steps: int | None = Field(default=None, gt=0)
    """wsd: length of the final decay; default 20% of steps."""
    weight_decay: float = Field(default=0.1, ge=0)
    """AdamW decoupled weight decay, on weight matrices only (not norms, biases, embeddings)."""
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    optimizer: Literal["adamw", "muon"] = "adamw"
    """adamw; or muon: torch's Muon for the hidden weight matrices at muon_lr, AdamW (lr,
    betas, eps) for embeddings, output head, norms and biases (train/muon.py; not under
    DeepSpeed)."""
    muon_lr: float = Field(default=0.02, gt=0)
    """Peak learning rate of Muon's matrices (optimizer: muon; the schedule scales it as lr)."""
    muon_momentum: float = Field(default=0.95, ge=0, lt=1)
    """Muon's momentum (Nesterov)."""
    grad_clip: float | None = Field(default=1.0, gt=0)
    """Clip the global gradient norm to this value (null: no clipping)."""
    mlm: MLMSection = MLMSection()
    span: SpanSection = SpanSection()
    log_every: int = Field(default=10, gt=0)
    """Write metrics every N steps (and at the last step)."""
    eval_every: int = Field(default=500, ge=0)
    """Validation loss and perplexity every N steps and at the end (0: only at the end)."""
    eval_batches: int | None = Field(default=50, gt=0)
    """Validation micro-batches over all processes (each process scores its share, so the set
    does not change with the world size); null: the whole validation split."""
    save_every: int = Field(default=1000, ge=0)
    """Checkpoint every N steps and at the end (0: only at the end)."""
    keep_last: int = Field(default=3, ge=0)
    """Checkpoints kept (older ones are deleted; 0 keeps all)."""
    max_nonfinite_steps: int = Field(default=5, gt=0)
    """A step with a non-finite loss or gradient norm is skipped; this many in a row stop the
    run (the last checkpoint stays intact)."""
    resume_on_changed_data: bool = False
    """--resume on a data build whose training shards changed since the checkpoint: continue
    on the new data (each source keeps its position) instead of refusing."""
    deepspeed: DeepSpeedSection | None = None
    """DeepSpeed ZeRO (see docs/recipes.md#deepspeed); without it (and fsdp) several processes
    use DDP."""
    fsdp: FSDPSection | None = None
    """FSDP2, torch's fully_shard (docs/recipes.md#fsdp); instead of deepspeed."""
    compile: bool = False
    """torch.compile the model."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    liger: bool = False
    """Liger fused kernels (RMSNorm, SwiGLU, RoPE); needs liger-kernel and a CUDA GPU."""
    float8: bool = False
    """torchao's float8 linear layers (bf16, CUDA compute capability 9.0+; train/float8.py)."""
    document_masking: bool = False
    """A token attends only within its own document of the packed window, positions restart
    at each document (clm only; train/packing.py)."""
    peak_tflops: float | None = Field(default=None, gt=0)
    """Peak TFLOP/s of one device for MFU; default from the table of known GPUs (CPUs: set it
    to report MFU)."""
    seed: int | None = None
    """Seed of initialisation, data order and masking; default the recipe's seed."""

    @model_validator(mode="after")
    def _check(self) -> PretrainSection:
        one_sharding_engine(self)
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of "
                f"micro_batch_size {self.micro_batch_size}"
            )
        if self.warmup_steps is not None and self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} must be below steps {self.steps}")
        if self.decay_steps is not None and self.decay_steps > self.steps:
            raise ValueError(f"decay_steps {self.decay_steps} exceeds steps {self.steps}")
        if self.schedule == "wsd":
            warmup, decay = self.resolved_warmup_steps, self.resolved_decay_steps
            if warmup + decay > self.steps:
                raise ValueError(
                    f"schedule wsd: warmup_steps {warmup} + decay_steps {decay} exceed steps "
                    f"{self.steps} (the decay would start during warmup); lower one of them"
                )
        return self

    @property
    def resolved_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(2000, self.steps // 20)

    @property
    def resolved_decay_steps(self) -> int:
        return self.decay_steps if self.decay_steps is not None else max(1, self.steps // 5)

    def objective_for(self, family: str) -> str:
        """The objective to train `family` with: the recipe's, or the family's own."""
        return self.objective or FAMILY_OBJECTIVE[family]
