"""Model presets: every family builds and runs, vocabulary and init rules, parameter counts and
FLOPs against published figures."""

import math

import pytest
import torch
from transformers import AutoTokenizer

from llmtrain.errors import RecipeError, StageInputError
from llmtrain.recipe import validate_recipe
from llmtrain.train.config import ModelSection
from llmtrain.train.flops import (
    decoder_flops_per_token,
    parameter_counts,
    parameter_counts_of,
    peak_flops,
    seq2seq_flops_per_example,
)
from llmtrain.train.models import (
    CLASS_MAPPING,
    build_config,
    config_for_tokenizer,
    create_model,
    padded_vocab_size,
)
from llmtrain.train.presets import FAMILY_OBJECTIVE, PRESETS


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.mark.parametrize("preset", [name for name in PRESETS if name.endswith("tiny")])
def test_every_tiny_preset_builds_trains_a_step_and_uses_its_class(preset, tokenizer):
    section = ModelSection(preset=preset)
    objective = FAMILY_OBJECTIVE[section.family]
    model = create_model(section, tokenizer, objective=objective, seed=0)
    assert model.config.vocab_size == 512  # 512 tokens, already a multiple of 64
    ids = torch.randint(0, len(tokenizer), (2, 16))
    extra = {"decoder_input_ids": ids} if objective == "span" else {}
    out = model(input_ids=ids, **extra)
    assert out.logits.shape == (2, 16, 512)
    out.logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    if section.family in ("qwen3_moe", "qwen2_moe", "mixtral"):
        assert out.aux_loss is not None and out.aux_loss.item() > 0


def test_overrides_reach_the_transformers_config(tokenizer):
    section = ModelSection(
        preset="llama-tiny",
        num_layers=3,
        num_kv_heads=1,
        rope_theta=50000.0,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        config={"rms_norm_eps": 1e-5},
    )
    config = config_for_tokenizer(section, tokenizer)
    assert (config.num_hidden_layers, config.num_key_value_heads) == (3, 1)
    assert config.rope_parameters["rope_theta"] == 50000.0
    assert config.max_position_embeddings == 4096
    assert config.tie_word_embeddings is False
    assert config.rms_norm_eps == 1e-5


def test_vocabulary_is_padded_to_64_and_a_too_small_one_is_refused(tokenizer):
    assert padded_vocab_size(50257) == 50304
    assert padded_vocab_size(512) == 512
    with pytest.raises(StageInputError) as err:
        config_for_tokenizer(ModelSection(preset="llama-tiny", vocab_size=256), tokenizer)
    assert str(err.value) == (
        f"the tokenizer ({tokenizer.name_or_path}) has 512 tokens but model.vocab_size is 256; "
        "raise model.vocab_size to at least 512 or remove it (the vocabulary then comes from "
        "the tokenizer, padded to a multiple of 64)"
    )


@pytest.mark.parametrize(
    ("preset", "weight", "residual"),
    [
        ("llama-tiny", "model.layers.0.self_attn.q_proj.weight",
         ["model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight"]),
        ("gpt-tiny", "transformer.h.0.attn.c_attn.weight",
         ["transformer.h.0.attn.c_proj.weight", "transformer.h.0.mlp.c_proj.weight"]),
        ("moe-tiny", "model.layers.0.mlp.experts.gate_up_proj",  # experts: one 3-d tensor
         ["model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.experts.down_proj"]),
        ("qwen2-moe-tiny", "model.layers.0.mlp.shared_expert.up_proj.weight",
         ["model.layers.0.mlp.experts.down_proj",
          "model.layers.0.mlp.shared_expert.down_proj.weight"]),
        ("bert-tiny", "bert.encoder.layer.0.attention.self.query.weight",
         ["bert.encoder.layer.0.attention.output.dense.weight",
          "bert.encoder.layer.0.output.dense.weight"]),
    ],
)  # fmt: skip
def test_init_std_and_residual_projections_scaled_by_depth(preset, weight, residual, tokenizer):
    """Weights and embeddings ~ N(0, 0.02); projections into the residual stream 0.02 /
    sqrt(2 x layers); norms at 1, biases at 0."""
    section = ModelSection(preset=preset, num_layers=8, hidden_size=256)
    objective = FAMILY_OBJECTIVE[section.family]
    model = create_model(section, tokenizer, objective=objective, seed=0)
    params = dict(model.named_parameters())
    assert params[weight].std().item() == pytest.approx(0.02, rel=0.05)
    assert model.get_input_embeddings().weight.std().item() == pytest.approx(0.02, rel=0.05)
    for name in residual:
        assert params[name].std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05), name
    for name, param in params.items():
        if param.ndim == 1:  # norm weights and biases
            assert torch.all(param == (1.0 if name.endswith("weight") else 0.0)), name
    # the same seed gives the same model
    again = create_model(section, tokenizer, objective=objective, seed=0)
    assert torch.equal(model.get_input_embeddings().weight, again.get_input_embeddings().weight)


def test_model_section_errors_name_the_key():
    def check(model, message):
        with pytest.raises(RecipeError) as err:
            validate_recipe({"name": "x", "output_dir": "/tmp/x", "model": model})
        assert str(err.value) == message

    check(
        {"preset": "lama-1b"},
        "model.preset: unknown preset 'lama-1b'; did you mean llama-1b? "
        f"presets: {', '.join(PRESETS)}",
    )
    check(
        {"preset": "llama-tiny", "num_experts": 8},
        "model: num_experts only apply to mixture-of-experts presets; llama-tiny is a dense "
        "llama model",
    )
    check(
        {"preset": "llama-tiny", "num_kv_heads": 3}, "model: num_kv_heads 3 must divide num_heads 4"
    )
    check(
        {"preset": "moe-tiny", "shared_expert_intermediate_size": 64},
        "model: shared_expert_intermediate_size: the qwen3_moe class has no shared expert; "
        "use a qwen2_moe preset (e.g. qwen2-moe-tiny)",
    )
    check({}, "model: set exactly one of preset (a new model) and path (an existing one)")


@pytest.mark.parametrize(
    ("preset", "vocab", "total", "active"),
    [
        ("llama-1b", 128256, 1.236e9, 1.236e9),  # Llama 3.2 1B: 1.24B
        ("llama-8b", 128256, 8.030e9, 7.505e9),  # Llama 3 8B: 8.03B
        ("gpt3-125m", 50257, 125.3e6, 123.6e6),  # GPT-3 Small: 125M
        ("moe-1b-7b", 50304, 6.919e9, 1.179e9),  # OLMoE-1B-7B: 6.9B total, 1.3B active
        ("bert-base", 30522, 109.5e6, 108.9e6),  # BERT-base: 110M
    ],
)
def test_parameter_counts_match_published_sizes(preset, vocab, total, active):
    section = ModelSection(preset=preset)
    config = build_config(section, vocab_size=padded_vocab_size(vocab))
    objective = FAMILY_OBJECTIVE[section.family]
    counts = parameter_counts_of(config, CLASS_MAPPING[objective][type(config)])
    assert counts.total == pytest.approx(total, rel=2e-3)
    assert counts.active_matmul == pytest.approx(active, rel=2e-3)


def test_flops_per_token_is_6n_plus_attention(tokenizer):
    model = create_model(ModelSection(preset="llama-tiny"), tokenizer, objective="clm", seed=0)
    counts = parameter_counts(model)
    # tied embedding: counted once in total, as a matmul once (the head)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.embedding == 512 * 64
    assert counts.active_matmul == counts.total - 2 * 64 * 2 - 64  # norms are not matmuls
    expected = 6 * counts.active_matmul + 12 * 2 * 64 * 128
    assert decoder_flops_per_token(model.config, counts, seq_len=128) == expected


def test_seq2seq_flops_count_encoder_decoder_and_head():
    config = build_config(ModelSection(preset="t5-tiny"), vocab_size=512)
    flops = seq2seq_flops_per_example(config, input_len=100, target_len=30)
    d, width, ff = 64, 64, 128
    encoder = 2 * (4 * d * width + 3 * d * ff)
    decoder = 2 * (8 * d * width + 3 * d * ff) + 512 * d
    attention = 12 * width * 2 * (100 * 100 + 30 * 30 + 30 * 100)
    assert flops == 6 * (encoder * 100 + decoder * 30) + attention


def test_peak_flops_table():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989.5e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_flops("NVIDIA H200", "bf16") == 989.5e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert peak_flops("Tesla V100-SXM2-32GB", "bf16") is None
    assert peak_flops("some cpu", "fp32") is None
