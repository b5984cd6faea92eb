"""Recipe sections of the alignment methods built on TRL: `sft:`, `rm:`, `dpo:`, `kto:`,
`orpo:` and `simpo:`.

    sft:
      data: [{path: ../runs/corpus/sft.jsonl}, {path: extra/*.parquet, weight: 0.5}]
      chat_template: chatml        # or: tokenizer (the default), or a Jinja string
      max_length: 2048
      packing: true
      lr: 2.0e-5
      epochs: 2
    dpo: {data: [{path: prefs.jsonl}], beta: 0.1, loss_type: [sigmoid]}

`AlignSection` holds what every TRL-backed method trains with (model, data, batch, optimizer,
schedule, precision, DeepSpeed, LoRA, intervals); the method sections add their own keys.
GRPO (`rl_config.py`) subclasses it too, so its field names are kept stable.

Light module: the recipe imports it to build the schema, so no torch or TRL here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmtrain.chat import BUILTIN_TEMPLATES
from llmtrain.distributed import DeepSpeedSection, FSDPSection, Precision, one_sharding_engine
from llmtrain.schema import InputGlob, InputPath, Section

OnTooLong = Literal["truncate", "drop"]

DPO_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
"""The loss types TRL's DPOTrainer implements (trl 1.16)."""


class DataFile(Section):
    """One file (or glob) of records in a method's data mixture."""

    path: InputGlob
    """A .jsonl/.json (also .gz/.zst), .parquet file, a `datasets` directory, or a glob."""
    weight: float = Field(default=1.0, gt=0)
    """Times each record is used per epoch: 2 repeats every record twice, 0.5 takes a seeded
    half (the validation share is set aside first, so repeats never leak into validation)."""
    split: str = "train"
    """Split to read from a `datasets` DatasetDict directory."""


class LoraSection(Section):
    """Train low-rank adapters (peft) instead of every weight; QLoRA with `quantization`."""

    r: int = Field(default=16, gt=0)
    """Rank of the adapters."""
    alpha: float = Field(default=32, gt=0)
    """Scale: the adapter output is multiplied by alpha / r."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. [q_proj, v_proj]); all-linear: every linear layer but the
    output head."""
    modules_to_save: list[str] = []
    """Modules trained in full beside the adapters (the reward head `score` is added for rm)."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """Load the frozen base weights quantized with bitsandbytes (QLoRA); needs a CUDA GPU and
    the bitsandbytes package."""
    merge: bool = True
    """Write final/ with the adapters merged into the weights (a plain model the next stage
    loads); the adapters alone are kept in <run dir>/adapter either way."""


SAMPLE_CONVERSATION = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
]


def check_template_renders(template: str) -> None:
    """Render a user and an assistant message with a Jinja chat template as transformers does
    (sandboxed), so that a template that cannot render is reported when the recipe is read."""
    from jinja2 import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        render_jinja_template([SAMPLE_CONVERSATION], chat_template=template)
    except TemplateError as exc:
        where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        raise ValueError(
            f"the Jinja template does not render a user and an assistant message{where}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


class AlignSection(Section):
    """What every TRL-backed alignment method trains with."""

    model: InputPath | None = None
    """Hugging Face model directory to start from; default <output_dir>/<previous stage>/final
    (sft: pretrain; rm, dpo, grpo: sft)."""
    tokenizer: InputPath | None = None
    """Tokenizer directory; default the model directory's own."""
    trust_remote_code: bool = False
    """Allow custom model or tokenizer code from the model directory."""
    data: list[DataFile] = Field(min_length=1)
    """Training files, mixed by weight."""
    validation_data: list[DataFile] = []
    """Validation files; when empty, validation_split of every training file is held out."""
    validation_split: float = Field(default=0.05, ge=0, lt=1)
    """Share of each training file held out for validation when validation_data is empty
    (at least one record per file when above 0; 0: no validation)."""
    on_bad_record: Literal["raise", "skip"] = "raise"
    """A malformed record (broken JSON, unknown role, empty assistant turn): stop with its file
    and line, or skip it and count it in the metrics."""
    chat_template: str = "tokenizer"
    """tokenizer: the tokenizer's own template; chatml: the built-in ChatML template (with
    {% generation %} markers); anything else is taken as a Jinja template."""
    max_length: int = Field(default=1024, gt=0)
    """Longest tokenized example (prompt and completion together)."""
    on_too_long: OnTooLong = "truncate"
    """An example over max_length: truncate it (counted) or drop it (counted)."""
    epochs: float = Field(default=1.0, gt=0)
    """Passes over the training mixture (ignored when max_steps is set)."""
    max_steps: int | None = Field(default=None, gt=0)
    """Optimizer steps to train for; default: as many as `epochs` take."""
    global_batch_size: int = Field(default=32, gt=0)
    """Examples (pairs for rm and dpo) per optimizer step over all processes
    (= micro_batch_size x processes x gradient accumulation steps)."""
    micro_batch_size: int = Field(default=4, gt=0)
    """Examples per process in one forward/backward pass."""
    lr: float = Field(default=2e-5, gt=0)
    """Peak learning rate."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """After warmup: cosine decay to min_lr_ratio x lr, linear decay to 0, or constant."""
    warmup_steps: int | None = Field(default=None, ge=0)
    """Linear warmup steps from 0; default warmup_ratio of the run."""
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    """Warmup as a share of the run's steps, when warmup_steps is not set."""
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    """Final learning rate as a share of lr (cosine only)."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW decoupled weight decay."""
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.999, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    grad_clip: float | None = Field(default=1.0, gt=0)
    """Clip the global gradient norm to this value (null: no clipping)."""
    precision: Precision = "bf16"
    """bf16, fp16 (GPU only) or fp32 (the CPU choice)."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    deepspeed: DeepSpeedSection | None = None
    """DeepSpeed ZeRO (see docs/recipes.md#deepspeed); without it (and fsdp) several processes
    use DDP."""
    fsdp: FSDPSection | None = None
    """FSDP2 through accelerate (docs/recipes.md#fsdp); instead of deepspeed; CUDA GPUs only
    (not ppo)."""
    lora: LoraSection | None = None
    """Train LoRA adapters instead of all weights."""
    log_every: int = Field(default=10, gt=0)
    """Write metrics every N steps (and at the last step)."""
    eval_every: int = Field(default=100, ge=0)
    """Validate every N steps and at the end (0: only at the end)."""
    save_every: int = Field(default=500, ge=0)
    """Checkpoint every N steps and at the end (0: only at the end)."""
    keep_last: int = Field(default=2, ge=0)
    """Checkpoints kept (older ones are deleted; 0 keeps all)."""
    max_nonfinite_steps: int = Field(default=5, gt=0)
    """A step with a non-finite loss or gradient is skipped (the weights stay as they were);
    this many in a row stop the run. Neither a checkpoint nor final/ is written from
    non-finite weights."""
    seed: int | None = None
    """Seed of data order, held-out split, dropout and new heads; default the recipe's seed."""

    @field_validator("chat_template")
    @classmethod
    def _check_chat_template(cls, value: str) -> str:
        if value == "tokenizer" or value in BUILTIN_TEMPLATES:
            return value
        if "{{" in value or "{%" in value:
            check_template_renders(value)
            return value
        raise ValueError(
            f"{value!r} is neither `tokenizer`, a built-in template "
            f"({', '.join(BUILTIN_TEMPLATES)}) nor a Jinja template (one with {{{{ }}}} or {{% %}})"
        )

    @model_validator(mode="after")
    def _check_common(self) -> AlignSection:
        one_sharding_engine(self)
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of "
                f"micro_batch_size {self.micro_batch_size}"
            )
        if self.min_lr_ratio and self.schedule != "cosine":
            raise ValueError(
                f"min_lr_ratio applies to the cosine schedule only (schedule is {self.schedule}); "
                "remove it or set schedule: cosine"
            )
        if self.warmup_steps is not None and self.max_steps and self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"warmup_steps {self.warmup_steps} must be below max_steps {self.max_steps}"
            )
        if self.precision == "fp16" and self.lora is not None and self.lora.quantization != "none":
            raise ValueError("QLoRA trains in bf16; set precision: bf16")
        if self.fsdp is not None and self.lora is not None and self.lora.quantization != "none":
            raise ValueError(
                "lora.quantization (QLoRA) does not run under fsdp here: FSDP would have to shard "
                "the 4-bit weights, which needs a storage dtype for them (bnb_4bit_quant_storage) "
                "that llmtrain does not set; use lora.quantization: none, or deepspeed"
            )
        return self


class SFTSection(AlignSection):
    """Supervised fine-tuning on chat (`messages`) or prompt/completion records."""

    assistant_only_loss: bool = True
    """Train on assistant tokens only (the template's {% generation %} spans; prompt/completion
    records: the completion); false: on every token of the conversation."""
    packing: bool = False
    """Pack several examples into each row of max_length tokens (best-fit decreasing, no example
    split); attention and loss never cross examples (position_ids restart per example)."""
    padding_free: bool = False
    """Without packing: put the micro-batch's examples in one row with no padding (position_ids
    restart per example). Pays off with flash-attention kernels on a GPU."""


class RMSection(AlignSection):
    """Reward model: a sequence classifier with one output trained on preference pairs."""

    lr: float = Field(default=1e-5, gt=0)
    """Peak learning rate."""
    margin_field: str | None = None
    """A numeric field of each record subtracted inside the loss: -log sigmoid(r_chosen -
    r_rejected - margin) (Llama 2); records without it get 0."""
    center_rewards_coefficient: float | None = Field(default=None, ge=0)
    """Weight of a penalty on the squared mean reward, which keeps rewards centred on 0 (0.01 is
    usual)."""


class DPOSection(AlignSection):
    """Direct preference optimisation against a frozen reference model."""

    lr: float = Field(default=1e-6, gt=0)
    """Peak learning rate."""
    beta: float = Field(default=0.1, gt=0)
    """Strength of the pull towards the reference (ipo: the regulariser tau)."""
    loss_type: list[str] = ["sigmoid"]
    """One or more of TRL's DPO losses: sigmoid, hinge, ipo, exo_pair, nca_pair, robust,
    bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm
    (several are summed with loss_weights; [sigmoid, sft] is RPO)."""
    loss_weights: list[float] | None = None
    """Weight of each loss_type (default 1 each)."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    """Share of preference labels assumed flipped (robust, exo_pair, aot)."""
    ref_model: InputPath | None = None
    """Reference model directory; default the input model (a frozen copy)."""
    precompute_ref_log_probs: bool = False
    """Score every pair with the reference once before training and free it (less memory)."""
    padding_free: bool = False
    """Put the chosen and rejected sequences of a micro-batch in one row with no padding
    (position_ids restart per sequence) for the policy and reference forwards."""

    @model_validator(mode="after")
    def _check_dpo(self) -> DPOSection:
        unknown = [name for name in self.loss_type if name not in DPO_LOSS_TYPES]
        if unknown:
            raise ValueError(
                f"loss_type: unknown {', '.join(map(repr, unknown))}; "
                f"choose from {', '.join(DPO_LOSS_TYPES)}"
            )
        if not self.loss_type:
            raise ValueError("loss_type: give at least one loss, e.g. [sigmoid]")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"loss_weights has {len(self.loss_weights)} values for {len(self.loss_type)} "
                "loss types; give one weight per loss type"
            )
        if "exo_pair" in self.loss_type and self.label_smoothing == 0:
            raise ValueError("loss_type exo_pair needs label_smoothing > 0 (the paper uses 1e-3)")
        return self


class KTOSection(AlignSection):
    """KTO (Ethayarajh et al. 2024) on TRL's KTOTrainer: unpaired good and bad completions
    ({prompt, completion, label: true/false}; preference pairs are split into one of each),
    against a frozen reference model."""

    lr: float = Field(default=1e-6, gt=0)
    """Peak learning rate."""
    beta: float = Field(default=0.1, gt=0)
    """Strength of the pull towards the reference."""
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    """kto: the paper's loss, with its KL estimate from mismatched prompt/completion pairs of
    the micro-batch; apo_zero_unpaired: APO-zero on unpaired data (no KL estimate)."""
    desirable_weight: float = Field(default=1.0, gt=0)
    """Weight of the loss on good completions (raise it when they are the fewer)."""
    undesirable_weight: float = Field(default=1.0, gt=0)
    """Weight of the loss on bad completions."""
    ref_model: InputPath | None = None
    """Reference model directory; default the input model (a frozen copy)."""
    precompute_ref_log_probs: bool = False
    """Score every example with the reference once before training and free it (less memory)."""

    @model_validator(mode="after")
    def _check_kto(self) -> KTOSection:
        if self.loss_type == "kto" and self.micro_batch_size < 2:
            raise ValueError(
                "loss_type kto estimates its KL term from the other completions of the "
                "micro-batch: set micro_batch_size to 2 or more"
            )
        return self


class ORPOSection(AlignSection):
    """ORPO (Hong et al. 2024): supervised loss on the chosen completion plus an odds-ratio
    preference term, on preference pairs; no reference model (it can replace SFT + DPO)."""

    lr: float = Field(default=8e-6, gt=0)
    """Peak learning rate."""
    beta: float = Field(default=0.1, gt=0)
    """Weight of the odds-ratio term (the paper's lambda; TRL's ORPOConfig.beta)."""
    padding_free: bool = False
    """As for dpo: the chosen and rejected sequences of a micro-batch in one row, no padding."""


class SimPOSection(AlignSection):
    """SimPO (Meng et al. 2024): the mean log-probability per token as the implicit reward, a
    target margin, no reference model, on preference pairs."""

    lr: float = Field(default=1e-6, gt=0)
    """Peak learning rate."""
    beta: float = Field(default=2.0, gt=0)
    """Scale of the reward difference (the paper uses 2 to 10)."""
    gamma: float = Field(default=1.0, ge=0)
    """Target reward margin (TRL's CPOConfig.simpo_gamma; the paper sets gamma / beta around
    0.5)."""
    sft_weight: float = Field(default=0.0, ge=0)
    """Weight of a supervised loss on the chosen completion (CPO-SimPO; TRL's cpo_alpha)."""
    padding_free: bool = False
    """As for dpo: the chosen and rejected sequences of a micro-batch in one row, no padding."""
