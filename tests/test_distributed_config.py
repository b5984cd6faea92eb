import json

import pytest

from llmtrain.distributed import DeepSpeedSection, build_deepspeed_config
from llmtrain.errors import RecipeError
from llmtrain.recipe import validate_section


def build(section, **kw):
    args = dict(
        micro_batch_size=4,
        grad_accum_steps=2,
        world_size=2,
        precision="bf16",
        grad_clip=1.0,
        where="pretrain",
    )
    args.update(kw)
    return build_deepspeed_config(section, **args)


def test_config_from_recipe():
    cfg = build(DeepSpeedSection(zero_stage=3, offload_optimizer=True, offload_params=True))
    assert cfg["train_batch_size"] == 16
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True


def test_offload_params_needs_zero3():
    with pytest.raises(RecipeError, match="deepspeed: offload_params needs zero_stage: 3"):
        validate_section(
            DeepSpeedSection, {"zero_stage": 2, "offload_params": True}, source="deepspeed"
        )


def test_user_json_kept_where_recipe_is_silent(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": "auto",
                "zero_optimization": {"stage": 3, "overlap_comm": True},
                "bf16": {"enabled": "auto"},
            }
        )
    )
    cfg = build(DeepSpeedSection(config=path))
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["zero_optimization"] == {"stage": 3, "overlap_comm": True}
    assert cfg["bf16"] == {"enabled": True}


def test_user_json_that_contradicts_the_recipe_is_an_error(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": 8,
                "fp16": {"enabled": True},
                "zero_optimization": {"stage": 1},
            }
        )
    )
    section = DeepSpeedSection(zero_stage=2, config=path)
    with pytest.raises(RecipeError) as err:
        build(section)
    message = str(err.value)
    assert message.startswith(f"pretrain.deepspeed.config ({path}) contradicts the recipe:")
    assert "train_micro_batch_size_per_gpu is 8 but pretrain.micro_batch_size gives 4" in message
    assert "fp16.enabled is True but pretrain.precision makes it False" in message
    assert "zero_optimization.stage is 1 but pretrain.deepspeed.zero_stage is 2" in message


def test_unreadable_json(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text("{not json")
    with pytest.raises(RecipeError, match=r"pretrain.deepspeed.config: cannot read .* as JSON"):
        build(DeepSpeedSection(config=path))


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo", "grpo"])
def test_deepspeed_and_fsdp_together_are_refused(stage):
    from llmtrain.recipe import validate_recipe

    bodies = {
        "pretrain": {"steps": 10},
        "sft": {"model": "m", "data": [{"path": "d.jsonl"}]},
        "dpo": {"data": [{"path": "d.jsonl"}]},
        "grpo": {"data": [{"path": "p.jsonl"}], "rewards": [{"type": "answer_match"}]},
    }
    body = {**bodies[stage], "deepspeed": {"zero_stage": 2}, "fsdp": {}}
    with pytest.raises(RecipeError) as err:
        validate_recipe({"name": "x", "output_dir": "o", stage: body})
    assert (
        f"{stage}: deepspeed and fsdp are two sharding engines (DeepSpeed ZeRO, FSDP2) and one "
        "run takes one; remove deepspeed or fsdp"
    ) in str(err.value)


def test_qlora_under_fsdp_is_refused():
    from llmtrain.recipe import validate_recipe

    body = {
        "model": "m",
        "data": [{"path": "d.jsonl"}],
        "fsdp": {},
        "lora": {"r": 8, "quantization": "4bit"},
    }
    with pytest.raises(RecipeError) as err:
        validate_recipe({"name": "x", "output_dir": "o", "sft": body})
    assert (
        "sft: lora.quantization (QLoRA) does not run under fsdp here: FSDP would have to shard "
        "the 4-bit weights, which needs a storage dtype for them (bnb_4bit_quant_storage) that "
        "llmtrain does not set; use lora.quantization: none, or deepspeed"
    ) in str(err.value)
