"""`llmtrain plan`: parameter counts against built models, the memory and compute formulas, and
every recipe in recipes/ checked and planned."""

import json

import pytest

from llmtrain.cli import main
from llmtrain.errors import RecipeError
from llmtrain.recipe import load_recipe, validate_recipe
from llmtrain.train.plan import (
    GIB,
    chinchilla_loss,
    deepspeed_buffer_bytes,
    format_plan,
    make_plan,
    model_state_bytes,
)
from tests.conftest import REPO

TINY_PRESETS = [
    "llama-tiny",
    "gpt-tiny",
    "moe-tiny",
    "qwen2-moe-tiny",
    "mixtral-tiny",
    "bert-tiny",
    "modernbert-tiny",
    "t5-tiny",
]


def tiny_recipe(preset: str, **pretrain):
    body = {"name": "p", "output_dir": "out", "model": {"preset": preset, "vocab_size": 576}}
    if pretrain:
        body["pretrain"] = pretrain
    return validate_recipe(body)


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_parameter_count_equals_the_built_model(preset, tiny_tokenizer_dir):
    import torch
    from transformers import AutoTokenizer

    from llmtrain.train.models import create_model, objective_of_family
    from llmtrain.train.presets import preset_family

    recipe = tiny_recipe(preset)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    objective = objective_of_family(preset_family(preset))
    model = create_model(recipe.model, tokenizer, objective=objective, seed=0)
    plan = make_plan(recipe, gpus=1)
    assert plan.params_total == sum(p.numel() for p in model.parameters())
    lookups = {  # token and position embeddings, each tensor once (tied or shared)
        id(p): p.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding)
        for p in m.parameters(recurse=False)
    }
    assert plan.params_embedding == sum(lookups.values())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in f".{n}")
    if experts:  # 2 of 4 experts per token: half the expert weights are idle
        assert plan.params_active == plan.params_total - experts // 2
    else:
        assert plan.params_active == plan.params_total


def test_model_states_follow_the_zero_paper():
    n, world = 1_000_000_000, 8
    state = {
        (stage, offload): model_state_bytes(
            n, zero_stage=stage, world=world, precision="bf16", offload=offload
        )
        for stage in (0, 1, 2, 3)
        for offload in ("none", "optimizer")
    }
    assert state[0, "none"] == (16e9, 0.0)  # fp32 weights, grads, two moments: no sharding
    assert state[1, "none"] == (2e9 + 2e9 + 12e9 / 8, 0.0)
    assert state[2, "none"] == (2e9 + 14e9 / 8, 0.0)
    assert state[3, "none"] == (16e9 / 8, 0.0)
    # offload moves the fp32 master copy, both moments and the fp32 gradient partition
    assert state[2, "optimizer"] == (2e9 + 2e9 / 8, 16e9 / 8)
    gpu, cpu = model_state_bytes(
        n, zero_stage=3, world=world, precision="bf16", offload="optimizer+params"
    )
    assert (gpu, cpu) == (2e9 / 8, 16e9 / 8 + 2e9 / 8)
    # fp32 DeepSpeed keeps 4-byte weights and gradients
    assert model_state_bytes(n, zero_stage=3, world=1, precision="fp32", offload="none") == (
        20e9,
        0.0,
    )


def test_chinchilla_numbers():
    # Chinchilla itself: 70B parameters on 1.4T tokens
    assert chinchilla_loss(70e9, 1.4e12) == pytest.approx(1.937, abs=1e-3)
    plan = make_plan(tiny_recipe("llama-tiny", steps=100, global_batch_size=8, seq_len=128))
    assert plan.tokens == 100 * 8 * 128
    assert plan.chinchilla_tokens == 20 * plan.params_total
    assert plan.predicted_loss == pytest.approx(chinchilla_loss(plan.params_total, plan.tokens))


def test_wall_time_and_activations_scale_as_they_should():
    base = dict(steps=1000, global_batch_size=64, seq_len=256, micro_batch_size=4)
    plan = make_plan(tiny_recipe("llama-tiny", **base), gpus=4, gpu="A100", mfu=0.5)
    assert plan.peak_tflops == 312.0  # bf16 dense peak of an A100
    expected = plan.flops_per_token * plan.tokens / (4 * 312e12 * 0.5) / 3600
    assert plan.wall_hours == pytest.approx(expected)
    double = make_plan(tiny_recipe("llama-tiny", **{**base, "micro_batch_size": 8}), gpus=4)
    assert double.memory[0].activations_gib == pytest.approx(2 * plan.memory[0].activations_gib)
    saved = make_plan(
        tiny_recipe("llama-tiny", **base, activation_checkpointing=True), gpus=4
    ).memory[0]
    assert saved.activations_gib < plan.memory[0].activations_gib
    stages = {(r.zero_stage, r.offload): r.states_gib for r in plan.memory}
    assert stages[0, "none"] > stages[1, "none"] > stages[2, "none"] > stages[3, "none"]


def test_deepspeed_buckets_are_counted_at_their_default_size_whatever_the_model():
    # bf16: ZeRO 1 reduces through an fp32 bucket of 5e8 elements, ZeRO 2 a bf16 one, ZeRO 3 a
    # bf16 one plus the 5e7-element prefetch bucket
    assert deepspeed_buffer_bytes(0, "bf16") == 0
    assert deepspeed_buffer_bytes(1, "bf16") == 4 * 5e8
    assert deepspeed_buffer_bytes(2, "bf16") == 2 * 5e8
    assert deepspeed_buffer_bytes(3, "bf16") == 2 * (5e8 + 5e7)
    plan = make_plan(tiny_recipe("llama-tiny"), gpus=8)
    rows = {(r.zero_stage, r.offload): r for r in plan.memory}
    assert rows[0, "none"].buffers_gib == 0
    assert rows[1, "none"].buffers_gib == pytest.approx(4 * 5e8 / GIB)
    # a tiny model's states are negligible: ZeRO 1 plans more memory than plain DDP here
    assert rows[1, "none"].total_gib > rows[0, "none"].total_gib
    row = rows[3, "none"]
    assert row.total_gib == pytest.approx(row.states_gib + row.activations_gib + row.buffers_gib)


def test_plan_bad_input(write_recipe):
    with pytest.raises(RecipeError, match=r"plan needs a `model:` section"):
        make_plan(validate_recipe({"name": "p", "output_dir": "o"}))
    with pytest.raises(RecipeError, match=r"plan: the vocabulary size is unknown; set model"):
        make_plan(
            validate_recipe({"name": "p", "output_dir": "o", "model": {"preset": "gpt-tiny"}})
        )
    with pytest.raises(RecipeError, match=r"plan --mfu: expected a share in \(0, 1\], got 40"):
        make_plan(tiny_recipe("llama-tiny"), mfu=40)
    with pytest.raises(RecipeError, match=r"^plan --gpus: expected at least 1, got 0$"):
        make_plan(tiny_recipe("llama-tiny"), gpus=0)


REAL_RECIPES = sorted(p for p in (REPO / "recipes").glob("*.yaml") if p.name != "tiny.yaml")


def test_the_real_size_recipes_exist():
    names = {p.stem for p in REAL_RECIPES}
    assert {"gpt2-124m", "llama-1b", "moe-1b-7b", "bert-base-mlm", "t5-base-span"} <= names
    for method in ("sft", "dpo", "ppo", "grpo"):
        assert f"llama-1b-{method}" in names


@pytest.mark.parametrize(
    "path", REAL_RECIPES + [REPO / "recipes" / "tiny.yaml"], ids=lambda p: p.stem
)
def test_every_recipe_checks_and_plans(path, capsys):
    # their corpora are the user's (../data/...): check everything but the files' existence
    main(["config", "check", "--skip-inputs", str(path)])
    assert capsys.readouterr().out.startswith("ok: ")
    main(["plan", str(path), "--json", "--set", "model.vocab_size=32768"])
    plan = json.loads(capsys.readouterr().out)
    recipe = load_recipe(path)
    assert plan["params_total"] > (1e6 if path.stem == "tiny" else 5e7)
    assert plan["tokens"] == recipe.pretrain.steps * recipe.pretrain.global_batch_size * (
        recipe.pretrain.seq_len or recipe.data.seq_len
    )
    # the recipe's own ZeRO stage fits 8 H100s
    zero = recipe.pretrain.deepspeed.zero_stage if recipe.pretrain.deepspeed else 0
    row = next(r for r in plan["memory"] if r["zero_stage"] == zero and r["offload"] == "none")
    assert row["fits"], (path.stem, row)


def test_moe_without_sharding_does_not_fit_one_h100(capsys):
    main(["plan", str(REPO / "recipes" / "moe-1b-7b.yaml"), "--gpus", "32"])
    table = capsys.readouterr().out
    assert "6,981,490,688 total" in table and "1,344,346,112 active per token" in table
    rows = {
        line.split("|")[1].strip() + line.split("|")[2].strip(): line
        for line in table.splitlines()
        if line.startswith("| ")
    }
    assert rows["0none"].startswith("| 0 | none | 104.03 |") and rows["0none"].endswith("| no |")
    assert rows["3 (recipe)none"].endswith("| yes |")


def test_fsdp2_memory_shards_states_like_zero3_and_marks_the_recipe():
    body = dict(steps=100, global_batch_size=64, micro_batch_size=4, seq_len=512)
    recipe = validate_recipe(
        {
            "name": "p",
            "output_dir": "out",
            "model": {"preset": "llama-1b", "vocab_size": 32000},
            "pretrain": {**body, "fsdp": {"reshard_after_forward": False}},
        }
    )
    plan = make_plan(recipe, gpus=8, gpu="H100")
    rows = {(r.reshard_after_forward, r.cpu_offload): r for r in plan.fsdp_memory}
    zero3 = next(r for r in plan.memory if (r.zero_stage, r.offload) == (3, "none"))
    params = plan.params_total
    # sharded states: 16 bytes per parameter over 8 GPUs; offload moves them to the CPU
    assert rows[True, False].states_gib == pytest.approx(16 * params / 8 / GIB)
    assert rows[True, True].states_gib == 0
    assert rows[True, True].cpu_gib == pytest.approx(16 * params / 8 / GIB)
    # keeping blocks gathered from forward to backward costs memory; the activations are ZeRO's
    assert rows[False, False].gathered_gib > rows[True, False].gathered_gib
    assert rows[True, False].activations_gib == zero3.activations_gib
    assert make_plan(recipe, gpus=16).fsdp_memory[0].states_gib == pytest.approx(
        rows[True, False].states_gib / 2
    )
    text = format_plan(plan)
    assert "| no reshard (recipe) |" in text
    muon = recipe.model_copy(
        update={"pretrain": recipe.pretrain.model_copy(update={"optimizer": "muon"})}
    )
    assert make_plan(muon).muon.startswith("optimizer   muon: refused under FSDP2")
    assert "| 0 (recipe) |" not in text  # the ZeRO table marks no row under FSDP2


def rl_body(kind: str, **section) -> dict:
    return {
        "name": "p",
        "output_dir": "out",
        "model": {"preset": "llama-tiny", "vocab_size": 576},
        kind: {
            "data": [{"path": "prompts.jsonl"}],
            "rewards": [{"type": "reward_model"}],
            "precision": "bf16",
            "global_batch_size": 16,
            "micro_batch_size": 4,
            "max_prompt_length": 100,
            "max_new_tokens": 156,
            **section,
        },
    }


def rl_recipe(kind: str, **section):
    return validate_recipe(rl_body(kind, **section))


# llama-tiny at vocabulary 576, counted by hand: H 64, 2 layers, 4 heads of 16, 2 KV heads
# (keys and values 32 wide), MLP 176, tied head
V, H, KV, MLP, LAYERS = 576, 64, 32, 176, 2
LAYER = H * H + H * KV + H * KV + H * H + 3 * H * MLP + 2 * H  # q k v o, gate up down, 2 norms
POLICY = V * H + LAYERS * LAYER + H  # embedding (= head), layers, final norm
VALUE = POLICY + H  # the backbone and a scalar head `score`, no bias
LENGTH, COMPLETION, MICRO = 256, 156, 4


def test_rl_memory_follows_a_hand_calculation():
    from llmtrain.train.plan import rl_memory

    assert POLICY == 129344
    ppo = rl_memory(rl_recipe("ppo", rollout_batch_size=64), "ppo", gpus=2, gpu_memory=80.0)
    sequences = 64 // 2
    expected = {
        "policy": 16 * POLICY,  # fp32 weights and gradients, two fp32 AdamW moments
        "value model": 16 * VALUE,
        "reference": 2 * POLICY,  # frozen, bf16
        "reward models": 2 * VALUE,
        "rollout buffers": sequences * (24 * LENGTH + 24 * COMPLETION),
        "DeepSpeed buffers": 0,
    }
    assert ppo.parts == pytest.approx({k: v / GIB for k, v in expected.items()})
    # per token of a layer: norms' in/out (4H), q, k, v, rotated q and k, attention output,
    # gate, up, act(gate), product; policy and value model, bf16
    per_token = 4 * H + 2 * H + 3 * KV + H + 4 * MLP
    assert ppo.activations_gib * GIB == pytest.approx(2 * 2 * LAYERS * per_token * MICRO * LENGTH)
    scored = MICRO * COMPLETION
    tile = scored * V * 2  # one tile (both fit in 4096 x 32768), bf16
    fused = tile + 4 * scored * H + 4 * V * H  # fp32 grads of the hidden states and the head
    assert ppo.logprob_fused_gib * GIB == pytest.approx(fused)
    full = MICRO * LENGTH * V * (2 + 8)  # bf16 logits, fp32 copy, fp32 gradient
    assert ppo.logprob_full_gib * GIB == pytest.approx(full)
    kv = 2 * LAYERS * KV * LENGTH * sequences * 2
    assert ppo.kv_cache_gib * GIB == pytest.approx(kv)
    held = sum(expected.values())
    assert ppo.training_gib * GIB == pytest.approx(held + 2 * 2 * LAYERS * per_token * 1024 + fused)
    assert ppo.generation_gib * GIB == pytest.approx(held + kv) and ppo.fits

    # LoRA r 8 on every Linear but the head: the base frozen in fp32, no reference copy
    lora = rl_memory(rl_recipe("ppo", lora={"r": 8}), "ppo", gpus=1, gpu_memory=None)
    adapters = LAYERS * 8 * ((H + H) + (H + KV) * 2 + (H + H) + (H + MLP) * 2 + (MLP + H))
    assert lora.parts["policy"] * GIB == pytest.approx(4 * POLICY + 16 * adapters)
    assert lora.parts["value model"] * GIB == pytest.approx(4 * VALUE + 16 * (adapters + H))
    assert lora.parts["reference"] == 0 and lora.fits is None
    assert lora.logprob_fused_gib * GIB == pytest.approx(tile + 4 * scored * H)  # head frozen

    # GRPO (TRL): no value model; the reference in the checkpoint's fp32, sharded by ZeRO-3
    grpo = rl_memory(
        rl_recipe("grpo", deepspeed={"zero_stage": 3}), "grpo", gpus=4, gpu_memory=80.0
    )
    assert "value model" not in grpo.parts
    assert grpo.parts["reference"] * GIB == pytest.approx(4 * POLICY / 4)
    policy_states, _ = model_state_bytes(
        POLICY, zero_stage=3, world=4, precision="bf16", offload="none"
    )
    assert grpo.parts["policy"] * GIB == pytest.approx(policy_states)
    # generation: the 16 / 4 sequences' cache and the policy gathered from its shards (bf16)
    assert grpo.kv_cache_gib * GIB == pytest.approx(
        2 * LAYERS * KV * LENGTH * 4 * 2 + 2 * POLICY * 3 / 4
    )
    # a generated batch split into two optimizer steps: both steps' 2 x 16 sequences at once
    split = rl_memory(rl_recipe("grpo", steps_per_generation=2), "grpo", gpus=1, gpu_memory=None)
    assert split.parts["rollout buffers"] * GIB == pytest.approx(
        32 * (24 * LENGTH + 24 * COMPLETION)
    )
    assert split.kv_cache_gib * GIB == pytest.approx(2 * LAYERS * KV * LENGTH * 32 * 2)


def test_plan_prints_the_rl_stages(capsys, tmp_path):
    import yaml

    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump(rl_body("ppo", rollout_batch_size=64)))
    main(["plan", str(path), "--gpus", "2", "--gpu", "H100"])
    out = capsys.readouterr().out
    assert "ppo (ppo) memory per GPU: 2 x H100 (80 GiB), ZeRO 0; fits: yes" in out
    assert "| log-prob peak, fused head (chunked) |" in out
    main(["plan", str(path), "--gpus", "2", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert [m["stage"] for m in data["rl_memory"]] == ["ppo"]
    assert data["rl_memory"][0]["training_gib"] > data["rl_memory"][0]["held_gib"]
