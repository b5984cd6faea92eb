"""Parameter counts, model FLOPs and MFU.

Model FLOPs of training follow PaLM (Chowdhery et al. 2022, appendix B): per token,
6 x (parameters in matmuls) + 12 x layers x heads x head_dim x sequence length, the second term
being attention scores and values (forward + backward). Parameters in matmuls are the weights a
token multiplies by: every Linear of the blocks (for MoE only the top-k experts a token visits,
plus router and shared expert) and the output projection, tied or not; input and position
embeddings are lookups and do not count. Recomputation (activation checkpointing) is not
counted: this is MFU, not hardware FLOPs utilisation.

    counts = parameter_counts(model)                  # or parameter_counts_of(config, cls)
    per_token = decoder_flops_per_token(model.config, counts, seq_len=2048)
    mfu = achieved_flops_per_s / (devices x peak_flops("NVIDIA H100 80GB HBM3", "bf16"))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

# Dense peak TFLOP/s per device (tensor cores, no sparsity) from the vendors' data sheets.
# Matched against torch.cuda.get_device_name() in order: first pattern found wins.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.5, "fp16": 989.5, "fp32": 67.0}),
    ("GH200", {"bf16": 989.5, "fp16": 989.5, "fp32": 67.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.5, "fp16": 989.5, "fp32": 67.0}),  # SXM (e.g. "H100 80GB HBM3")
    ("H800", {"bf16": 989.5, "fp16": 989.5, "fp32": 67.0}),
    ("B200", {"bf16": 2250.0, "fp16": 2250.0, "fp32": 80.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("A800", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    ("A10G", {"bf16": 70.0, "fp16": 70.0, "fp32": 31.2}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    ("RTX 4090", {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6}),
    ("RTX 3090", {"bf16": 71.0, "fp16": 71.0, "fp32": 35.6}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
    ("MI300X", {"bf16": 1307.4, "fp16": 1307.4, "fp32": 163.4}),
    ("MI250X", {"bf16": 383.0, "fp16": 383.0, "fp32": 95.7}),
]


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of one device of this name at this precision; None when not in the table."""
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(re.escape(pattern), device_name, flags=re.IGNORECASE):
            value = peaks.get(precision)
            return value * 1e12 if value else None
    return None


@dataclass(frozen=True)
class ParamCounts:
    total: int
    """Every parameter once (tied tensors once)."""
    embedding: int
    """Input token and position embeddings (lookups, not matmuls)."""
    active_matmul: int
    """Weights one token multiplies by: blocks (top-k experts only) plus the output head."""

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def expert_share(config: Any) -> float:
    experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    top_k = getattr(config, "num_experts_per_tok", None)
    return top_k / experts if experts and top_k else 1.0


def parameter_counts(model: nn.Module) -> ParamCounts:
    """Count a model's parameters (works on a meta-device model too)."""
    embedding_ids = {
        id(param)
        for module in model.modules()
        if isinstance(module, nn.Embedding)
        for param in module.parameters(recurse=False)
    }
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    share = expert_share(model.config)
    total = embedding = 0
    active = 0.0
    seen = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        count = param.numel()
        total += count
        if id(param) in embedding_ids:
            embedding += count
        elif param.ndim >= 2:
            active += count * (share if ".experts." in f".{name}" else 1.0)
    if head_weight is not None and id(head_weight) in embedding_ids:
        active += head_weight.numel()  # a tied head is a matmul too
    return ParamCounts(total=total, embedding=embedding, active_matmul=int(active))


def parameter_counts_of(config: Any, model_class: type) -> ParamCounts:
    """Counts for a config without allocating weights (built on the meta device)."""
    import torch

    with torch.device("meta"):
        model = model_class(config)
    return parameter_counts(model)


def _attention_width(config: Any) -> tuple[int, int]:
    """(layers, heads x head_dim) of a decoder or encoder config."""
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return layers, heads * head_dim


def decoder_flops_per_token(config: Any, counts: ParamCounts, seq_len: int) -> float:
    """Training FLOPs per token of a decoder-only or encoder-only model (PaLM's formula)."""
    layers, width = _attention_width(config)
    return 6.0 * counts.active_matmul + 12.0 * layers * width * seq_len


def seq2seq_flops_per_example(config: Any, *, input_len: int, target_len: int) -> float:
    """Training FLOPs of one T5 example: the encoder over the input, the decoder over the target.

    Matmul weights from the config: encoder block = self-attention + MLP, decoder block = self-
    and cross-attention + MLP (gated MLPs have three matrices), plus the output head per target
    token; attention terms for encoder self, decoder self and decoder-to-encoder cross.
    """
    d_model, width = config.d_model, config.num_heads * config.d_kv
    enc_layers = config.num_layers
    dec_layers = config.num_decoder_layers or config.num_layers
    mlp = (3 if config.is_gated_act else 2) * d_model * config.d_ff
    attention_weights = 4 * d_model * width
    encoder = enc_layers * (attention_weights + mlp)
    decoder = dec_layers * (2 * attention_weights + mlp) + config.vocab_size * d_model
    matmul = 6.0 * (encoder * input_len + decoder * target_len)
    attention = (
        12.0
        * width
        * (
            enc_layers * input_len * input_len
            + dec_layers * target_len * target_len
            + dec_layers * target_len * input_len
        )
    )
    return matmul + attention
