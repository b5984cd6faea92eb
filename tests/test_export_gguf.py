"""`llmtrain export gguf`: the file read back with gguf's own reader (metadata, tensor names,
shapes, values); refusals. The comparison with llama.cpp itself is
scripts/bench/gguf_llamacpp.py (it builds llama.cpp)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from llmtrain.cli import main
from llmtrain.errors import StageInputError
from tests.tokenizer_support import train

gguf = pytest.importorskip("gguf")

from llmtrain.train.export.gguf_export import (  # noqa: E402
    export_gguf,
    load_state_dict,
    unpermute_rope,
)

REFUSAL = (
    "llama.cpp cannot reproduce this tokenizer (split regex {regex!r}); exportable: a "
    "byte-level BPE without normalizer whose split is tokenizer.pattern llama3 with digits "
    "single (llama.cpp pre-tokenizer 'qwen2') or groups_of_3 ('llama-bpe' / 'smaug-bpe'), or "
    "gpt2 with digits runs ('gpt-2'). Retrain the tokenizer with one of them (the `llmtrain` "
    "pattern has no llama.cpp counterpart)"
)


def fields(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def tensors(reader) -> dict:
    return {t.name: t for t in reader.tensors}


def values(tensor) -> np.ndarray:
    """A tensor of the file as float32 in the Hugging Face shape."""
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return data.reshape([int(n) for n in reversed(tensor.shape)]).astype(np.float32)


@pytest.fixture(scope="module")
def default_tokenizer(tokenizer_corpus, tmp_path_factory) -> Path:
    """A tokenizer trained by the stage with the recipe defaults (plus a bos, added)."""
    out, _ = train(
        tmp_path_factory.mktemp("default-tokenizer"),
        tokenizer_corpus,
        special_tokens={"bos": "<|begin_of_text|>"},
        add_bos=True,
    )
    return out


def save_model(model, tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def vocab_size(tokenizer_dir: Path) -> int:
    from transformers import AutoTokenizer

    return (len(AutoTokenizer.from_pretrained(tokenizer_dir)) + 63) // 64 * 64


def test_llama_metadata_and_f32_tensors_equal_the_weights(tiny_causal_lm_dir, tmp_path):
    from transformers import AutoTokenizer

    path = export_gguf(tiny_causal_lm_dir, tmp_path / "m.gguf", "f32")
    reader = gguf.GGUFReader(path)
    meta = fields(reader)
    config = json.loads((tiny_causal_lm_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.context_length"] == 256
    assert meta["llama.embedding_length"] == 64
    assert meta["llama.block_count"] == 2
    assert meta["llama.feed_forward_length"] == 128
    assert meta["llama.attention.head_count"] == 4
    assert meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.rope.freq_base"] == config["rope_parameters"]["rope_theta"]
    assert meta["llama.rope.dimension_count"] == 16
    assert meta["llama.vocab_size"] == config["vocab_size"]
    assert meta["general.file_type"] == gguf.LlamaFileType.ALL_F32
    # the fixture's tokenizer splits with ByteLevel's GPT-2 regex
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == config["vocab_size"]
    vocab = tokenizer.get_vocab()
    assert all(tokens[i] == token for token, i in vocab.items())
    types = meta["tokenizer.ggml.token_type"]
    assert types[vocab["<|im_end|>"]] == gguf.TokenType.CONTROL
    assert types[vocab["Ġ"]] == gguf.TokenType.NORMAL
    merges = json.loads((tiny_causal_lm_dir / "tokenizer.json").read_text())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in merges]
    assert meta["tokenizer.ggml.eos_token_id"] == vocab["<|endoftext|>"]
    assert meta["tokenizer.ggml.eot_token_id"] == vocab["<|im_end|>"]
    assert meta["tokenizer.ggml.padding_token_id"] == vocab["<|pad|>"]
    # the tokenizer has no bos: eos stands in (llama.cpp's default would be token 11), unadded
    assert meta["tokenizer.ggml.bos_token_id"] == vocab["<|endoftext|>"]
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template

    state = load_state_dict(tiny_causal_lm_dir)
    found = tensors(reader)
    assert "output.weight" not in found  # tied: llama.cpp reads token_embd
    assert len(found) == 2 + 9 * 2
    expected = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
    }
    for i in range(2):
        layer = f"model.layers.{i}."
        expected |= {
            f"blk.{i}.attn_norm.weight": state[layer + "input_layernorm.weight"],
            f"blk.{i}.attn_v.weight": state[layer + "self_attn.v_proj.weight"],
            f"blk.{i}.attn_output.weight": state[layer + "self_attn.o_proj.weight"],
            f"blk.{i}.ffn_norm.weight": state[layer + "post_attention_layernorm.weight"],
            f"blk.{i}.ffn_gate.weight": state[layer + "mlp.gate_proj.weight"],
            f"blk.{i}.ffn_up.weight": state[layer + "mlp.up_proj.weight"],
            f"blk.{i}.ffn_down.weight": state[layer + "mlp.down_proj.weight"],
        }
        q, k = found[f"blk.{i}.attn_q.weight"], found[f"blk.{i}.attn_k.weight"]
        # rows permuted for llama.cpp's rope: different from the weights, equal once undone
        assert not np.array_equal(values(q), state[layer + "self_attn.q_proj.weight"])
        np.testing.assert_array_equal(
            unpermute_rope(values(q), 4), state[layer + "self_attn.q_proj.weight"]
        )
        np.testing.assert_array_equal(
            unpermute_rope(values(k), 2), state[layer + "self_attn.k_proj.weight"]
        )
    for name, weight in expected.items():
        assert found[name].tensor_type == gguf.GGMLQuantizationType.F32, name
        np.testing.assert_array_equal(values(found[name]), weight, err_msg=name)


@pytest.mark.parametrize(
    "out_type, matrix_type, tolerance",
    [("f16", "F16", 1e-3), ("bf16", "BF16", 1e-2), ("q8_0", "Q8_0", 2e-2)],
)
def test_each_type_quantizes_matrices_and_keeps_vectors_f32(
    tiny_causal_lm_dir, tmp_path, out_type, matrix_type, tolerance
):
    reader = gguf.GGUFReader(export_gguf(tiny_causal_lm_dir, tmp_path / "m.gguf", out_type))
    state = load_state_dict(tiny_causal_lm_dir)
    found = tensors(reader)
    assert fields(reader)["general.file_type"] == getattr(
        gguf.LlamaFileType, f"MOSTLY_{matrix_type}"
    )
    assert found["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    for name, hf in (
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight"),
    ):
        assert found[name].tensor_type == getattr(gguf.GGMLQuantizationType, matrix_type)
        error = np.abs(values(found[name]) - state[hf]).max() / np.abs(state[hf]).max()
        assert error < tolerance, (name, error)


def test_default_tokenizer_and_qwen3(default_tokenizer, tmp_path):
    """A tokenizer with the recipe's default split exports as llama.cpp's `qwen2`; Qwen3's
    q/k are not permuted (llama.cpp applies NeoX rope) and its q/k norms are kept; embedding
    rows past the tokenizer are unused `[PADi]` tokens."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    rows = vocab_size(default_tokenizer) + 64
    config = Qwen3Config(
        vocab_size=rows,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    model_dir = save_model(Qwen3ForCausalLM(config), default_tokenizer, tmp_path / "qwen3")
    reader = gguf.GGUFReader(export_gguf(model_dir, tmp_path / "q.gguf", "f32"))
    meta = fields(reader)
    assert meta["general.architecture"] == "qwen3"
    assert meta["tokenizer.ggml.pre"] == "qwen2"
    assert meta["qwen3.attention.key_length"] == 16
    vocab = json.loads((default_tokenizer / "tokenizer.json").read_text())["model"]["vocab"]
    assert meta["tokenizer.ggml.bos_token_id"] == vocab["<|begin_of_text|>"]
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert len(meta["tokenizer.ggml.tokens"]) == rows
    assert meta["tokenizer.ggml.tokens"][-1] == f"[PAD{rows - 1}]"
    assert meta["tokenizer.ggml.token_type"][-1] == gguf.TokenType.UNUSED
    state = load_state_dict(model_dir)
    found = tensors(reader)
    for name, hf in (
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
        ("blk.0.attn_k_norm.weight", "model.layers.0.self_attn.k_norm.weight"),
        ("output.weight", "lm_head.weight"),
    ):
        np.testing.assert_array_equal(values(found[name]), state[hf], err_msg=name)


def test_gpt2_transposes_conv1d_and_keeps_position_embeddings_f32(tiny_tokenizer_dir, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size(tiny_tokenizer_dir), n_embd=64, n_layer=1, n_head=4, n_positions=96
    )
    model_dir = save_model(GPT2LMHeadModel(config), tiny_tokenizer_dir, tmp_path / "gpt2")
    reader = gguf.GGUFReader(export_gguf(model_dir, tmp_path / "g.gguf", "f16"))
    meta = fields(reader)
    assert meta["general.architecture"] == "gpt2"
    assert meta["gpt2.context_length"] == 96
    assert meta["gpt2.feed_forward_length"] == 256
    state = load_state_dict(model_dir)
    found = tensors(reader)
    assert found["position_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_array_equal(
        values(found["position_embd.weight"]), state["transformer.wpe.weight"]
    )
    qkv = values(found["blk.0.attn_qkv.weight"])
    assert qkv.shape == (192, 64)
    np.testing.assert_allclose(qkv, state["transformer.h.0.attn.c_attn.weight"].T, atol=1e-3)
    np.testing.assert_array_equal(
        values(found["blk.0.attn_qkv.bias"]), state["transformer.h.0.attn.c_attn.bias"]
    )


def test_qwen3_moe_stacks_the_experts(tiny_tokenizer_dir, tmp_path):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(
        vocab_size=vocab_size(tiny_tokenizer_dir),
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )
    model_dir = save_model(Qwen3MoeForCausalLM(config), tiny_tokenizer_dir, tmp_path / "moe")
    reader = gguf.GGUFReader(export_gguf(model_dir, tmp_path / "moe.gguf", "f32"))
    meta = fields(reader)
    assert meta["qwen3moe.expert_count"] == 4
    assert meta["qwen3moe.expert_used_count"] == 2
    assert meta["qwen3moe.expert_feed_forward_length"] == 32
    state = load_state_dict(model_dir)
    found = tensors(reader)
    for gguf_name, projection in (("ffn_gate_exps", "gate_proj"), ("ffn_down_exps", "down_proj")):
        stacked = values(found[f"blk.0.{gguf_name}.weight"])
        expected = np.stack(
            [state[f"model.layers.0.mlp.experts.{e}.{projection}.weight"] for e in range(4)]
        )
        np.testing.assert_array_equal(stacked, expected)
    assert found["blk.0.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_a_split_llama_cpp_cannot_reproduce_is_refused(tokenizer_corpus, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmtrain.tokenizer.config import split_pattern

    tokenizer_dir, _ = train(tmp_path / "tok", tokenizer_corpus, pattern="llmtrain")
    config = LlamaConfig(
        vocab_size=vocab_size(tokenizer_dir),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
    )
    model_dir = save_model(LlamaForCausalLM(config), tokenizer_dir, tmp_path / "model")
    capsys.readouterr()
    message = f"{model_dir / 'tokenizer.json'}: " + REFUSAL.format(
        regex=split_pattern("llmtrain", "single")
    )
    with pytest.raises(StageInputError) as error:
        export_gguf(model_dir, tmp_path / "m.gguf")
    assert str(error.value) == message
    assert not (tmp_path / "m.gguf").exists()
    with pytest.raises(SystemExit) as exit_status:
        main(["export", "gguf", str(model_dir), str(tmp_path / "m.gguf")])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.strip() == f"llmtrain: error: {message}"


def test_unsupported_architecture_is_refused(tiny_causal_lm_dir, tmp_path):
    model_dir = tmp_path / "bert"
    shutil.copytree(tiny_causal_lm_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(StageInputError) as error:
        export_gguf(model_dir, tmp_path / "m.gguf")
    assert str(error.value) == (
        f"{model_dir / 'config.json'}: architecture BertForMaskedLM cannot be exported to GGUF; "
        "supported: LlamaForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, GPT2LMHeadModel"
    )


def test_missing_gguf_package_names_the_extra(tiny_causal_lm_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    with pytest.raises(StageInputError) as error:
        export_gguf(tiny_causal_lm_dir, tmp_path / "m.gguf")
    assert str(error.value) == (
        "llmtrain export gguf needs the `gguf` package: pip install 'llmtrain[export]'"
    )


def test_cli_writes_the_gguf_and_an_ollama_modelfile(tiny_causal_lm_dir, tmp_path, capsys):
    out = str(tmp_path / "m.gguf")
    main(["export", "gguf", str(tiny_causal_lm_dir), out, "--type", "q8_0", "--modelfile"])
    assert capsys.readouterr().out.split() == [
        "wrote",
        str(tmp_path / "m.gguf"),
        "wrote",
        str(tmp_path / "Modelfile"),
    ]
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert fields(reader)["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert (tmp_path / "Modelfile").read_text() == (
        "FROM ./m.gguf\n"
        'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
        '{{ end }}<|im_start|>assistant\n"""\n'
        'PARAMETER stop "<|im_end|>"\n'
        'PARAMETER stop "<|endoftext|>"\n'
    )
