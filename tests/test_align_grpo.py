"""`llmtrain align --method grpo` (TRL's GRPOTrainer behind our recipe) on the small-sums task."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain.errors import InputDataError, RecipeError
from llmtrain.recipe import load_recipe
from llmtrain.rundir import read_metrics
from llmtrain.train.align.grpo import eval_batch_size, group_stats, run_grpo
from tests.align_support import run_args
from tests.rl_support import greedy_reward, rl_recipe

REQUIRED_METRICS = (
    "reward",  # TRL: mean of the summed reward
    "reward/answer_match",  # ours: each source's mean
    "reward_group_std",  # ours: spread within groups
    "reward_group_zero_std_share",  # ours: share of groups with no spread
    "frac_reward_zero_std",
    "kl",
    "entropy",
    "clip_ratio/region_mean",
    "completions/mean_length",
    "time/generation",
    "time/scoring",
    "time/training",
    "generation_tokens_per_s",
    "learning_rate",
)
TIMING = ("time/", "generation_tokens_per_s", "step_time", "train_runtime", "train_samples")


@pytest.fixture(scope="module")
def grpo_run(rl_policy, tmp_path_factory):
    recipe = load_recipe(rl_recipe(tmp_path_factory.mktemp("grpo"), "grpo", rl_policy))
    run_grpo(recipe, run_args())
    return recipe


def test_grpo_raises_held_out_reward_with_bounded_kl(grpo_run, rl_policy):
    records = read_metrics(grpo_run.stage_dir("grpo") / "metrics.jsonl")
    steps = [r for r in records if "reward" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    for key in REQUIRED_METRICS:
        assert key in steps[-1], key
    assert max(r["kl"] for r in steps) < 1.0
    for record in steps:
        # ours over groups equals TRL's (scale_rewards: group, where TRL's is about groups too)
        assert record["reward_group_zero_std_share"] == pytest.approx(
            record["frac_reward_zero_std"]
        )
        assert record["time/generation"] > 0 and record["generation_tokens_per_s"] > 0
    # the greedy policy on held-out prompts (never trained on) goes from rarely to mostly
    # answering in the rewarded form
    assert greedy_reward(rl_policy) <= 0.25
    final = greedy_reward(grpo_run.stage_dir("grpo") / "final")
    assert final >= 0.6, final


def test_final_loads_and_generates(grpo_run):
    final = grpo_run.stage_dir("grpo") / "final"
    config = json.loads((final / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert config["eos_token_id"][0] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(final)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=16, do_sample=False)
    assert "2 + 3 = 5." in tokenizer.decode(out[0, prompt["input_ids"].shape[1] :])
    assert not (grpo_run.stage_dir("grpo") / ".datasets").exists()


def test_resume_continues_the_same_run(grpo_run, tmp_path):
    """Cut the finished run back to its step-4 checkpoint and resume: steps 5-8 repeat."""
    run_dir = grpo_run.stage_dir("grpo")
    copy = tmp_path / "out"
    shutil.copytree(run_dir.parent, copy)
    shutil.rmtree(copy / "grpo" / "final")
    shutil.rmtree(copy / "grpo" / "checkpoints" / "step-8")
    recipe = load_recipe(grpo_run.source, [f"output_dir={copy}"])
    run_grpo(recipe, run_args(resume=True))

    def comparable(records):
        return [
            {k: v for k, v in r.items() if not k.startswith(TIMING)}
            for r in records
            if r["step"] > 4 and "reward" in r
        ]

    original = comparable(read_metrics(run_dir / "metrics.jsonl"))
    resumed = comparable(read_metrics(copy / "grpo" / "metrics.jsonl"))
    assert [r["step"] for r in resumed] == [5, 6, 7, 8]
    assert len(resumed) == len(original)
    for ours, theirs in zip(resumed, original):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
    assert (copy / "grpo" / "final" / "model.safetensors").is_file()


def test_one_generation_serves_steps_per_generation_x_num_iterations_steps(rl_policy, tmp_path):
    path = rl_recipe(
        tmp_path, "grpo", rl_policy, steps_per_generation=2, num_iterations=2, max_steps=8,
        save_every=0, global_batch_size=16, micro_batch_size=16,
    )  # fmt: skip
    run_grpo(load_recipe(path), run_args())
    steps = [r for r in read_metrics(tmp_path / "out" / "grpo" / "metrics.jsonl") if "reward" in r]
    generated = [r["step"] for r in steps if r["time/generation"] > 0]
    assert generated == [1, 5]  # one batch of 2 x 16 completions for steps 1-4, one for 5-8


def test_group_statistics_over_consecutive_groups():
    # groups of 3: spread, none, spread
    rewards = [1.0, 0.0, 1.0, 2.0, 2.0, 2.0, 0.0, 0.0, 3.0]
    spread, zero = group_stats(rewards, 3)
    assert spread == pytest.approx((0.5773502691896257 + 0.0 + 1.7320508075688772) / 3)
    assert zero == pytest.approx(1 / 3)
    assert group_stats([], 4) == (0.0, 0.0)


def test_eval_batch_holds_whole_groups():
    assert eval_batch_size(16, 4, 1) == 16
    assert eval_batch_size(4, 8, 1) == 8
    assert eval_batch_size(3, 8, 2) == 4  # 4 x 2 processes = one group of 8
    assert eval_batch_size(5, 6, 4) == 6  # 6 x 4 = 24: four groups of 6


def test_grpo_bad_input(rl_policy, tmp_path):
    path = rl_recipe(tmp_path, "grpo", rl_policy, use_vllm=True)
    with pytest.raises(RecipeError, match=r"grpo.use_vllm: generating with vLLM needs a CUDA GPU"):
        run_grpo(load_recipe(path), run_args())
    path = rl_recipe(tmp_path, "grpo", rl_policy, max_prompt_length=12, on_too_long="drop")
    with pytest.raises(InputDataError, match=r"grpo: 0 usable training prompts"):
        run_grpo(load_recipe(path), run_args())
    with pytest.raises(RecipeError, match=r"not a multiple of num_generations 4"):
        load_recipe(
            rl_recipe(tmp_path, "grpo", rl_policy, global_batch_size=30, micro_batch_size=6)
        )
    assert not (tmp_path / "out" / "grpo").exists()


def _torchrun_grpo(recipe) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(port),
        "-m", "llmtrain", "align", "--method", "grpo", str(recipe),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_deepspeed_zero3_on_two_processes_follows_ddp(rl_policy, tmp_path):
    """TRL under ZeRO-3 over two processes (the reference loaded sharded) gives DDP's numbers;
    the group statistics are over both processes (a group spans them)."""
    common = dict(max_steps=2, save_every=0, micro_batch_size=8)
    _torchrun_grpo(rl_recipe(tmp_path / "ddp", "grpo", rl_policy, **common))
    _torchrun_grpo(
        rl_recipe(tmp_path / "z3", "grpo", rl_policy, deepspeed={"zero_stage": 3}, **common)
    )
    keys = ("reward", "reward_group_std", "reward_group_zero_std_share", "kl", "loss")

    def metrics(name):
        records = read_metrics(tmp_path / name / "out" / "grpo" / "metrics.jsonl")
        return [r for r in records if "reward" in r]

    expected, got = metrics("ddp"), metrics("z3")
    assert len(got) == len(expected) == 2
    for ours, theirs in zip(got, expected):
        assert {k: ours[k] for k in keys} == pytest.approx(
            {k: theirs[k] for k in keys}, rel=1e-3, abs=1e-5
        )
        assert ours["reward_group_zero_std_share"] == pytest.approx(ours["frac_reward_zero_std"])
    AutoModelForCausalLM.from_pretrained(tmp_path / "z3" / "out" / "grpo" / "final")
