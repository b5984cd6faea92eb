"""What pretraining reads, checked before any work: the data build, its tokenizer, the batch
arithmetic and the fit between the data, the tokenizer and the model.

Every check raises an `LLMTrainError` naming the recipe key or directory and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtrain.errors import RecipeError, StageInputError


@dataclass
class DataInputs:
    data_dir: Path
    manifest: dict[str, Any]
    tokenizer_dir: Path
    tokenizer: Any
    seq_len: int


def resolve_data(recipe: Any, section: Any) -> DataInputs:
    """The data build and its tokenizer; the tokenizer's fingerprint must match the build's."""
    from transformers import AutoTokenizer

    from llmtrain.data_pipeline.loader import read_manifest
    from llmtrain.tokenizer.fingerprint import tokenizer_fingerprint

    data_dir = Path(section.data) if section.data else recipe.input_dir("pretrain", "data")
    if not (data_dir / "manifest.json").is_file():
        raise StageInputError(
            f"pretrain: no data build at {data_dir} (manifest.json missing); run `llmtrain data` "
            "with this recipe first, or set pretrain.data to a data build directory"
        )
    manifest = read_manifest(data_dir)
    recorded = manifest.get("tokenizer", {})
    if section.tokenizer is not None:
        tokenizer_dir = Path(section.tokenizer)
    elif recorded.get("path") and Path(recorded["path"]).is_dir():
        tokenizer_dir = Path(recorded["path"])
    else:
        tokenizer_dir = recipe.stage_dir("tokenizer")
    if not tokenizer_dir.is_dir():
        raise StageInputError(
            f"pretrain: the tokenizer of the data build ({recorded.get('path')}) is not there "
            f"and neither is {tokenizer_dir}; set pretrain.tokenizer to the tokenizer directory "
            "the data was built with"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    fingerprint = tokenizer_fingerprint(tokenizer)
    if recorded.get("fingerprint") and recorded["fingerprint"] != fingerprint:
        raise StageInputError(
            f"the data build at {data_dir} was tokenized with another tokenizer than "
            f"{tokenizer_dir} (fingerprint {recorded['fingerprint'][:12]} in its manifest, "
            f"{fingerprint[:12]} here); rebuild the data with this tokenizer (`llmtrain data`) "
            f"or set pretrain.tokenizer to the one it was built with ({recorded.get('path')})"
        )
    seq_len = section.seq_len or int(manifest["seq_len"])
    return DataInputs(data_dir, manifest, tokenizer_dir, tokenizer, seq_len)


def grad_accum_steps(global_batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-batches per process per optimizer step, or an error when the sizes do not divide."""
    per_micro_step = micro_batch_size * world_size
    if global_batch_size % per_micro_step:
        raise RecipeError(
            f"pretrain.global_batch_size {global_batch_size} does not divide over {world_size} "
            f"processes x micro_batch_size {micro_batch_size} ({per_micro_step} sequences per "
            f"micro-step); make global_batch_size a multiple of {per_micro_step} or change "
            "micro_batch_size"
        )
    return global_batch_size // per_micro_step


def check_objective_fits(objective: str, family: str, model_name: str) -> None:
    from llmtrain.train.presets import FAMILY_OBJECTIVE

    if FAMILY_OBJECTIVE[family] != objective:
        expected = FAMILY_OBJECTIVE[family]
        fits = {
            "clm": "a decoder (llama, gpt, moe)",
            "mlm": "an encoder (bert, modernbert)",
            "span": "an encoder-decoder (t5)",
        }[objective]
        raise RecipeError(
            f"pretrain.objective {objective} does not fit {model_name} (a {family} model "
            f"trains with {expected}); use {fits} preset, or objective {expected}"
        )


def check_token_ids(manifest: dict[str, Any], vocab_rows: int, data_dir: Path) -> None:
    """Every shard's largest token id (recorded by the build) must be a row of the model's
    embeddings; an id past it would index out of range (a device assert on a GPU). Shards of
    builds that predate the record are not checked."""
    for shard in manifest["shards"]:
        max_id = shard.get("max_id")
        if max_id is not None and max_id >= vocab_rows:
            raise StageInputError(
                f"{data_dir / shard['path']}: holds token id {max_id}, but the model's "
                f"vocabulary has {vocab_rows} ids (0-{vocab_rows - 1}); the shard was written "
                "with another tokenizer or is damaged: rebuild the data with the model's "
                "tokenizer (`llmtrain data RECIPE --overwrite`)"
            )


def check_positions(model_config: Any, tokens: int, *, seq_len: int, data_dir: Path) -> None:
    """The model must accept the longest sequence it will be given."""
    from llmtrain.train.models import max_positions

    limit = max_positions(model_config)
    if limit is not None and tokens > limit:
        raise StageInputError(
            f"pretrain: seq_len {seq_len} (sequences of {tokens} tokens) is above the model's "
            f"{limit} positions; raise model.max_position_embeddings to at least {tokens} or "
            f"train on shorter sequences (pretrain.seq_len, or rebuild {data_dir} with a "
            "shorter data.seq_len)"
        )


def check_enough_data(
    available_windows: int, global_batch_size: int, data_dir: Path, seq_len: int
) -> None:
    if available_windows < global_batch_size:
        raise StageInputError(
            f"the data build at {data_dir} holds {available_windows} training sequences of "
            f"{seq_len + 1} tokens, fewer than one global batch ({global_batch_size}); add data, "
            "or lower pretrain.global_batch_size or seq_len"
        )
