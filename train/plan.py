"""`llmtrain plan RECIPE`: what a pretraining run will cost, before anything runs.

From the recipe's `model:` and `pretrain:` sections (no data, no weights: the model is built on
the meta device):

- parameters: total, non-embedding, and active per token (MoE: only the top-k experts);
- training FLOPs per token (flops.py: 6 x matmul weights + attention, PaLM appendix B), tokens
  of the run, Chinchilla-optimal tokens (20 per parameter) and the Chinchilla fit
  L(N, D) = 1.69 + 406.4 / N^0.34 + 410.7 / D^0.28 (Hoffmann et al. 2022, approach 3);
- memory per GPU for ZeRO stages 0-3 with and without CPU offload: model states (ZeRO paper,
  with the byte counts of the engines llmtrain uses) plus activations of one micro-batch and
  the logits; whether that fits the GPU; the same for FSDP2 (fsdp_memory_rows);
- wall time on the given GPUs at a given MFU.

The memory figures are estimates; docs/benchmarks.md compares them with measured peaks.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmtrain.compat import attn_implementation
from llmtrain.errors import RecipeError
from llmtrain.recipe import Recipe
from llmtrain.train.config import SpanSection
from llmtrain.train.presets import MOE_FAMILIES

GIB = 2**30
TOKENS_PER_PARAMETER = 20.0
"""Chinchilla's compute-optimal ratio of training tokens to parameters."""
USABLE_MEMORY = 0.9
"""Share of a GPU's memory a run may plan to use (the rest: CUDA context, allocator
fragmentation, communication buckets)."""

GPU_MEMORY_GIB: list[tuple[str, float]] = [
    ("H200", 141.0),
    ("GH200", 96.0),
    ("H100 NVL", 94.0),
    ("H100", 80.0),
    ("H800", 80.0),
    ("B200", 180.0),
    ("A100-40GB", 40.0),
    ("A100", 80.0),
    ("A800", 80.0),
    ("L40S", 48.0),
    ("L4", 24.0),
    ("A10G", 24.0),
    ("A10", 24.0),
    ("RTX 4090", 24.0),
    ("RTX 3090", 24.0),
    ("V100", 32.0),
    ("MI300X", 192.0),
    ("MI250X", 128.0),
]
"""Memory of one device by name, matched like flops.PEAK_TFLOPS (first pattern found wins)."""


def gpu_memory_gib(name: str) -> float | None:
    lowered = name.lower()
    for pattern, memory in GPU_MEMORY_GIB:
        if pattern.lower() in lowered:
            return memory
    return None


# ---------------------------------------------------------------------------------------------
# Memory model


@dataclass(frozen=True)
class MemoryRow:
    zero_stage: int
    offload: str  # "none" | "optimizer" | "optimizer+params"
    states_gib: float
    """Weights, gradients and optimizer states on one GPU."""
    activations_gib: float
    """Activations of one micro-batch, logits included."""
    cpu_gib: float
    """What offload moves to the CPU, per GPU process."""
    fits: bool | None
    buffers_gib: float = 0.0
    """DeepSpeed's gradient-reduction and parameter-prefetch buckets (deepspeed_buffer_bytes)."""

    @property
    def total_gib(self) -> float:
        return self.states_gib + self.activations_gib + self.buffers_gib


def model_state_bytes(
    params: int, *, zero_stage: int, world: int, precision: str, offload: str
) -> tuple[float, float]:
    """(bytes on one GPU, bytes moved to the CPU per process) of weights, gradients and AdamW.

    Stage 0 is llmtrain's accelerate path: fp32 weights, fp32 gradients and two fp32 Adam
    moments (16 bytes per parameter, autocast or not). ZeRO 1-3 is DeepSpeed: weights and
    gradients in the training precision (w bytes), an fp32 master copy and two moments (12
    bytes) sharded over the data-parallel group from stage 1, gradients from stage 2, weights
    from stage 3. Offloading the optimizer moves the 12 bytes (and DeepSpeed's fp32 gradient
    partition, 4 bytes) to the CPU; offloading parameters moves the weights too.
    """
    if zero_stage == 0:
        return 16.0 * params, 0.0
    w = 4.0 if precision == "fp32" else 2.0
    optimizer = 12.0 * params / world
    weights = w * params / world if zero_stage == 3 else w * params
    grads = w * params / world if zero_stage >= 2 else w * params
    cpu = 0.0
    if offload != "none":
        cpu += optimizer + 4.0 * params / world
        optimizer = 0.0
    if offload == "optimizer+params":
        cpu += weights
        weights = 0.0
    return weights + grads + optimizer, cpu


REDUCE_BUCKET_ELEMENTS = 500_000_000
"""DeepSpeed's default zero_optimization.reduce_bucket_size (elements)."""
PREFETCH_BUCKET_ELEMENTS = 50_000_000
"""DeepSpeed's default stage3_prefetch_bucket_size (elements)."""


def deepspeed_buffer_bytes(
    zero_stage: int,
    precision: str,
    *,
    reduce_bucket: int = REDUCE_BUCKET_ELEMENTS,
    prefetch_bucket: int = PREFETCH_BUCKET_ELEMENTS,
) -> float:
    """Bytes of the buckets DeepSpeed allocates whole on the GPU whatever the model's size.

    With contiguous_gradients (its default) ZeRO 1-3 reduce gradients through a bucket of
    reduce_bucket_size elements: fp32 under ZeRO 1 (its accumulator), the training precision
    under ZeRO 2 and 3; ZeRO 3 also gathers up to stage3_prefetch_bucket_size parameters ahead
    of the layer that needs them. At the defaults that is 1.9 GiB (ZeRO 1), 0.9 GiB (ZeRO 2,
    bf16), 1.0 GiB (ZeRO 3, bf16): a DeepSpeed JSON that lowers them (HF's "auto" sets
    hidden_size squared) lowers this term.
    """
    if zero_stage == 0:
        return 0.0
    w = 4.0 if precision == "fp32" else 2.0
    if zero_stage == 1:
        return 4.0 * reduce_bucket
    if zero_stage == 2:
        return w * reduce_bucket
    return w * (reduce_bucket + prefetch_bucket)


def activation_elements_per_token(config: Any, family: str, seq_len: int) -> float:
    """Tensors one decoder/encoder layer keeps for backward, in elements per token.

    Counted per block as what autograd saves: the norms' inputs and outputs, q, k, v (and their
    rotated copies for RoPE), the attention output (SDPA and flash attention keep no score
    matrix; eager attention keeps scores and probabilities), the MLP's projections and
    activation (a gated MLP keeps gate, up, act(gate) and their product). MoE: every token's
    top-k experts plus a shared expert.
    """
    hidden = _get(config, "hidden_size", "n_embd")
    heads = _get(config, "num_attention_heads", "n_head")
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    q = heads * head_dim
    eager = attn_implementation(config) == "eager"
    scores = 2.0 * heads * seq_len if eager else 0.0
    if family == "gpt2":
        inner = getattr(config, "n_inner", None) or 4 * hidden
        return 2 * hidden + 3 * q + q + 2 * hidden + 2 * inner + scores
    if family in ("bert", "modernbert"):
        inner = config.intermediate_size
        mlp = 4 * inner if family == "modernbert" else 2 * inner
        return 4 * hidden + 4 * q + mlp + scores
    if family in MOE_FAMILIES:
        top_k = config.num_experts_per_tok
        experts = getattr(config, "num_experts", None) or config.num_local_experts
        moe_inner = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
        shared = getattr(config, "shared_expert_intermediate_size", 0) or 0
        mlp = 4.0 * (top_k * moe_inner + shared) + experts + top_k * hidden
    else:  # llama
        mlp = 4.0 * config.intermediate_size
    return 4 * hidden + 2 * q + 3 * kv + q + mlp + scores


def activation_bytes(
    config: Any,
    family: str,
    *,
    micro_batch_size: int,
    seq_len: int,
    precision: str,
    activation_checkpointing: bool,
) -> float:
    """Activations of one micro-batch of a decoder or encoder, with the logits and the loss.

    With activation checkpointing only each layer's input is kept, plus one layer's tensors
    while it is recomputed. The logits are kept in the training precision, upcast to fp32 for
    the loss, and their fp32 gradient exists during backward (8 bytes beyond the first copy).
    """
    element = 4.0 if precision == "fp32" else 2.0
    layers = _get(config, "num_hidden_layers", "n_layer")
    hidden = _get(config, "hidden_size", "n_embd")
    tokens = micro_batch_size * seq_len
    per_layer = activation_elements_per_token(config, family, seq_len)
    if activation_checkpointing:
        kept = layers * hidden + per_layer
    else:
        kept = layers * per_layer
    logits = config.vocab_size * (element + 8.0)
    return tokens * (kept * element + logits)


def t5_activation_bytes(
    config: Any,
    *,
    micro_batch_size: int,
    input_len: int,
    target_len: int,
    precision: str,
    activation_checkpointing: bool,
) -> float:
    """The same count for T5: encoder layers over the input, decoder layers (self and cross
    attention) over the target, the cross-attention keys and values over the input."""
    element = 4.0 if precision == "fp32" else 2.0
    d_model, width, ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    mlp = (4 if config.is_gated_act else 2) * ff
    encoder = 4 * d_model + 4 * width + mlp
    decoder = 6 * d_model + 6 * width + mlp
    enc_layers = config.num_layers
    dec_layers = config.num_decoder_layers or config.num_layers
    if activation_checkpointing:
        per_example = (enc_layers * input_len + dec_layers * target_len) * d_model + max(
            encoder * input_len, decoder * target_len
        )
    else:
        per_example = enc_layers * encoder * input_len + dec_layers * (
            decoder * target_len + 2 * width * input_len
        )
    logits = target_len * config.vocab_size * (element + 8.0)
    return micro_batch_size * (per_example * element + logits)


def _get(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise AttributeError(f"{type(config).__name__} has none of {names}")


def memory_rows(
    params: int,
    activations: float,
    *,
    world: int,
    precision: str,
    gpu_gib: float | None,
) -> list[MemoryRow]:
    rows = []
    for stage, offload in [
        (0, "none"),
        (1, "none"),
        (1, "optimizer"),
        (2, "none"),
        (2, "optimizer"),
        (3, "none"),
        (3, "optimizer"),
        (3, "optimizer+params"),
    ]:
        gpu, cpu = model_state_bytes(
            params, zero_stage=stage, world=world, precision=precision, offload=offload
        )
        buffers = deepspeed_buffer_bytes(stage, precision)
        total = (gpu + activations + buffers) / GIB
        fits = None if gpu_gib is None else total <= USABLE_MEMORY * gpu_gib
        rows.append(
            MemoryRow(stage, offload, gpu / GIB, activations / GIB, cpu / GIB, fits, buffers / GIB)
        )
    return rows


# ---------------------------------------------------------------------------------------------
# FSDP2 memory (pretrain.fsdp; train/fsdp.py)


@dataclass(frozen=True)
class FSDPRow:
    reshard_after_forward: bool
    cpu_offload: bool
    states_gib: float
    """This GPU's shards of fp32 weights, gradients and AdamW moments."""
    gathered_gib: float
    """Parameters and gradients held unsharded while a unit computes."""
    activations_gib: float
    cpu_gib: float
    fits: bool | None

    @property
    def total_gib(self) -> float:
        return self.states_gib + self.gathered_gib + self.activations_gib


def fsdp_state_bytes(
    params: int, root_params: int, blocks: int, *, world: int, precision: str,
    reshard_after_forward: bool, cpu_offload: bool,
) -> tuple[float, float, float]:  # fmt: skip
    """(sharded states on one GPU, gathered parameters and gradients, CPU bytes per process).

    Sharded: fp32 weights, fp32 gradients (reduced in fp32) and two fp32 AdamW moments, 16
    bytes per parameter over the processes (ZeRO-3's split); cpu_offload moves them to the
    CPU. Gathered, in the compute precision (w bytes): the root unit (embeddings, head: kept
    from forward to backward) and, with reshard_after_forward, two blocks (the one computing
    and the one prefetched) plus one block's unsharded gradients before their reduce-scatter
    (w + 4 bytes: cast to fp32 to reduce); without it every block's parameters stay gathered
    from forward to backward."""
    w = 4.0 if precision == "fp32" else 2.0
    block = (params - root_params) / max(blocks, 1)
    sharded = 16.0 * params / world
    held_blocks = (2 * block if reshard_after_forward else params - root_params) * w
    gathered = root_params * w + held_blocks + block * (w + 4.0)
    if cpu_offload:
        return 0.0, gathered, sharded
    return sharded, gathered, 0.0


def fsdp_memory_rows(
    params: int, root_params: int, blocks: int, activations: float, *, world: int,
    precision: str, gpu_gib: float | None,
) -> list[FSDPRow]:  # fmt: skip
    rows = []
    for reshard, offload in [(True, False), (False, False), (True, True)]:
        gpu, gathered, cpu = fsdp_state_bytes(
            params, root_params, blocks, world=world, precision=precision,
            reshard_after_forward=reshard, cpu_offload=offload,
        )  # fmt: skip
        total = (gpu + gathered + activations) / GIB
        fits = None if gpu_gib is None else total <= USABLE_MEMORY * gpu_gib
        rows.append(
            FSDPRow(reshard, offload, gpu / GIB, gathered / GIB, activations / GIB, cpu / GIB, fits)
        )
    return rows


def transformer_blocks(config: Any) -> int:
    """Blocks FSDP2 shards one by one (T5: the encoder's and the decoder's)."""
    layers = _get(config, "num_hidden_layers", "num_layers", "n_layer")
    return layers + int(getattr(config, "num_decoder_layers", None) or 0)


def format_fsdp(plan: Any) -> list[str]:
    """The FSDP2 table of `llmtrain plan`."""
    lines = [
        "",
        "| FSDP2 | states GiB | gathered GiB | activations GiB | total GiB | CPU GiB/process "
        "| fits |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    recipe = plan.recipe_fsdp
    for row in plan.fsdp_memory:
        label = ("reshard" if row.reshard_after_forward else "no reshard") + (
            " + cpu offload" if row.cpu_offload else ""
        )
        if recipe and (row.reshard_after_forward, row.cpu_offload) == recipe:
            label += " (recipe)"
        fits = "?" if row.fits is None else ("yes" if row.fits else "no")
        lines.append(
            f"| {label} | {_gib(row.states_gib)} | {_gib(row.gathered_gib)} | "
            f"{_gib(row.activations_gib)} | {_gib(row.total_gib)} | {_gib(row.cpu_gib)} | "
            f"{fits} |"
        )
    lines.append(
        "\nFSDP2: states are this GPU's shards (16 bytes per parameter / GPUs); gathered: the "
        "root unit (embeddings, head) and the blocks unsharded while they compute"
    )
    return lines


def chinchilla_loss(params: float, tokens: float) -> float:
    """Hoffmann et al. (2022), approach 3: L(N, D) = E + A / N^alpha + B / D^beta."""
    return 1.69 + 406.4 / params**0.34 + 410.7 / tokens**0.28


# ---------------------------------------------------------------------------------------------
# The plan of a recipe


@dataclass
class Plan:
    model: str
    family: str
    vocab_size: int
    vocab_from: str
    params_total: int
    params_embedding: int
    params_non_embedding: int
    params_active: int
    """Parameters a token uses: every parameter for dense models, top-k experts for MoE."""
    seq_len: int
    objective: str
    flops_per_token: float
    tokens: float
    """Training tokens of the run (steps x global batch x sequence length)."""
    chinchilla_tokens: float
    predicted_loss: float
    gpus: int
    gpu: str
    gpu_memory_gib: float | None
    precision: str
    micro_batch_size: int
    activation_checkpointing: bool
    memory: list[MemoryRow]
    recipe_zero_stage: int
    mfu: float
    peak_tflops: float | None
    total_flops: float
    wall_hours: float | None
    muon: str = ""
    """With pretrain.optimizer muon: its parameters and the optimizer memory it saves."""
    float8: str = ""
    """With pretrain.float8: what it changes on the planned GPU, or why it is refused."""
    fsdp_memory: list[FSDPRow] = field(default_factory=list)
    """The same memory under FSDP2 (pretrain.fsdp)."""
    recipe_fsdp: tuple[bool, bool] | None = None
    """(reshard_after_forward, cpu_offload) of the recipe's fsdp section."""

    def to_json(self) -> str:
        data = asdict(self)
        for row, mem in zip(data["memory"], self.memory):
            row["total_gib"] = mem.total_gib
        for row, mem in zip(data["fsdp_memory"], self.fsdp_memory):
            row["total_gib"] = mem.total_gib
        return json.dumps(data, indent=2)


def _model_and_vocab(recipe: Recipe) -> tuple[Any, str, int, str]:
    """(transformers config with our family, family, vocabulary size, where it came from)."""
    from llmtrain.train.models import build_config, family_of_config, padded_vocab_size

    section = recipe.model
    if section is None:
        raise RecipeError(
            "plan needs a `model:` section (a preset such as llama-1b, or path: a model "
            "directory); see docs/recipes.md#model"
        )
    if section.path is not None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            str(section.path), trust_remote_code=section.trust_remote_code
        )
        return config, family_of_config(config), config.vocab_size, f"{section.path}"
    vocab, source = section.vocab_size, "model.vocab_size"
    if vocab is None:
        tokenizer_dir = _tokenizer_dir(recipe)
        if tokenizer_dir is not None and (tokenizer_dir / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            vocab = padded_vocab_size(len(AutoTokenizer.from_pretrained(str(tokenizer_dir))))
            source = f"the tokenizer at {tokenizer_dir}"
        elif recipe.tokenizer is not None:
            multiple = recipe.tokenizer.pad_vocab_to_multiple_of
            vocab = padded_vocab_size(-(-recipe.tokenizer.vocab_size // multiple) * multiple)
            source = "tokenizer.vocab_size (not trained yet)"
        else:
            raise RecipeError(
                "plan: the vocabulary size is unknown; set model.vocab_size, add a `tokenizer:` "
                "section, or point pretrain.tokenizer at a tokenizer directory"
            )
    config = build_config(section, vocab_size=vocab)
    return config, section.dims()["family"], vocab, source


def _tokenizer_dir(recipe: Recipe) -> Path | None:
    if recipe.pretrain is not None and recipe.pretrain.tokenizer is not None:
        return Path(recipe.pretrain.tokenizer)
    if recipe.tokenizer is not None:
        return recipe.tokenizer.output_path(recipe)
    return None


def _model_class(config: Any, objective: str) -> type:
    from llmtrain.train.models import CLASS_MAPPING

    return CLASS_MAPPING[objective][type(config)]


def make_plan(
    recipe: Recipe,
    *,
    gpus: int = 8,
    gpu: str = "H100",
    gpu_memory: float | None = None,
    mfu: float = 0.4,
    peak_tflops: float | None = None,
) -> Plan:
    from llmtrain.train import flops
    from llmtrain.train.float8 import plan_line
    from llmtrain.train.models import max_positions, objective_of_family
    from llmtrain.train.objectives import span_lengths

    if gpus < 1:
        raise RecipeError(f"plan --gpus: expected at least 1, got {gpus}")
    if not 0 < mfu <= 1:
        raise RecipeError(f"plan --mfu: expected a share in (0, 1], got {mfu}")
    config, family, vocab, vocab_from = _model_and_vocab(recipe)
    section = recipe.pretrain
    objective = (section.objective if section else None) or objective_of_family(family)
    counts, expert_params = _count_parameters(config, _model_class(config, objective))
    seq_len = (section.seq_len if section else None) or (
        recipe.data.seq_len if recipe.data is not None else None
    )
    seq_len = seq_len or min(max_positions(config) or 2048, 2048)
    precision = section.precision if section else "bf16"
    micro = section.micro_batch_size if section else 1
    checkpointing = section.activation_checkpointing if section else False
    sequences = section.steps * section.global_batch_size if section else 0
    if objective == "span":
        span = section.span if section else SpanSection()
        lengths = span_lengths(seq_len, span.noise_density, span.mean_span_length)
        per_example = flops.seq2seq_flops_per_example(
            config, input_len=lengths.inputs, target_len=lengths.targets
        )
        flops_per_token = per_example / seq_len
        activations = t5_activation_bytes(
            config,
            micro_batch_size=micro,
            input_len=lengths.inputs,
            target_len=lengths.targets,
            precision=precision,
            activation_checkpointing=checkpointing,
        )
    else:
        flops_per_token = flops.decoder_flops_per_token(config, counts, seq_len)
        activations = activation_bytes(
            config,
            family,
            micro_batch_size=micro,
            seq_len=seq_len,
            precision=precision,
            activation_checkpointing=checkpointing,
        )
    tokens = float(sequences * seq_len)
    active = counts.total - round(expert_params * (1 - flops.expert_share(config)))
    memory_gib = gpu_memory if gpu_memory is not None else gpu_memory_gib(gpu)
    # the GPU planned for wins over pretrain.peak_tflops (the device the recipe was tuned on)
    peak_per_s = (peak_tflops * 1e12 if peak_tflops else flops.peak_flops(gpu, precision)) or (
        section.peak_tflops * 1e12 if section and section.peak_tflops else None
    )
    total_flops = flops_per_token * tokens
    wall = total_flops / (gpus * peak_per_s * mfu) / 3600 if peak_per_s and tokens else None
    zero = section.deepspeed.zero_stage if section and section.deepspeed else 0
    return Plan(
        model=recipe.model.preset or str(recipe.model.path),
        family=family,
        vocab_size=vocab,
        vocab_from=vocab_from,
        params_total=counts.total,
        params_embedding=counts.embedding,
        params_non_embedding=counts.non_embedding,
        params_active=active,
        seq_len=seq_len,
        objective=objective,
        flops_per_token=flops_per_token,
        tokens=tokens,
        chinchilla_tokens=TOKENS_PER_PARAMETER * active,
        predicted_loss=chinchilla_loss(active, tokens) if tokens else float("nan"),
        gpus=gpus,
        gpu=gpu,
        gpu_memory_gib=memory_gib,
        precision=precision,
        micro_batch_size=micro,
        activation_checkpointing=checkpointing,
        memory=memory_rows(
            counts.total, activations, world=gpus, precision=precision, gpu_gib=memory_gib
        ),
        recipe_zero_stage=zero,
        mfu=mfu,
        peak_tflops=peak_per_s / 1e12 if peak_per_s else None,
        total_flops=total_flops,
        wall_hours=wall,
        float8=plan_line(gpu, precision) if section and section.float8 else "",
        muon=_muon_line(config, objective, zero, fsdp=section.fsdp is not None)
        if section and section.optimizer == "muon"
        else "",
        fsdp_memory=fsdp_memory_rows(
            counts.total,
            counts.total - counts.non_embedding + _untied_head(config),
            transformer_blocks(config),
            activations,
            world=gpus,
            precision=precision,
            gpu_gib=memory_gib,
        ),
        recipe_fsdp=(
            (section.fsdp.reshard_after_forward, section.fsdp.cpu_offload)
            if section and section.fsdp
            else None
        ),
    )


def _untied_head(config: Any) -> int:
    """Parameters of an output head not tied to the embedding (in FSDP2's root unit)."""
    if getattr(config, "tie_word_embeddings", True):
        return 0
    return config.vocab_size * _get(config, "hidden_size", "d_model", "n_embd")


def _muon_line(config: Any, objective: str, zero_stage: int, fsdp: bool = False) -> str:
    import torch

    from llmtrain.train.muon import plan_line as muon_plan_line

    with torch.device("meta"):
        model = _model_class(config, objective)(config)
    return muon_plan_line(model, zero_stage, fsdp)


def _count_parameters(config: Any, model_class: type) -> tuple[Any, int]:
    """(flops.ParamCounts, parameters inside routed experts) of the model, built on the meta
    device (no memory)."""
    import torch

    from llmtrain.train import flops

    with torch.device("meta"):
        model = model_class(config)
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in f".{name}")
    return flops.parameter_counts(model), experts


# ---------------------------------------------------------------------------------------------
# Output


def _count(n: float) -> str:
    if abs(n) >= 1e15:
        return f"{n:.3g}".replace("e+", "e")
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _duration(hours: float) -> str:
    if hours >= 48:
        return f"{hours / 24:.1f} days"
    if hours >= 1:
        return f"{hours:.1f} h"
    return f"{hours * 60:.1f} min" if hours * 60 >= 1 else f"{hours * 3600:.0f} s"


def _gib(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def format_plan(plan: Plan) -> str:
    lines = [
        f"model       {plan.model} ({plan.family}, {plan.objective}), vocabulary {plan.vocab_size}"
        f" from {plan.vocab_from}",
        f"parameters  {plan.params_total:,} total, {plan.params_embedding:,} embedding, "
        f"{plan.params_non_embedding:,} non-embedding"
        + (
            f", {plan.params_active:,} active per token"
            if plan.params_active != plan.params_total
            else ""
        ),
        f"FLOPs       {_count(plan.flops_per_token)} per token at sequence {plan.seq_len} "
        f"(6N + attention); {_count(plan.total_flops)} for the run",
    ]
    if plan.tokens:
        ratio = plan.tokens / plan.chinchilla_tokens
        lines.append(
            f"tokens      {_count(plan.tokens)} in the run, {ratio:.2f}x Chinchilla-optimal "
            f"({_count(plan.chinchilla_tokens)} = 20 per parameter)"
        )
        lines.append(
            f"loss        {plan.predicted_loss:.3f} predicted by Chinchilla's L(N, D) "
            "(their data and tokenizer: compare runs, not tokenizers)"
        )
    else:
        lines.append(f"tokens      Chinchilla-optimal {_count(plan.chinchilla_tokens)}")
    if plan.wall_hours is not None:
        lines.append(
            f"time        {_duration(plan.wall_hours)} on {plan.gpus} x {plan.gpu} "
            f"({plan.peak_tflops:.4g} TFLOP/s {plan.precision} peak) at {plan.mfu:.0%} MFU"
        )
    else:
        lines.append(
            f"time        unknown: no peak TFLOP/s for {plan.gpu} at {plan.precision} "
            "(pass --peak-tflops)"
        )
    lines += [line for line in (plan.muon, plan.float8) if line]
    capacity = f"{plan.gpu_memory_gib:.0f} GiB" if plan.gpu_memory_gib else "unknown memory"
    lines += [
        "",
        f"memory per GPU: {plan.gpus} GPUs data parallel, {plan.gpu} ({capacity}), "
        f"{plan.precision}, micro-batch {plan.micro_batch_size} x {plan.seq_len}"
        + (", activation checkpointing" if plan.activation_checkpointing else ""),
        "",
        "| ZeRO | offload | states GiB | activations GiB | DeepSpeed buffers GiB | total GiB "
        "| CPU GiB/process | fits |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in plan.memory:
        fits = "?" if row.fits is None else ("yes" if row.fits else "no")
        mark = (
            " (recipe)"
            if row.zero_stage == plan.recipe_zero_stage
            and row.offload == "none"
            and plan.recipe_fsdp is None
            else ""
        )
        lines.append(
            f"| {row.zero_stage}{mark} | {row.offload} | {_gib(row.states_gib)} | "
            f"{_gib(row.activations_gib)} | {_gib(row.buffers_gib)} | {_gib(row.total_gib)} | "
            f"{_gib(row.cpu_gib)} | {fits} |"
        )
    lines.append(
        f"\nfits: total at most {USABLE_MEMORY:.0%} of the GPU's memory; states: weights, "
        "gradients, AdamW (16 bytes per parameter before sharding); DeepSpeed buffers: its "
        "reduce and prefetch buckets at their default sizes"
    )
    lines += format_fsdp(plan)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Memory of the RL stages (ppo, and grpo / gspo / rloo / online_dpo on TRL's GRPOTrainer)

RL_KINDS = ("ppo", "grpo", "gspo", "rloo", "online_dpo")
FUSED_TILE = (4096, 32768)
"""Tokens x vocabulary entries of one tile of TRL's fused LM head (train/logprobs.py)."""


@dataclass(frozen=True)
class RLMemory:
    """GiB on one GPU of an RL stage at its recipe's ZeRO stage (no offload)."""

    stage: str
    kind: str
    zero_stage: int
    lora: bool
    parts: dict[str, float]
    """What is held through the whole run: models (states or frozen weights), buffers."""
    activations_gib: float
    """One micro-batch's forward and backward through the policy (and the value model),
    without the output head's logits."""
    logprob_fused_gib: float
    """The log-prob peak with the fused head (what the stages run): one tile, the fp32
    gradient of the hidden states and, when the head trains, of its weight."""
    logprob_full_gib: float
    """The same with full logits [micro-batch, length, vocab] (the pretraining rule: the
    training precision, an fp32 copy and its fp32 gradient)."""
    kv_cache_gib: float
    """Generation: the KV cache of the rollout batch at full length (plus, under ZeRO-3, the
    policy's gathered weights)."""
    gpu_gib: float | None

    @property
    def held_gib(self) -> float:
        return sum(self.parts.values())

    @property
    def training_gib(self) -> float:
        return self.held_gib + self.activations_gib + self.logprob_fused_gib

    @property
    def training_full_logits_gib(self) -> float:
        return self.held_gib + self.activations_gib + self.logprob_full_gib

    @property
    def generation_gib(self) -> float:
        return self.held_gib + self.kv_cache_gib

    @property
    def fits(self) -> bool | None:
        if self.gpu_gib is None:
            return None
        return max(self.training_gib, self.generation_gib) <= USABLE_MEMORY * self.gpu_gib

    def to_dict(self) -> dict[str, Any]:
        totals = ("held_gib", "training_gib", "training_full_logits_gib", "generation_gib", "fits")
        return {**asdict(self), **{name: getattr(self, name) for name in totals}}


def lora_parameters(model: Any, lora: Any, modules_to_save: tuple[str, ...] = ()) -> int:
    """Parameters peft trains on `model` (trl_glue.lora_config): r x (inputs + outputs) per
    adapted Linear (all-linear: every Linear but the output head), and the modules to save
    (the section's and `modules_to_save`) in full."""
    from torch import nn

    saved = {*lora.modules_to_save, *modules_to_save}
    head = model.get_output_embeddings()
    count = 0
    for name, module in model.named_modules():
        last = name.split(".")[-1]
        if last in saved:
            count += sum(p.numel() for p in module.parameters())
        elif isinstance(module, nn.Linear) and module is not head:
            if lora.target_modules == "all-linear" or last in lora.target_modules:
                count += lora.r * (module.in_features + module.out_features)
    return count


def trained_model_bytes(
    params: int, adapters: int | None, *, zero_stage: int, world: int, precision: str
) -> float:
    """A trained model's weights, gradients and AdamW on one GPU (model_state_bytes); with LoRA
    (`adapters` parameters) the frozen base holds only its weights: fp32 at stage 0 (as loaded),
    the training precision under DeepSpeed (sharded at ZeRO-3)."""
    if adapters is None:
        states, _ = model_state_bytes(
            params, zero_stage=zero_stage, world=world, precision=precision, offload="none"
        )
        return states
    w = 4.0 if zero_stage == 0 or precision == "fp32" else 2.0
    base = w * params / (world if zero_stage == 3 else 1)
    states, _ = model_state_bytes(
        adapters, zero_stage=zero_stage, world=world, precision=precision, offload="none"
    )
    return base + states


def logprob_peak_bytes(
    tokens: int, vocab: int, hidden: int, *, precision: str, fused: bool, head_trains: bool
) -> float:
    """Bytes of the log-probabilities of `tokens` positions beyond the hidden states, forward
    and backward. Full logits: tokens x vocab x (training precision + an fp32 copy + its fp32
    gradient), the rule of activation_bytes. Fused head: one tile of FUSED_TILE (training
    precision), the fp32 gradient of the hidden states, and the fp32 accumulator of the head's
    weight gradient when the head trains."""
    element = 4.0 if precision == "fp32" else 2.0
    if not fused:
        return tokens * vocab * (element + 8.0)
    tile = min(tokens, FUSED_TILE[0]) * min(vocab, FUSED_TILE[1]) * element
    return tile + 4.0 * tokens * hidden + (4.0 * vocab * hidden if head_trains else 0.0)


def kv_cache_bytes(config: Any, sequences: int, length: int, precision: str) -> float:
    """Keys and values of every layer for `sequences` x `length` tokens."""
    element = 4.0 if precision == "fp32" else 2.0
    layers = _get(config, "num_hidden_layers", "n_layer")
    heads = _get(config, "num_attention_heads", "n_head")
    head_dim = getattr(config, "head_dim", None) or _get(config, "hidden_size", "n_embd") // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return 2.0 * layers * kv_heads * head_dim * length * sequences * element


def rl_memory(recipe: Recipe, stage: str, *, gpus: int, gpu_memory: float | None) -> RLMemory:
    """The memory of RL stage `stage` per GPU (docs/recipes.md#plan-rl)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kind = recipe.stage_kind(stage).name
    section = recipe.for_stage(stage).section(kind)
    config, family, vocab, _ = _model_and_vocab(recipe)
    if section.model is not None and (Path(section.model) / "config.json").is_file():
        from transformers import AutoConfig

        from llmtrain.train.models import family_of_config

        config = AutoConfig.from_pretrained(str(section.model))
        family, vocab = family_of_config(config), config.vocab_size
    zero = section.deepspeed.zero_stage if section.deepspeed else 0
    precision, world = section.precision, gpus
    element = 4.0 if precision == "fp32" else 2.0
    causal = _meta_model(AutoModelForCausalLM, config)
    scalar = copy.deepcopy(config)
    scalar.num_labels = 1  # value and reward models: one score
    classifier = _meta_model(AutoModelForSequenceClassification, scalar)
    policy_params = sum(p.numel() for p in causal.parameters())
    value_params = sum(p.numel() for p in classifier.parameters())
    lora = section.lora
    gib = 1.0 / GIB
    parts = {
        "policy": trained_model_bytes(
            policy_params,
            lora_parameters(causal, lora) if lora else None,
            zero_stage=zero,
            world=world,
            precision=precision,
        )
        * gib
    }
    if kind == "ppo":
        value_lora = None
        if lora is not None:
            value_lora = lora_parameters(classifier, lora, ("score",))
        parts["value model"] = (
            trained_model_bytes(
                value_params, value_lora, zero_stage=zero, world=world, precision=precision
            )
            * gib
        )
        # a frozen copy in the compute dtype; with LoRA the policy with adapters disabled
        reference = 0.0 if lora else element * policy_params
    else:  # TRL: none at beta 0 or under LoRA, else loaded in the checkpoint's dtype (fp32)
        reference = 0.0 if lora or section.beta == 0 else 4.0 * policy_params
    parts["reference"] = reference / (world if zero == 3 else 1) * gib
    reward_models = sum(1 for reward in section.rewards if reward.type == "reward_model")
    parts["reward models"] = reward_models * element * value_params * gib
    # sequences generated at once per process: PPO's rollout batch; TRL's generation batch
    # (steps_per_generation optimizer steps' completions; online DPO: one step's)
    if kind == "ppo":
        batch = section.rollout_batch_size
    else:
        batch = section.global_batch_size * getattr(section, "steps_per_generation", 1)
    sequences = -(-batch // world)
    length = section.max_prompt_length + section.max_new_tokens
    # ids, attention mask, position ids (int64) and six fp32 values per completion token
    parts["rollout buffers"] = sequences * (24.0 * length + 24.0 * section.max_new_tokens) * gib
    parts["DeepSpeed buffers"] = deepspeed_buffer_bytes(zero, precision) * gib
    micro = section.micro_batch_size
    logits = micro * length * vocab * (element + 8.0)  # what activation_bytes adds for them
    backbone = (
        activation_bytes(
            config,
            family,
            micro_batch_size=micro,
            seq_len=length,
            precision=precision,
            activation_checkpointing=section.activation_checkpointing,
        )
        - logits
    )
    activations = backbone * (2 if kind == "ppo" else 1)  # PPO: the value model's too
    hidden = _get(config, "hidden_size", "n_embd")
    # the fused head scores the completion tokens; the full logits cover every position
    fused_peak = logprob_peak_bytes(
        micro * section.max_new_tokens,
        vocab,
        hidden,
        precision=precision,
        fused=True,
        head_trains=lora is None,
    )
    full_peak = logprob_peak_bytes(
        micro * length, vocab, hidden, precision=precision, fused=False, head_trains=True
    )
    kv = kv_cache_bytes(config, sequences, length, precision)
    if zero == 3:
        kv += element * policy_params * (1 - 1 / world)
    return RLMemory(
        stage=stage,
        kind=kind,
        zero_stage=zero,
        lora=lora is not None,
        parts=parts,
        activations_gib=activations * gib,
        logprob_fused_gib=fused_peak * gib,
        logprob_full_gib=full_peak * gib,
        kv_cache_gib=kv * gib,
        gpu_gib=gpu_memory,
    )


def _meta_model(auto_class: Any, config: Any) -> Any:
    import torch

    with torch.device("meta"):
        return auto_class.from_config(config)


def rl_memory_plans(
    recipe: Recipe, *, gpus: int, gpu: str, gpu_memory: float | None = None
) -> list[RLMemory]:
    """rl_memory of every RL stage of the recipe (sections and instances), in run order."""
    memory = gpu_memory if gpu_memory is not None else gpu_memory_gib(gpu)
    return [
        rl_memory(recipe, stage, gpus=gpus, gpu_memory=memory)
        for stage in recipe.stage_names()
        if recipe.stage_kind(stage).name in RL_KINDS
    ]


def format_rl_memory(plans: list[RLMemory], gpus: int, gpu: str) -> str:
    """One table per RL stage, each after a blank line (nothing without RL stages)."""
    lines = []
    for plan in plans:
        capacity = f"{plan.gpu_gib:.0f} GiB" if plan.gpu_gib else "unknown memory"
        fits = "?" if plan.fits is None else ("yes" if plan.fits else "no")
        lines += [
            "",
            "",
            f"{plan.stage} ({plan.kind}) memory per GPU: {gpus} x {gpu} ({capacity}), ZeRO "
            f"{plan.zero_stage}{', LoRA' if plan.lora else ''}; fits: {fits}",
            "",
            "| part | GiB |",
            "|---|---:|",
        ]
        lines += [f"| {name} | {_gib(value)} |" for name, value in plan.parts.items()]
        lines += [
            f"| activations of one micro-batch | {_gib(plan.activations_gib)} |",
            f"| log-prob peak, fused head (chunked) | {_gib(plan.logprob_fused_gib)} |",
            f"| log-prob peak, full logits | {_gib(plan.logprob_full_gib)} |",
            f"| **training** (fused head) | {_gib(plan.training_gib)} |",
            f"| training with full logits | {_gib(plan.training_full_logits_gib)} |",
            f"| **generation** (KV cache {_gib(plan.kv_cache_gib)}) | "
            f"{_gib(plan.generation_gib)} |",
        ]
    return "\n".join(lines)
