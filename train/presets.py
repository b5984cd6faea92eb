"""Model presets: named architectures and sizes, as plain data (no torch import).

A preset names a family (which `transformers` class builds it) and its dimensions; every value
can be overridden from the recipe's `model:` section. `models.py` turns a preset into a
`transformers` config; `flops.py` and `llmtrain plan` read the same table.

Families and the objective each one trains with:

    llama       LlamaForCausalLM: RMSNorm, SwiGLU, RoPE, GQA               clm
    gpt2        GPT2LMHeadModel: learned positions, GELU, LayerNorm         clm
    qwen3_moe   Qwen3MoeForCausalLM: top-k routed experts                  clm
    qwen2_moe   Qwen2MoeForCausalLM: routed experts plus a shared expert   clm
    mixtral     MixtralForCausalLM: top-k routed experts                   clm
    bert        BertForMaskedLM                                             mlm
    modernbert  ModernBertForMaskedLM                                       mlm
    t5          T5ForConditionalGeneration (v1.1 shapes, gated GELU)  span
"""

from __future__ import annotations

from typing import Any

FAMILY_OBJECTIVE: dict[str, str] = {
    "llama": "clm",
    "gpt2": "clm",
    "qwen3_moe": "clm",
    "qwen2_moe": "clm",
    "mixtral": "clm",
    "bert": "mlm",
    "modernbert": "mlm",
    "t5": "span",
}
"""The objective each family trains with (decoders: clm, encoders: mlm, encoder-decoder: span)."""

MOE_FAMILIES = ("qwen3_moe", "qwen2_moe", "mixtral")

# fmt: off
# Dimensions use one vocabulary across families (the `model:` keys); models.py maps them to
# each transformers config. A value of None means "the family's default".
PRESETS: dict[str, dict[str, Any]] = {
    # --- Llama-style decoders (Llama 3 shapes at 1B and 8B) ---
    "llama-tiny": dict(
        family="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=176, max_position_embeddings=1024, rope_theta=10000.0,
        tie_word_embeddings=True,
    ),
    "llama-125m": dict(
        family="llama", hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4,
        intermediate_size=2048, max_position_embeddings=2048, rope_theta=10000.0,
        tie_word_embeddings=True,
    ),
    "llama-350m": dict(
        family="llama", hidden_size=1024, num_layers=24, num_heads=16, num_kv_heads=8,
        intermediate_size=2816, max_position_embeddings=2048, rope_theta=10000.0,
        tie_word_embeddings=True,
    ),
    "llama-1b": dict(  # Llama 3.2 1B
        family="llama", hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8,
        intermediate_size=8192, max_position_embeddings=8192, rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
    "llama-8b": dict(  # Llama 3 8B
        family="llama", hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
        intermediate_size=14336, max_position_embeddings=8192, rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
    # --- GPT-2 / GPT-3 style (the GPT-3 paper's table, context 2048) ---
    "gpt-tiny": dict(
        family="gpt2", hidden_size=64, num_layers=2, num_heads=4, max_position_embeddings=1024,
    ),
    "gpt2-124m": dict(
        family="gpt2", hidden_size=768, num_layers=12, num_heads=12, max_position_embeddings=1024,
    ),
    "gpt3-125m": dict(
        family="gpt2", hidden_size=768, num_layers=12, num_heads=12, max_position_embeddings=2048,
    ),
    "gpt3-350m": dict(
        family="gpt2", hidden_size=1024, num_layers=24, num_heads=16, max_position_embeddings=2048,
    ),
    "gpt3-760m": dict(
        family="gpt2", hidden_size=1536, num_layers=24, num_heads=16, max_position_embeddings=2048,
    ),
    # GPT-3 XL lists 24 heads of 128 on d_model 2048; transformers needs heads x head_dim ==
    # hidden, so 16 heads of 128.
    "gpt3-1.3b": dict(
        family="gpt2", hidden_size=2048, num_layers=24, num_heads=16, max_position_embeddings=2048,
    ),
    # --- Mixture of experts ---
    "moe-tiny": dict(
        family="qwen3_moe", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=176, moe_intermediate_size=64, num_experts=4, experts_per_token=2,
        router_aux_loss_coef=0.01, max_position_embeddings=1024, rope_theta=10000.0,
        tie_word_embeddings=True,
    ),
    "moe-1b-7b": dict(  # OLMoE-1B-7B shapes on the Qwen3-MoE class: 64 experts, 8 active
        family="qwen3_moe", hidden_size=2048, num_layers=16, num_heads=16, num_kv_heads=16,
        intermediate_size=1024, moe_intermediate_size=1024, num_experts=64, experts_per_token=8,
        router_aux_loss_coef=0.01, max_position_embeddings=4096, rope_theta=10000.0,
        tie_word_embeddings=False,
    ),
    "qwen2-moe-tiny": dict(
        family="qwen2_moe", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=176, moe_intermediate_size=64, shared_expert_intermediate_size=128,
        num_experts=4, experts_per_token=2, router_aux_loss_coef=0.01,
        max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=True,
    ),
    "mixtral-tiny": dict(
        family="mixtral", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=64, num_experts=4, experts_per_token=2, router_aux_loss_coef=0.01,
        max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=True,
    ),
    # --- Encoders for MLM ---
    "bert-tiny": dict(
        family="bert", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256,
        max_position_embeddings=512,
    ),
    "bert-base": dict(
        family="bert", hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
        max_position_embeddings=512,
    ),
    "modernbert-tiny": dict(
        family="modernbert", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
        max_position_embeddings=1024,
    ),
    "modernbert-base": dict(
        family="modernbert", hidden_size=768, num_layers=22, num_heads=12,
        intermediate_size=1152, max_position_embeddings=8192,
    ),
    # --- Encoder-decoder for span corruption (T5 v1.1 shapes: gated GELU; the head is tied,
    # as transformers 5 always ties it) ---
    "t5-tiny": dict(
        family="t5", hidden_size=64, num_layers=2, num_heads=4, head_dim=16,
        intermediate_size=128,
    ),
    "t5-small": dict(
        family="t5", hidden_size=512, num_layers=8, num_heads=6, head_dim=64,
        intermediate_size=1024,
    ),
    "t5-base": dict(
        family="t5", hidden_size=768, num_layers=12, num_heads=12, head_dim=64,
        intermediate_size=2048,
    ),
}
# fmt: on


def preset_family(name: str) -> str:
    return PRESETS[name]["family"]
