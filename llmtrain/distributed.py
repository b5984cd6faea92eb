"""The `deepspeed` and `fsdp` sections shared by pretraining and the alignment methods, and the
DeepSpeed config the first becomes.

    pretrain:
      deepspeed: {zero_stage: 2, offload_optimizer: false}
      # or a DeepSpeed JSON of your own; where it contradicts the recipe, that is an error:
      deepspeed: {config: ds_zero3.json}

    pretrain:
      fsdp: {reshard_after_forward: true}   # FSDP2 (torch's fully_shard): train/fsdp.py

Without either section a multi-process launch trains with plain DDP; a stage takes at most one.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import model_validator

from llmtrain.errors import RecipeError
from llmtrain.schema import InputPath, Section

Precision = Literal["fp32", "bf16", "fp16"]


class DeepSpeedSection(Section):
    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also parameters."""
    offload_optimizer: bool = False
    """Keep optimizer states (and the step) on the CPU: less GPU memory, slower steps."""
    offload_params: bool = False
    """Keep parameters on the CPU between uses (ZeRO-3 only)."""
    config: InputPath | None = None
    """A DeepSpeed JSON to start from; keys the recipe also sets must agree with it."""

    @model_validator(mode="after")
    def _offload_params_needs_zero3(self) -> DeepSpeedSection:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                f"offload_params needs zero_stage: 3 (got {self.zero_stage}); "
                "set zero_stage: 3 or offload_params: false"
            )
        return self


class FSDPSection(Section):
    """FSDP2: torch's fully_shard per transformer block and on the root (train/fsdp.py)."""

    reshard_after_forward: bool = True
    """Free each block's gathered parameters after its forward and gather them again for the
    backward (ZeRO-3's memory); false keeps them until the backward: one all-gather less per
    block, the whole model's parameters held between forward and backward."""
    cpu_offload: bool = False
    """Keep the sharded parameters, gradients and optimizer states in CPU memory (the optimizer
    step runs on the CPU): less GPU memory, slower steps."""


def one_sharding_engine(section: Any) -> None:
    """Refuse a stage section that sets both sharding engines (its validator calls this; the
    recipe's message puts the section's name in front)."""
    if section.deepspeed is not None and section.fsdp is not None:
        raise ValueError(
            "deepspeed and fsdp are two sharding engines (DeepSpeed ZeRO, FSDP2) and one run "
            "takes one; remove deepspeed or fsdp"
        )


def build_deepspeed_config(
    section: DeepSpeedSection,
    *,
    micro_batch_size: int,
    grad_accum_steps: int,
    world_size: int,
    precision: Precision,
    grad_clip: float | None,
    where: str,
) -> dict[str, Any]:
    """The DeepSpeed config for a run; `where` names the recipe section for error messages.

    Values from a user JSON are kept where the recipe says nothing; where both set a key they
    must agree ("auto" in the JSON agrees with anything).
    """
    ours: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": micro_batch_size * grad_accum_steps * world_size,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "gradient_clipping": grad_clip if grad_clip is not None else 0.0,
        "zero_optimization": {"stage": section.zero_stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    zero = ours["zero_optimization"]
    if section.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if section.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if section.zero_stage == 3:
        # final/ is written from a consolidated 16-bit state dict under ZeRO-3
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if section.config is None:
        return ours
    theirs = _read_json(section.config, where)
    _check_agreement(theirs, ours, section, where)
    return _merge(theirs, ours)


def refuse_keys_built_here(
    config: dict[str, Any], section: DeepSpeedSection, where: str, builder: str,
    built: dict[str, str],
) -> None:  # fmt: skip
    """A DeepSpeed JSON may not set what the stage builds itself; `built` maps each such key
    ("optimizer", "scheduler") to the recipe keys it is built from."""
    clashes = [key for key in built if key in config]
    if clashes:
        keys = " and ".join(clashes)
        raise RecipeError(
            f"{where}.deepspeed.config ({section.config}) sets {keys}, which {builder} builds "
            f"itself ({'; '.join(built[key] for key in clashes)}); remove {keys} from the JSON "
            f"and set {'it' if len(clashes) == 1 else 'them'} in the recipe"
        )


def _read_json(path: Any, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RecipeError(f"{where}.deepspeed.config: cannot read {path} as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{where}.deepspeed.config: {path} must hold a JSON object")
    return data


def _check_agreement(theirs: dict, ours: dict, section: DeepSpeedSection, where: str) -> None:
    checks = [
        ("train_micro_batch_size_per_gpu", f"{where}.micro_batch_size"),
        ("gradient_accumulation_steps", f"{where}.grad_accum_steps"),
        ("train_batch_size", f"{where}.micro_batch_size x grad_accum_steps x world size"),
        ("gradient_clipping", f"{where}.grad_clip"),
    ]
    problems = []
    for key, recipe_key in checks:
        if key in theirs and theirs[key] != "auto" and theirs[key] != ours[key]:
            problems.append(f"{key} is {theirs[key]!r} but {recipe_key} gives {ours[key]!r}")
    for dtype in ("bf16", "fp16"):
        enabled = theirs.get(dtype, {}).get("enabled")
        if enabled not in (None, "auto") and bool(enabled) != ours[dtype]["enabled"]:
            problems.append(
                f"{dtype}.enabled is {enabled} but {where}.precision makes it "
                f"{ours[dtype]['enabled']}"
            )
    stage = theirs.get("zero_optimization", {}).get("stage")
    if (
        stage is not None
        and "zero_stage" in section.model_fields_set
        and stage != section.zero_stage
    ):
        problems.append(
            f"zero_optimization.stage is {stage} but {where}.deepspeed.zero_stage is "
            f"{section.zero_stage}"
        )
    if problems:
        raise RecipeError(
            f"{where}.deepspeed.config ({section.config}) contradicts the recipe: "
            + "; ".join(problems)
            + ". Make them agree, or remove the key from one of them."
        )


def _merge(theirs: dict, ours: dict) -> dict:
    """Their JSON with our values filled in; their zero_optimization details are kept."""
    merged = dict(theirs)
    for key, value in ours.items():
        if key == "zero_optimization":
            zero = dict(theirs.get("zero_optimization", {}))
            for zkey, zvalue in value.items():
                if zkey == "stage" and "stage" in zero:
                    continue
                zero.setdefault(zkey, zvalue)
            merged[key] = zero
        elif isinstance(value, dict):
            merged[key] = {**theirs.get(key, {}), **value}
        elif merged.get(key) in (None, "auto"):
            merged[key] = value
    return merged
