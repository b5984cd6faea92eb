"""`llmtrain align --method ppo` on the small-sums task."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain.errors import InputDataError, RecipeError, StageInputError
from llmtrain.recipe import load_recipe
from llmtrain.rundir import read_metrics
from llmtrain.train.align.ppo import run_ppo
from tests.align_support import run_args, write_jsonl
from tests.rl_support import greedy_reward, rl_recipe

REQUIRED_METRICS = (
    "reward/mean",
    "reward/std",
    "kl",
    "kl_coef",
    "entropy",
    "clip_fraction",
    "approx_kl",
    "value_loss",
    "value_clip_fraction",
    "policy_loss",
    "explained_variance",
    "response_length",
    "eos_fraction",
    "time/generation",
    "time/scoring",
    "time/reference",
    "time/update",
    "time/training",
    "time/step",
    "generation_tokens_per_s",
    "lr",
)


@pytest.fixture(scope="module")
def ppo_run(rl_policy, tmp_path_factory):
    recipe = load_recipe(rl_recipe(tmp_path_factory.mktemp("ppo"), "ppo", rl_policy))
    run_ppo(recipe, run_args())
    return recipe


def test_ppo_raises_held_out_reward_with_bounded_kl(ppo_run, rl_policy):
    records = read_metrics(ppo_run.stage_dir("ppo") / "metrics.jsonl")
    evals = [r for r in records if "eval/reward_mean" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 8
    assert evals[0]["eval/reward_mean"] <= 0.25
    assert evals[-1]["eval/reward_mean"] >= 0.6
    steps = [r for r in records if "reward/mean" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert max(r["kl"] for r in steps) < 5.0
    for key in REQUIRED_METRICS:
        assert key in steps[-1], key
    # the final policy, loaded from disk, answers in the rewarded form where the start did not
    assert greedy_reward(rl_policy) <= 0.25
    assert greedy_reward(ppo_run.stage_dir("ppo") / "final") >= 0.6


def test_final_loads_and_generates(ppo_run, rl_policy):
    final = ppo_run.stage_dir("ppo") / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    config = json.loads((final / "generation_config.json").read_text())
    assert len(config["eos_token_id"]) == 2  # <|endoftext|> and <|im_end|>
    assert (
        model.config.vocab_size == AutoModelForCausalLM.from_pretrained(rl_policy).config.vocab_size
    )
    assert (
        model.generate(
            **AutoTokenizer.from_pretrained(final)("What is", return_tensors="pt"),
            max_new_tokens=4,
            do_sample=False,
        ).shape[1]
        > 2
    )


def resume_repeats_the_last_steps(recipe, tmp_path) -> None:
    """Cut the finished 8-step run back to its step-4 checkpoint and resume: steps 5-8 repeat
    exactly."""
    run_dir = recipe.stage_dir("ppo")
    copy = tmp_path / "out"
    shutil.copytree(run_dir.parent, copy)
    shutil.rmtree(copy / "ppo" / "final")
    shutil.rmtree(copy / "ppo" / "checkpoints" / "step-8")
    run_ppo(load_recipe(recipe.source, [f"output_dir={copy}"]), run_args(resume=True))
    timing = ("time/", "generation_tokens_per_s")

    def comparable(records):
        return [
            {k: v for k, v in r.items() if not k.startswith(timing)}
            for r in records
            if r["step"] > 4
        ]

    original = comparable(read_metrics(run_dir / "metrics.jsonl"))
    resumed = comparable(read_metrics(copy / "ppo" / "metrics.jsonl"))
    assert len(resumed) >= 4 and resumed == original
    assert (copy / "ppo" / "final" / "model.safetensors").is_file()


def test_resume_continues_the_same_run(ppo_run, tmp_path):
    resume_repeats_the_last_steps(ppo_run, tmp_path)


@pytest.fixture(scope="module")
def ppo_lora_run(rl_policy, tmp_path_factory):
    recipe = load_recipe(
        rl_recipe(
            tmp_path_factory.mktemp("ppo-lora"),
            "ppo",
            rl_policy,
            lr=1.0e-3,  # 3e-3 reached 0.5 in 8 steps, 1e-2 diverged
            lora={"r": 8, "alpha": 16, "dropout": 0.0},
        )
    )
    run_ppo(recipe, run_args())
    return recipe


def test_ppo_with_lora_learns_and_writes_a_merged_final(ppo_lora_run, rl_policy):
    """LoRA on the policy and the value model: the held-out reward rises as in full PPO; the
    reference is the policy with its adapters disabled, so the first rollout (adapters at
    zero) has KL 0 and later ones do not; final/ is the input model with the adapter merged."""
    from peft import PeftConfig

    run_dir = ppo_lora_run.stage_dir("ppo")
    records = read_metrics(run_dir / "metrics.jsonl")
    evals = [r for r in records if "eval/reward_mean" in r]
    assert evals[0]["eval/reward_mean"] <= 0.25 and evals[-1]["eval/reward_mean"] >= 0.6
    steps = [r for r in records if "kl" in r]
    assert steps[0]["kl"] == 0.0 and steps[-1]["kl"] > 0.0
    assert PeftConfig.from_pretrained(run_dir / "adapter").r == 8
    final = run_dir / "final"
    assert not (final / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(final)
    names = {name for name, _ in model.named_parameters()}
    assert names == {
        n for n, _ in AutoModelForCausalLM.from_pretrained(rl_policy).named_parameters()
    }
    assert greedy_reward(final) >= 0.6


def test_ppo_with_lora_trains_adapters_and_the_value_head_only(rl_policy, tmp_path):
    path = rl_recipe(tmp_path, "ppo", rl_policy, lora={"r": 4})
    with ppo_trainer(path) as trainer:
        module = trainer.engine.module
        trained = [name for name, p in module.named_parameters() if p.requires_grad]
        assert trained and all("lora_" in name or ".score." in name for name in trained)
        assert any(name.startswith("value.") and ".score." in name for name in trained)
        assert trainer.reference is module.policy  # no copy of the model for the reference


def test_ppo_with_lora_resumes_exactly(ppo_lora_run, tmp_path):
    resume_repeats_the_last_steps(ppo_lora_run, tmp_path)


def test_ppo_with_a_reward_model_from_the_rm_stage(rl_policy, tmp_path):
    from llmtrain.train.align.rm import run_rm
    from tests.rl_support import ANSWER_PATTERN

    prefs = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
                "chosen": [
                    {"role": "assistant", "content": f"{a} + {b} = {a + b}. The answer is {a + b}."}
                ],
                "rejected": [{"role": "assistant", "content": f"{a} + {b} = {a + b}."}],
            }
            for a in range(6)
            for b in range(6)
        ],
    )
    path = rl_recipe(
        tmp_path,
        "ppo",
        rl_policy,
        max_steps=2,
        eval_every=0,
        save_every=0,
        kl_target=0.05,  # adaptive KL coefficient
        kl_horizon=48,
        rewards=[
            {"type": "reward_model"},
            {"type": "format", "pattern": ANSWER_PATTERN, "weight": 0.5},
        ],
    )
    raw = path.read_text() + (
        f"rm: {{model: {rl_policy}, data: [{{path: {prefs}}}], max_steps: 10, global_batch_size: 8,"
        " micro_batch_size: 8, lr: 1.0e-3, precision: fp32, eval_every: 0, save_every: 0}\n"
    )
    path.write_text(raw)
    recipe = load_recipe(path)
    run_rm(recipe, run_args())
    run_ppo(recipe, run_args())
    records = read_metrics(recipe.stage_dir("ppo") / "metrics.jsonl")
    steps = [r for r in records if "reward/reward_model" in r]
    assert [r["step"] for r in steps] == [1, 2] and "reward/format" in steps[-1]
    # the controller: coef x (1 + clip(kl / target - 1, +-0.2) x 24 sequences / horizon 48);
    # the first rollout comes from the reference itself (kl 0)
    assert steps[0]["kl"] == 0.0
    assert steps[0]["kl_coef"] == pytest.approx(0.02 * (1 - 0.2 * 0.5))
    error = max(-0.2, min(0.2, steps[1]["kl"] / 0.05 - 1))
    assert steps[1]["kl_coef"] == pytest.approx(steps[0]["kl_coef"] * (1 + error * 0.5))
    assert (recipe.stage_dir("ppo") / "final" / "model.safetensors").is_file()


def test_ppo_bad_input(rl_policy, tmp_path):
    path = rl_recipe(tmp_path, "ppo", rl_policy, rollout_batch_size=48)
    with pytest.raises(
        InputDataError, match=r"ppo: 28 usable training prompts, fewer than one rollout batch of 48"
    ):
        run_ppo(load_recipe(path), run_args())
    path = rl_recipe(tmp_path, "ppo", rl_policy, max_prompt_length=12, on_too_long="drop")
    with pytest.raises(InputDataError, match=r"ppo: 0 usable training prompts"):
        run_ppo(load_recipe(path), run_args())
    path = rl_recipe(tmp_path, "ppo", rl_policy, rewards=[{"type": "reward_model"}])
    with pytest.raises(
        StageInputError, match=r"no reward model at .*rm/final; run `llmtrain align --method rm"
    ):
        run_ppo(load_recipe(path), run_args())
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"optimizer": {"type": "Adam", "params": {"lr": 1e-3}}}))
    path = rl_recipe(
        tmp_path, "ppo", rl_policy, deepspeed={"zero_stage": 2, "config": str(ds_json)}
    )
    with pytest.raises(RecipeError) as error:
        run_ppo(load_recipe(path), run_args())
    assert str(error.value) == (
        f"ppo.deepspeed.config ({ds_json}) sets optimizer, which PPO builds itself (AdamW over "
        "the policy and the value model from ppo.lr and value_lr); remove optimizer from the "
        "JSON and set it in the recipe"
    )
    with pytest.raises(RecipeError, match=r"lora.quantization: 4bit \(QLoRA\) is not offered for"):
        load_recipe(rl_recipe(tmp_path, "ppo", rl_policy, lora={"quantization": "4bit"}))
    with pytest.raises(RecipeError, match=r"rollout_batch_size 20 is not a multiple of"):
        load_recipe(rl_recipe(tmp_path, "ppo", rl_policy, rollout_batch_size=20))
    recipe = load_recipe(rl_recipe(tmp_path, "ppo", rl_policy), ["ppo.model=null"])
    with pytest.raises(
        StageInputError,
        match=r"ppo: no input model at .*sft/final; run `llmtrain align --method sft",
    ):
        run_ppo(recipe, run_args())


def test_long_prompts_are_truncated_and_counted(rl_policy, tmp_path):
    from transformers import AutoTokenizer

    from llmtrain.train.align.prompts import fit_prompts

    tokenizer = AutoTokenizer.from_pretrained(rl_policy)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "A long earlier question " * 5},
        {"role": "assistant", "content": "A long earlier answer " * 5},
        {"role": "user", "content": "What is 1 + 2?"},
    ]
    counts = {}
    records = [{"prompt": conversation, "answer": "3"}, {"prompt": "word " * 60, "answer": "x"}]
    fitted = fit_prompts(records, tokenizer, 40, "truncate", counts)
    assert [m["role"] for m in fitted[0].prompt] == ["system", "user"]
    assert fitted[0].prompt[-1]["content"] == "What is 1 + 2?"
    assert len(fitted[0].ids) <= 40 and fitted[0].fields == {"answer": "3"}
    assert len(fitted[1].ids) == 40
    assert counts == {"truncated_prompts": 2, "dropped_long_prompts": 0}
    fit_prompts(records, tokenizer, 40, "drop", counts)
    assert counts["dropped_long_prompts"] == 2
    # even the last user turn does not fit: dropped and counted
    counts = {}
    assert fit_prompts(records[:1], tokenizer, 20, "truncate", counts) == []
    assert counts == {"truncated_prompts": 0, "dropped_long_prompts": 1}


def _torchrun_ppo(recipe: Path, out: Path) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(port),
        str(Path(__file__).parent / "rl_support.py"), str(recipe), str(out),
    ]  # fmt: skip
    root = Path(__file__).parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.multiprocess
@pytest.mark.slow
def test_deepspeed_zero3_on_two_processes_follows_ddp(rl_policy, tmp_path):
    """ZeRO-3 over two processes (policy, value model and reference sharded; the policy
    gathered once per rollout and once per evaluation for generation) gives the numbers of
    DDP over two processes, and its final/ is the whole policy."""
    common = dict(max_steps=2, eval_every=0, save_every=0, micro_batch_size=6)
    ddp = _torchrun_ppo(rl_recipe(tmp_path / "ddp", "ppo", rl_policy, **common), tmp_path / "d")
    zero3 = _torchrun_ppo(
        rl_recipe(tmp_path / "z3", "ppo", rl_policy, deepspeed={"zero_stage": 3}, **common),
        tmp_path / "z",
    )
    assert ddp == {"gathers": 0, "world": 2, "step": 2}
    assert zero3 == {"gathers": 4, "world": 2, "step": 2}  # 2 rollouts + evaluations at 0 and 2
    timing = ("time/", "generation_tokens_per_s")

    def metrics(name):
        return [
            {k: v for k, v in r.items() if not k.startswith(timing)}
            for r in read_metrics(tmp_path / name / "out" / "ppo" / "metrics.jsonl")
        ]

    expected, got = metrics("ddp"), metrics("z3")
    assert [r["step"] for r in got] == [r["step"] for r in expected] == [0, 0, 1, 2]
    for theirs, ours in zip(expected, got):
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            assert ours[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
    final = tmp_path / "z3" / "out" / "ppo" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "ddp" / "out" / "ppo" / "final")
    for (name, ours), (_, theirs) in zip(
        model.state_dict().items(), reference.state_dict().items()
    ):
        assert ours.shape == theirs.shape, name
        assert (ours - theirs).abs().max() < 1e-3, name


def test_text_prompts_need_no_chat_template(rl_policy):
    from llmtrain.chat import stop_token_ids
    from llmtrain.train.align.prompts import rl_chat_template

    tokenizer = AutoTokenizer.from_pretrained(rl_policy)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    chat = [{"prompt": [{"role": "user", "content": "What is 1 + 2?"}]}]
    template = rl_chat_template(tokenizer, "tokenizer", chat, method="ppo", tokenizer_dir=rl_policy)
    assert stop_token_ids(tokenizer, template) == sorted([tokenizer.eos_token_id, im_end])
    tokenizer.chat_template = None  # a base model's tokenizer
    text = [{"prompt": "1 + 2 ="}, {"prompt": "3 + 4 ="}]
    assert rl_chat_template(tokenizer, "tokenizer", text, method="ppo", tokenizer_dir="x") is None
    assert stop_token_ids(tokenizer, None) == [tokenizer.eos_token_id]
    with pytest.raises(StageInputError, match=r"has no chat template and the recipe sets none"):
        rl_chat_template(tokenizer, "tokenizer", text + chat, method="ppo", tokenizer_dir="x")


# ---------------------------------------------------------------------------------------------
# PPO on the shared training core: the rules every stage follows


@contextlib.contextmanager
def ppo_trainer(path: Path, overrides=()):
    from llmtrain.train.align.ppo import PPOTrainer
    from llmtrain.train.align.trl_glue import AlignRun
    from llmtrain.train.engine import release_accelerator

    recipe = load_recipe(path, list(overrides))
    section = recipe.section("ppo")
    try:
        yield PPOTrainer(recipe, section, AlignRun(recipe, "ppo", section))
    finally:
        release_accelerator()


def test_ppo_decays_weight_matrices_only(rl_policy, tmp_path):
    """Norms, biases and embeddings are not decayed (the rule of every stage); the value model
    trains at value_lr."""
    from llmtrain.train.optim import decayed_parameter_names

    path = rl_recipe(tmp_path, "ppo", rl_policy, weight_decay=0.1, value_lr=1.0e-3)
    with ppo_trainer(path) as trainer:
        module = trainer.engine.module
        groups = trainer.engine.base_optimizer.param_groups
        decayed = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
        expected = dict(module.named_parameters())
        assert decayed == {id(expected[name]) for name in decayed_parameter_names(module)}
        assert id(module.policy.get_input_embeddings().weight) not in decayed
        assert id(module.policy.model.norm.weight) not in decayed
        assert id(module.policy.model.layers[0].mlp.up_proj.weight) in decayed
        value_ids = {id(p) for p in module.value.parameters()}
        for group in groups:
            in_value = {id(p) in value_ids for p in group["params"]}
            assert in_value == {group["lr"] == 1.0e-3}
        assert type(trainer.engine.base_optimizer) is torch.optim.AdamW


def test_ppo_zero_stage_0_is_ddp_and_offload_none_keeps_torch_adamw(
    rl_policy, tmp_path, monkeypatch
):
    """zero_stage 0 runs on the plain engine (no DeepSpeed); a DeepSpeed JSON saying
    `offload_optimizer: {device: none}` keeps torch's AdamW (DeepSpeed's CPU Adam only for a
    real offload). DeepSpeed needs a process group, so its engine is replaced by one that
    records what it was given, and its CPU Adam by a stand-in of that name."""
    from llmtrain.train import engine as engine_module

    with ppo_trainer(rl_recipe(tmp_path, "ppo", rl_policy, deepspeed={"zero_stage": 0})) as t:
        assert isinstance(t.engine, engine_module.PlainEngine)

    class RecordingEngine:
        name = "deepspeed"

        def __init__(self, model, optimizer, config):
            self.config = config
            self.module = model
            self.base_optimizer = optimizer

    class DeepSpeedCPUAdam(torch.optim.AdamW):  # its C++ op is built on first use: minutes
        def __init__(self, groups, adamw_mode, **kwargs):
            assert adamw_mode
            super().__init__(groups, **kwargs)

    import deepspeed.ops.adam

    monkeypatch.setattr(engine_module, "DeepSpeedEngine", RecordingEngine)
    monkeypatch.setattr(deepspeed.ops.adam, "DeepSpeedCPUAdam", DeepSpeedCPUAdam)
    for device, optimizer_type in (("none", "AdamW"), ("cpu", "DeepSpeedCPUAdam")):
        ds_json = tmp_path / f"{device}.json"
        ds_json.write_text(
            json.dumps({"zero_optimization": {"offload_optimizer": {"device": device}}})
        )
        deepspeed = {"zero_stage": 2, "config": str(ds_json)}
        with ppo_trainer(rl_recipe(tmp_path, "ppo", rl_policy, deepspeed=deepspeed)) as t:
            assert t.engine.config["zero_optimization"]["offload_optimizer"]["device"] == device
            assert type(t.engine.base_optimizer).__name__ == optimizer_type


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on a GPU")
def test_ppo_refuses_fp16_as_every_stage_does(rl_policy, tmp_path):
    with pytest.raises(StageInputError) as error:
        run_ppo(load_recipe(rl_recipe(tmp_path, "ppo", rl_policy, precision="fp16")), run_args())
    assert str(error.value) == (
        "ppo.precision fp16 needs a CUDA GPU (loss scaling of half-precision gradients); use "
        "bf16 or fp32 on this machine"
    )


def test_ppo_refuses_fsdp(rl_policy, tmp_path):
    with pytest.raises(RecipeError) as error:
        run_ppo(load_recipe(rl_recipe(tmp_path, "ppo", rl_policy, fsdp={})), run_args())
    assert str(error.value) == (
        "ppo.fsdp: PPO runs on llmtrain's own loop with a policy, a value model and a "
        "reference, and FSDP2 is built there for pretraining's single model only; use "
        "ppo.deepspeed (ZeRO) to shard PPO"
    )


def test_ppo_loss_is_a_token_mean_over_the_whole_update(rl_policy, tmp_path):
    """One minibatch of 12 sequences as 1 micro-batch of 12 and as 12 micro-batches of 1 gives
    the same gradient (every response token weighs the same); the mean of the 12 per-sequence
    means, which weighs short responses up, gives another."""
    from llmtrain.train.align.ppo_core import (
        clipped_policy_loss,
        clipped_value_loss,
        response_mask,
    )

    def gradient(trainer):
        return torch.cat(
            [p.grad.flatten() for p in trainer.engine.module.parameters() if p.grad is not None]
        )

    indices = torch.arange(12)
    whole = rl_recipe(tmp_path / "whole", "ppo", rl_policy, micro_batch_size=12)
    with ppo_trainer(whole) as trainer:
        prompts = trainer._batch_prompts()
        sequences, prompt_attention = trainer.generate([p.ids for p in prompts], sample=True)
        response = sequences[:, prompt_attention.shape[1] :]
        mask, _ = response_mask(response, trainer.stop_ids)
        scores, _ = trainer.score(prompts, response, mask)
        rollout = trainer.make_rollout(sequences, prompt_attention, mask, scores)
        trainer.accumulate(rollout, indices)
        one_micro_batch = gradient(trainer)
    lengths = rollout.mask[indices].sum(1)
    assert lengths.min() < lengths.max()  # the two rules differ on this minibatch
    split = rl_recipe(tmp_path / "split", "ppo", rl_policy, micro_batch_size=1)
    with ppo_trainer(split) as trainer:
        trainer.accumulate(rollout, indices)
        twelve_micro_batches = gradient(trainer)
        torch.testing.assert_close(twelve_micro_batches, one_micro_batch, rtol=1e-4, atol=1e-7)

        module = trainer.engine.module
        module.zero_grad()
        section = trainer.section
        for row in indices.split(1):  # the previous rule: the mean of per-micro-batch means
            m = rollout.mask[row]
            logprobs, _, values = module(
                rollout.input_ids[row], rollout.attention_mask[row], rollout.position_ids[row], m
            )
            policy = clipped_policy_loss(
                logprobs, rollout.old_logprobs[row], rollout.advantages[row], m, 0.2
            )
            value_loss, _ = clipped_value_loss(
                values, rollout.old_values[row], rollout.returns[row], m, 0.2
            )
            ((policy.loss + section.vf_coef * value_loss) / 12).backward()
        mean_of_means = gradient(trainer)
    assert (mean_of_means - one_micro_batch).norm() > 1e-2 * one_micro_batch.norm()


def test_ppo_non_finite_updates_are_skipped_then_stop_the_run(rl_policy, tmp_path, monkeypatch):
    """A NaN policy loss skips the update (the weights stay finite); two iterations in a row
    with skipped updates stop the run with the message pretraining gives, and nothing is
    published."""
    import llmtrain.train.align.ppo as ppo_module
    from llmtrain.errors import TrainingError

    real = ppo_module.clipped_policy_loss

    def poisoned(*args, **kwargs):
        result = real(*args, **kwargs)
        result.loss = result.loss * float("nan")
        return result

    monkeypatch.setattr(ppo_module, "clipped_policy_loss", poisoned)
    path = rl_recipe(
        tmp_path, "ppo", rl_policy, max_steps=4, save_every=1, eval_every=0, max_nonfinite_steps=2
    )
    with pytest.raises(TrainingError) as error:
        run_ppo(load_recipe(path), run_args())
    assert str(error.value) == (
        "ppo stopped: 2 steps in a row (1-2) had a non-finite loss or gradient "
        "(ppo.max_nonfinite_steps is 2); no checkpoint had been written yet. Lower ppo.lr, keep "
        "grad_clip on or use bf16 rather than fp16, then continue with --resume"
    )
    run_dir = tmp_path / "out" / "ppo"
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    assert not (run_dir / "final").exists()
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "reward/mean" in r]
    # the stopping step is not logged (as in pretraining)
    assert [r["step"] for r in records] == [1] and records[0]["skipped_steps"] == 1
