"""`llmtrain align --method ppo` on the small-sums task."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
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


def test_resume_continues_the_same_run(ppo_run, tmp_path):
    """Cut the finished run back to its step-4 checkpoint and resume: steps 5-8 repeat exactly."""
    run_dir = ppo_run.stage_dir("ppo")
    copy = tmp_path / "out"
    shutil.copytree(run_dir.parent, copy)
    shutil.rmtree(copy / "ppo" / "final")
    shutil.rmtree(copy / "ppo" / "checkpoints" / "step-8")
    recipe = load_recipe(ppo_run.source, [f"output_dir={copy}"])
    run_ppo(recipe, run_args(resume=True))
    timing = ("time/", "generation_tokens_per_s")

    def comparable(records):
        return [
            {k: v for k, v in r.items() if not k.startswith(timing)}
            for r in records
            if r["step"] > 4
        ]

    original = comparable(read_metrics(run_dir / "metrics.jsonl"))
    resumed = comparable(read_metrics(copy / "ppo" / "metrics.jsonl"))
    assert resumed == original
    assert (copy / "ppo" / "final" / "model.safetensors").is_file()


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
    with pytest.raises(RecipeError, match=r"lora: PPO trains every weight"):
        load_recipe(rl_recipe(tmp_path, "ppo", rl_policy, lora={"r": 4}))
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
