"""Presets to `transformers` models: configs, classes, initialisation, tokenizer checks.

    config = config_for_tokenizer(recipe.model, tokenizer)
    model = create_model(recipe.model, tokenizer, objective="clm", seed=1234)

Every model is a stock `transformers` class, so checkpoints load anywhere with
`AutoModelFor*.from_pretrained`. Other stages (alignment, `llmtrain plan`) use these functions
to build or size a preset.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MixtralConfig,
    ModernBertConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2MoeConfig,
    Qwen3MoeConfig,
    T5Config,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_MASKED_LM_MAPPING,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING,
)

from llmtrain.compat import set_attn_implementation, supports_attention
from llmtrain.errors import StageInputError
from llmtrain.train.config import ModelSection
from llmtrain.train.presets import FAMILY_OBJECTIVE, MOE_FAMILIES

VOCAB_MULTIPLE = 64
"""Embedding rows are padded to a multiple of this (tensor-core friendly matmul shapes)."""

AUTO_CLASS = {
    "clm": AutoModelForCausalLM,
    "mlm": AutoModelForMaskedLM,
    "span": AutoModelForSeq2SeqLM,
}
"""The Auto class that loads a model trained with each objective."""

CLASS_MAPPING = {
    "clm": MODEL_FOR_CAUSAL_LM_MAPPING,
    "mlm": MODEL_FOR_MASKED_LM_MAPPING,
    "span": MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING,
}

# Parameter names (suffixes) of the projections that write into the residual stream; their
# initial std is scaled by 1/sqrt(2 x layers) (GPT-2, "Language Models are Unsupervised
# Multitask Learners", section 2.3). T5 keeps its own initialisation (see init_weights).
RESIDUAL_PROJECTIONS = {
    "llama": ("self_attn.o_proj.weight", "mlp.down_proj.weight"),
    "qwen3_moe": ("self_attn.o_proj.weight", "experts.down_proj"),
    "qwen2_moe": ("self_attn.o_proj.weight", "experts.down_proj", "shared_expert.down_proj.weight"),
    "mixtral": ("self_attn.o_proj.weight", "experts.down_proj"),
    "gpt2": ("attn.c_proj.weight", "mlp.c_proj.weight"),
    "bert": ("attention.output.dense.weight", "output.dense.weight"),
    "modernbert": ("attn.Wo.weight", "mlp.Wo.weight"),
}

MODEL_TYPE_FAMILY = {
    "llama": "llama",
    "gpt2": "gpt2",
    "qwen3_moe": "qwen3_moe",
    "qwen2_moe": "qwen2_moe",
    "mixtral": "mixtral",
    "bert": "bert",
    "modernbert": "modernbert",
    "t5": "t5",
}


def padded_vocab_size(tokenizer_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    return -(-tokenizer_size // multiple) * multiple


def family_of_config(config: PretrainedConfig) -> str:
    """Our family name for a loaded config; unknown types by their shape (decoder/encoder)."""
    if config.model_type in MODEL_TYPE_FAMILY:
        return MODEL_TYPE_FAMILY[config.model_type]
    if getattr(config, "is_encoder_decoder", False):
        return "t5"
    return "llama"  # any other causal LM: trained with clm like the decoder families


def objective_of_family(family: str) -> str:
    return FAMILY_OBJECTIVE[family]


def token_ids(tokenizer: Any) -> dict[str, int | None]:
    """The special token ids a model config records (None where the tokenizer has none)."""
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "cls_token_id": getattr(tokenizer, "cls_token_id", None),
        "sep_token_id": getattr(tokenizer, "sep_token_id", None),
    }


def config_for_tokenizer(section: ModelSection, tokenizer: Any) -> PretrainedConfig:
    """The config of a preset for this tokenizer: its size (padded to 64) and special ids."""
    vocab_size = section.vocab_size or padded_vocab_size(len(tokenizer))
    check_vocab_fits(vocab_size, tokenizer, explicit=section.vocab_size is not None)
    return build_config(section, vocab_size=vocab_size, special_ids=token_ids(tokenizer))


def build_config(
    section: ModelSection, *, vocab_size: int, special_ids: dict[str, int | None] | None = None
) -> PretrainedConfig:
    """The transformers config of a preset with the section's overrides (no tokenizer needed:
    `llmtrain plan` sizes presets from a vocabulary size alone)."""
    dims = section.dims()
    family = dims["family"]
    ids = {"pad_token_id": None, "eos_token_id": None, "bos_token_id": None, **(special_ids or {})}
    common = dict(
        vocab_size=vocab_size,
        initializer_range=section.init_std,
        pad_token_id=ids["pad_token_id"],
        eos_token_id=ids["eos_token_id"],
        bos_token_id=ids["bos_token_id"],
    )
    if family == "llama" or family in MOE_FAMILIES:
        decoder = dict(
            common,
            hidden_size=dims["hidden_size"],
            num_hidden_layers=dims["num_layers"],
            num_attention_heads=dims["num_heads"],
            num_key_value_heads=dims.get("num_kv_heads") or dims["num_heads"],
            max_position_embeddings=dims["max_position_embeddings"],
            rope_parameters={"rope_type": "default", "rope_theta": float(dims["rope_theta"])},
            tie_word_embeddings=bool(dims.get("tie_word_embeddings", False)),
            attention_dropout=section.dropout,
            use_cache=False,
        )
        if dims.get("head_dim"):
            decoder["head_dim"] = dims["head_dim"]
        if family == "llama":
            config = LlamaConfig(intermediate_size=dims["intermediate_size"], **decoder)
        elif family == "mixtral":
            config = MixtralConfig(
                intermediate_size=dims["intermediate_size"],
                num_local_experts=dims["num_experts"],
                num_experts_per_tok=dims["experts_per_token"],
                router_aux_loss_coef=dims["router_aux_loss_coef"],
                output_router_logits=True,
                **decoder,
            )
        else:
            moe = dict(
                intermediate_size=dims["intermediate_size"],
                moe_intermediate_size=dims["moe_intermediate_size"],
                num_experts=dims["num_experts"],
                num_experts_per_tok=dims["experts_per_token"],
                router_aux_loss_coef=dims["router_aux_loss_coef"],
                output_router_logits=True,
                decoder_sparse_step=1,
                norm_topk_prob=True,
            )
            if family == "qwen2_moe":
                decoder.pop("head_dim", None)
                config = Qwen2MoeConfig(
                    shared_expert_intermediate_size=dims.get("shared_expert_intermediate_size", 0),
                    **moe,
                    **decoder,
                )
            else:
                config = Qwen3MoeConfig(**moe, **decoder)
    elif family == "gpt2":
        config = GPT2Config(
            **common,
            n_positions=dims["max_position_embeddings"],
            n_embd=dims["hidden_size"],
            n_layer=dims["num_layers"],
            n_head=dims["num_heads"],
            n_inner=dims.get("intermediate_size"),
            resid_pdrop=section.dropout,
            embd_pdrop=section.dropout,
            attn_pdrop=section.dropout,
            tie_word_embeddings=dims.get("tie_word_embeddings", True),
            use_cache=False,
        )
    elif family == "bert":
        config = BertConfig(
            **common,
            hidden_size=dims["hidden_size"],
            num_hidden_layers=dims["num_layers"],
            num_attention_heads=dims["num_heads"],
            intermediate_size=dims["intermediate_size"],
            max_position_embeddings=dims["max_position_embeddings"],
            hidden_dropout_prob=section.dropout,
            attention_probs_dropout_prob=section.dropout,
        )
    elif family == "modernbert":
        cls_id = ids.get("cls_token_id")
        sep_id = ids.get("sep_token_id")
        cls_id = cls_id if cls_id is not None else ids["bos_token_id"]
        sep_id = sep_id if sep_id is not None else ids["eos_token_id"]
        config = ModernBertConfig(
            **common,
            cls_token_id=cls_id,
            sep_token_id=sep_id,
            hidden_size=dims["hidden_size"],
            num_hidden_layers=dims["num_layers"],
            num_attention_heads=dims["num_heads"],
            intermediate_size=dims["intermediate_size"],
            max_position_embeddings=dims["max_position_embeddings"],
            attention_dropout=section.dropout,
            mlp_dropout=section.dropout,
            embedding_dropout=section.dropout,
        )
    elif family == "t5":
        decoder_start = (
            ids["pad_token_id"] if ids["pad_token_id"] is not None else ids["eos_token_id"]
        )
        config = T5Config(
            vocab_size=vocab_size,
            d_model=dims["hidden_size"],
            d_kv=dims.get("head_dim") or dims["hidden_size"] // dims["num_heads"],
            d_ff=dims["intermediate_size"],
            num_layers=dims["num_layers"],
            num_decoder_layers=dims["num_layers"],
            num_heads=dims["num_heads"],
            dropout_rate=section.dropout,
            feed_forward_proj="gated-gelu",
            # transformers 5 always ties T5's output head to its embedding; False would only
            # drop the d_model^-0.5 scaling of decoder outputs, which a tied head needs
            tie_word_embeddings=True,
            pad_token_id=ids["pad_token_id"],
            eos_token_id=ids["eos_token_id"],
            decoder_start_token_id=decoder_start,
            use_cache=False,
        )
    else:  # pragma: no cover - presets.py and this function list the same families
        raise ValueError(f"no config builder for family {family!r}")
    for key, value in section.config.items():
        setattr(config, key, value)
    return config


def check_vocab_fits(vocab_size: int, tokenizer: Any, *, explicit: bool = True) -> None:
    """A tokenizer larger than the model's embedding table is an error (ids would overflow)."""
    if len(tokenizer) > vocab_size:
        source = "model.vocab_size" if explicit else "the model's vocabulary"
        raise StageInputError(
            f"the tokenizer ({tokenizer.name_or_path}) has {len(tokenizer)} tokens but "
            f"{source} is {vocab_size}; raise model.vocab_size to at least {len(tokenizer)} "
            "or remove it (the vocabulary then comes from the tokenizer, padded to a multiple "
            f"of {VOCAB_MULTIPLE})"
        )


ARCHITECTURE_SUFFIX = {
    "causal_lm": "ForCausalLM",
    "reward_model": "ForSequenceClassification",
    "clm": "ForCausalLM",
    "mlm": "ForMaskedLM",
    "span": "ForConditionalGeneration",
}
"""The class-name ending of a model of each kind (a stage's output kind or an objective)."""

KIND_NAMES = {
    "causal_lm": "a causal language model (*ForCausalLM)",
    "reward_model": "a reward model (*ForSequenceClassification)",
    "clm": "a causal language model (*ForCausalLM)",
    "mlm": "a masked language model (*ForMaskedLM)",
    "span": "an encoder-decoder (*ForConditionalGeneration)",
}


def check_model_kind(model_dir: Any, needs: tuple[str, ...], where: str) -> None:
    """Refuse a model directory whose config.json names a model with another head than the
    kinds in `needs` (a reward model given where a causal LM is trained loads with a new,
    random lm_head). A base model with no head (LlamaModel) or no `architectures` passes."""
    import json
    from pathlib import Path

    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    heads = [name for name in config.get("architectures") or [] if "For" in name]
    if not heads or any(
        name.endswith(ARCHITECTURE_SUFFIX[kind]) for name in heads for kind in needs
    ):
        return
    wanted = " or ".join(KIND_NAMES[kind] for kind in needs)
    raise StageInputError(
        f"{where}: {model_dir} holds a {', '.join(heads)}, and this stage needs {wanted}; "
        "give the final/ of a stage that writes one"
    )


def check_same_vocabulary(model_dir: Any, tokenizer: Any, where: str, key: str, fix: str) -> None:
    """Refuse a tokenizer other than the model's own when their vocabularies differ in size:
    the model directory's tokenizer says which ids the model learned (its embedding table may
    be padded, so the table alone cannot tell a smaller tokenizer from padding)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    if not (Path(model_dir) / "tokenizer_config.json").is_file():
        return
    own = AutoTokenizer.from_pretrained(str(model_dir))
    if len(own) != len(tokenizer):
        raise StageInputError(
            f"{where}: {key} ({tokenizer.name_or_path}) has {len(tokenizer)} tokens but the "
            f"model in {model_dir} was trained with its own tokenizer of {len(own)} tokens; "
            f"they do not belong together: {fix}"
        )


def max_positions(config: PretrainedConfig) -> int | None:
    """The longest sequence a config accepts; None when positions are relative (T5)."""
    if getattr(config, "model_type", None) == "t5":
        return None
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    return None


def num_layers(config: PretrainedConfig) -> int:
    return int(getattr(config, "num_hidden_layers", None) or config.num_layers)


def resolve_attn_implementation(model_class: type, requested: str | None) -> str:
    """The attention kernel to build with; a clear error when flash-attention-2 cannot run."""
    if requested == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise StageInputError(
                "model.attn_implementation: flash_attention_2 needs the flash-attn package "
                "(pip install flash-attn --no-build-isolation) and a CUDA GPU; use sdpa"
            )
        if not torch.cuda.is_available():
            raise StageInputError(
                "model.attn_implementation: flash_attention_2 needs a CUDA GPU; use sdpa"
            )
        if not supports_attention(model_class, "flash_attention_2"):
            raise StageInputError(
                f"model.attn_implementation: {model_class.__name__} does not support "
                "flash_attention_2; use sdpa or eager"
            )
        return requested
    if requested == "sdpa" and not supports_attention(model_class, "sdpa"):
        raise StageInputError(
            f"model.attn_implementation: {model_class.__name__} does not support sdpa; "
            "use eager (or leave it unset)"
        )
    if requested is not None:
        return requested
    return "sdpa" if supports_attention(model_class, "sdpa") else "eager"


def create_model(
    section: ModelSection, tokenizer: Any, *, objective: str, seed: int
) -> PreTrainedModel:
    """A freshly initialised preset model, or the model at `section.path`, in fp32."""
    auto = AUTO_CLASS[objective]
    if section.path is not None:
        check_model_kind(section.path, (objective,), "model.path")
        check_same_vocabulary(
            section.path,
            tokenizer,
            "model.path",
            "the data build's tokenizer",
            "build the data with the model's tokenizer or start from a model trained with this one",
        )
        config = _load_config(section)
        model_class = CLASS_MAPPING[objective][type(config)]
        model = auto.from_pretrained(
            str(section.path),
            dtype=torch.float32,
            attn_implementation=resolve_attn_implementation(
                model_class, section.attn_implementation
            ),
            trust_remote_code=section.trust_remote_code,
        )
        check_vocab_fits(model.get_input_embeddings().num_embeddings, tokenizer)
        return model
    config = config_for_tokenizer(section, tokenizer)
    model_class = CLASS_MAPPING[objective][type(config)]
    set_attn_implementation(
        config, resolve_attn_implementation(model_class, section.attn_implementation)
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
        init_weights(model, section.dims()["family"], section.init_std, section.scale_residual_init)
    return model.float()


def _load_config(section: ModelSection) -> PretrainedConfig:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(
        str(section.path), trust_remote_code=section.trust_remote_code
    )


@torch.no_grad()
def init_weights(model: nn.Module, family: str, std: float, scale_residual: bool) -> None:
    """Normal(0, std) weights (transformers' own init, with initializer_range = std); residual
    output projections re-drawn with std / sqrt(2 x layers).

    T5 keeps transformers' T5 initialisation: its attention has no 1/sqrt(d) scaling, and the
    init (std d_model^-0.5 and the like) is what makes it train.
    """
    if not scale_residual or family not in RESIDUAL_PROJECTIONS:
        return
    residual_std = std / math.sqrt(2 * num_layers(model.config))
    suffixes = RESIDUAL_PROJECTIONS[family]
    for name, param in model.named_parameters():
        if name.endswith(suffixes):
            param.normal_(mean=0.0, std=residual_std)
