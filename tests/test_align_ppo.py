"""`llmtrain align --method ppo` on the small-sums task."""

import json
import shutil

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain.errors import InputDataError, StageInputError
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
    "policy_loss",
    "explained_variance",
    "response_length",
    "eos_fraction",
    "time/generation",
    "time/scoring",
    "time/training",
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
    last = [r for r in records if "reward/reward_model" in r][-1]
    assert last["step"] == 2 and "reward/format" in last
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
