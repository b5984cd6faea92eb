"""`llmtrain export gguf`: a Hugging Face model directory as one GGUF file for llama.cpp
(and Ollama, LM Studio).

Architectures: Llama, Qwen3, Qwen3-MoE, GPT-2. Tensor names, layouts and hyperparameter keys
are those llama.cpp's convert_hf_to_gguf.py writes: Llama's q/k rows are permuted from the
Hugging Face rotary layout (halves) to llama.cpp's (interleaved pairs), GPT-2's Conv1D weights
are transposed, Qwen3-MoE's experts are stacked into one tensor per projection. Norms, biases,
the router and position embeddings stay float32; a q8_0 tensor whose rows are not a multiple
of 32 falls back to f16, as in the converter.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from llmtrain.errors import StageInputError

from .cli import TYPES
from .vocab import gguf_vocab

log = logging.getLogger(__name__)

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3moe",
    "GPT2LMHeadModel": "gpt2",
}
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
"""llama.cpp's GPT-2 uses the tanh approximation of GELU."""


def require_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise StageInputError(
            "llmtrain export gguf needs the `gguf` package: pip install 'llmtrain[export]'"
        ) from None
    return gguf


def read_config(model_dir: Path) -> tuple[dict[str, Any], str]:
    """config.json and its llama.cpp architecture name; StageInputError for others."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise StageInputError(f"{model_dir}: no config.json; pass a Hugging Face model directory")
    config = json.loads(path.read_text(encoding="utf-8"))
    names = config.get("architectures") or [config.get("model_type")]
    arch = ARCHITECTURES.get(names[0])
    if arch is None:
        raise StageInputError(
            f"{path}: architecture {names[0]} cannot be exported to GGUF; supported: "
            f"{', '.join(ARCHITECTURES)}"
        )
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise StageInputError(
            f"{path}: rope_type {rope['rope_type']!r} is not exported; only default rope is"
        )
    if arch == "qwen3moe" and not config.get("norm_topk_prob", False):
        raise StageInputError(
            f"{path}: norm_topk_prob false; llama.cpp's qwen3moe always renormalises the "
            "top-k expert weights"
        )
    if arch == "gpt2" and config.get("activation_function") not in GPT2_ACTIVATIONS:
        raise StageInputError(
            f"{path}: activation_function {config.get('activation_function')!r}; llama.cpp's "
            f"gpt2 computes {' / '.join(GPT2_ACTIVATIONS)}"
        )
    return config, arch


def export_gguf(model_dir: str | Path, out_path: str | Path, out_type: str = "f16") -> Path:
    """Write `out_path` (GGUF v3) from the model directory; returns the path."""
    gguf = require_gguf()
    model_dir, out_path = Path(model_dir), Path(out_path)
    if out_type not in TYPES:
        raise StageInputError(f"--type {out_type}: choose one of {', '.join(TYPES)}")
    config, arch = read_config(model_dir)
    vocab = gguf_vocab(model_dir, config["vocab_size"])
    writer = gguf.GGUFWriter(str(out_path), arch)
    writer.add_name(model_dir.resolve().name if model_dir.name != "final" else _run_name(model_dir))
    _add_hyperparameters(gguf, writer, config, arch, out_type)
    _add_vocab(writer, vocab)
    for name, data in _tensors(gguf, model_dir, config, arch):
        _add_tensor(gguf, writer, name, data, out_type)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    log.info("wrote %s (%s, %s, pre-tokenizer %s)", out_path, arch, out_type, vocab.pre)
    return out_path


def _run_name(final_dir: Path) -> str:
    """<output_dir>/<stage>/final -> '<output_dir name>-<stage>'."""
    stage = final_dir.resolve().parent
    return f"{stage.parent.name}-{stage.name}"


def file_type(gguf: Any, out_type: str) -> Any:
    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[out_type]


def _add_hyperparameters(gguf: Any, w: Any, c: dict[str, Any], arch: str, out_type: str) -> None:
    if arch == "gpt2":
        w.add_block_count(c["n_layer"])
        w.add_context_length(c["n_positions"])
        w.add_embedding_length(c["n_embd"])
        w.add_feed_forward_length(c.get("n_inner") or 4 * c["n_embd"])
        w.add_head_count(c["n_head"])
        w.add_layer_norm_eps(c["layer_norm_epsilon"])
    else:
        heads = c["num_attention_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
        w.add_block_count(c["num_hidden_layers"])
        w.add_context_length(c["max_position_embeddings"])
        w.add_embedding_length(c["hidden_size"])
        w.add_feed_forward_length(c["intermediate_size"])
        w.add_head_count(heads)
        w.add_head_count_kv(c.get("num_key_value_heads") or heads)
        w.add_rope_freq_base(float(_rope_theta(c)))
        w.add_layer_norm_rms_eps(c["rms_norm_eps"])
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        if arch == "llama":
            w.add_vocab_size(c["vocab_size"])
            w.add_rope_dimension_count(head_dim)
        if arch == "qwen3moe":
            w.add_expert_count(expert_count(c))
            w.add_expert_used_count(c["num_experts_per_tok"])
            w.add_expert_feed_forward_length(c["moe_intermediate_size"])
    w.add_file_type(file_type(gguf, out_type))


def expert_count(config: dict[str, Any]) -> int:
    """transformers 5 saves Qwen3-MoE's num_experts as num_local_experts."""
    return config.get("num_local_experts") or config["num_experts"]


def _rope_theta(config: dict[str, Any]) -> float:
    rope = config.get("rope_parameters") or {}
    return rope.get("rope_theta", config.get("rope_theta", 10000.0))


def _add_vocab(w: Any, vocab: Any) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    w.add_token_merges(vocab.merges)
    for add, value in (
        (w.add_bos_token_id, vocab.bos_id),
        (w.add_eos_token_id, vocab.eos_id),
        (w.add_eot_token_id, vocab.eot_id),
        (w.add_pad_token_id, vocab.pad_id),
    ):
        if value is not None:
            add(value)
    w.add_add_bos_token(vocab.add_bos)
    w.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)


def permute_rope(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotary layout (first half, second half of each head) to llama.cpp's
    (interleaved pairs), as convert_hf_to_gguf.py's LlamaModel.permute."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def unpermute_rope(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_rope`."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def load_state_dict(model_dir: Path) -> dict[str, np.ndarray]:
    """Every safetensors shard of the directory, as float32 numpy arrays."""
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise StageInputError(f"{model_dir}: no *.safetensors weights")
    state = {}
    for path in files:
        for name, tensor in load_file(str(path)).items():
            state[name] = tensor.float().numpy()
    return state


def _tensors(gguf: Any, model_dir: Path, config: dict[str, Any], arch: str):
    """(GGUF name, float32 array) for every tensor llama.cpp loads, in the model's order."""
    state = load_state_dict(model_dir)
    blocks = config["n_layer"] if arch == "gpt2" else config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), blocks)
    tied = config.get("tie_word_embeddings", arch == "gpt2")
    experts: dict[str, np.ndarray] = {}
    for name, data in state.items():
        if name == "lm_head.weight" and tied:
            continue  # llama.cpp uses token_embd when output is absent
        if name.endswith((".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")):
            continue
        if arch == "llama" and name.endswith("self_attn.q_proj.weight"):
            data = permute_rope(data, config["num_attention_heads"])
        elif arch == "llama" and name.endswith("self_attn.k_proj.weight"):
            data = permute_rope(
                data, config.get("num_key_value_heads") or config["num_attention_heads"]
            )
        elif arch == "gpt2" and name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            data = np.ascontiguousarray(data.T)
        elif arch == "qwen3moe" and ".mlp.experts." in name:
            yield from _stacked_experts(name, data, experts, expert_count(config), names)
            continue
        yield _gguf_name(names, name), data
    if experts:
        raise StageInputError(f"{model_dir}: incomplete experts {sorted(experts)[:4]}")


def _stacked_experts(name: str, data: np.ndarray, pending: dict, n_experts: int, names: Any):
    """Per-expert projections (model.layers.L.mlp.experts.E.P.weight) stacked into one
    [experts, out, in] tensor per layer and projection once all experts are seen; a fused
    gate_up_proj [experts, 2*ff, hidden] split into gate and up."""
    prefix, _, rest = name.partition(".mlp.experts.")
    if rest in ("gate_up_proj", "gate_up_proj.weight"):
        half = data.shape[-2] // 2
        yield _gguf_name(names, f"{prefix}.mlp.experts.gate_proj.weight"), data[..., :half, :]
        yield _gguf_name(names, f"{prefix}.mlp.experts.up_proj.weight"), data[..., half:, :]
        return
    if rest in ("down_proj", "down_proj.weight"):
        yield _gguf_name(names, f"{prefix}.mlp.experts.down_proj.weight"), data
        return
    expert, _, projection = rest.partition(".")
    pending[name] = data
    keys = [f"{prefix}.mlp.experts.{e}.{projection}" for e in range(n_experts)]
    if all(k in pending for k in keys):
        stacked = np.stack([pending.pop(k) for k in keys])
        yield _gguf_name(names, f"{prefix}.mlp.experts.{projection}"), stacked


def _gguf_name(names: Any, hf_name: str) -> str:
    new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if new is None:
        raise StageInputError(f"tensor {hf_name} has no GGUF name for this architecture")
    return new


def tensor_type(gguf: Any, name: str, data: np.ndarray, out_type: str) -> Any:
    """The GGML type of one tensor: float32 for vectors, norms, biases, the MoE router and
    position embeddings; otherwise the file's type."""
    q = gguf.GGMLQuantizationType
    keep_f32 = (
        data.ndim <= 1
        or name.endswith("_norm.weight")
        or not name.endswith(".weight")
        or name.endswith((".ffn_gate_inp.weight", "position_embd.weight"))
    )
    if keep_f32:
        return q.F32
    return {"f32": q.F32, "f16": q.F16, "bf16": q.BF16, "q8_0": q.Q8_0}[out_type]


def _add_tensor(gguf: Any, writer: Any, name: str, data: np.ndarray, out_type: str) -> None:
    qtype = tensor_type(gguf, name, data, out_type)
    try:
        packed = gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)
    except gguf.QuantError:
        qtype = gguf.GGMLQuantizationType.F16
        packed = gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)
    writer.add_tensor(name, packed, raw_dtype=qtype)  # the writer reads a byte shape as such
