"""`llmtrain align --method gspo | rloo` (TRL's GRPOTrainer with sequence-level ratios, TRL's
RLOOTrainer) on the small-sums task of the GRPO tests."""

from __future__ import annotations

import pytest

from llmtrain.errors import RecipeError
from llmtrain.recipe import load_recipe, validate_section
from llmtrain.rundir import read_metrics
from llmtrain.train.align.grpo import run_grpo, run_gspo, run_rloo
from llmtrain.train.align.rl_config import GRPOSection, GSPOSection
from tests.align_support import assert_resume_repeats, run_args
from tests.rl_support import greedy_reward, rl_recipe

RUNS = {"gspo": run_gspo, "rloo": run_rloo}


@pytest.fixture(scope="module", params=["gspo", "rloo"])
def group_run(request, rl_policy, tmp_path_factory):
    method = request.param
    recipe = load_recipe(rl_recipe(tmp_path_factory.mktemp(method), method, rl_policy))
    return method, recipe, RUNS[method](recipe, run_args())


def test_raises_held_out_reward(group_run, rl_policy):
    method, recipe, trainer = group_run
    steps = [r for r in read_metrics(recipe.stage_dir(method) / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    generated = [r for r in steps if "reward" in r]
    for key in ("reward/answer_match", "reward_group_std", "time/generation", "kl"):
        assert key in generated[-1], key
    if method == "gspo":
        assert trainer.args.importance_sampling_level == "sequence"
        assert (trainer.args.epsilon, trainer.args.epsilon_high) == (3e-4, 4e-4)
        # num_iterations 2: a batch is generated (and its rewards logged) every other step
        assert [r["step"] for r in generated] == [1, 3, 5, 7]
        # the second update on each batch is off-policy: its sequence ratios leave the narrow
        # clip range; the first is on-policy (ratio 1, nothing clipped)
        clipped = [r["clip_ratio/region_mean"] for r in steps]
        assert all(c == 0 for c in clipped[0::2]) and all(c > 0.1 for c in clipped[1::2])
    else:
        assert [r["step"] for r in generated] == list(range(1, 9))
    assert greedy_reward(rl_policy) <= 0.25
    final = greedy_reward(recipe.stage_dir(method) / "final")
    assert final >= 0.6, final


def test_resumes_exactly(group_run, tmp_path):
    method, recipe, _ = group_run
    assert_resume_repeats(RUNS[method], recipe, method, 4, tmp_path)


def test_gspo_and_rloo_sections(rl_policy, tmp_path):
    minimal = {"data": [{"path": "p.jsonl"}], "rewards": [{"type": "answer_match"}]}
    gspo = validate_section(GSPOSection, minimal)
    assert (gspo.importance_sampling_level, gspo.loss_type, gspo.beta) == ("sequence", "grpo", 0)
    assert (gspo.epsilon, gspo.epsilon_high, gspo.num_iterations) == (3e-4, 4e-4, 2)
    assert validate_section(GRPOSection, minimal).importance_sampling_level == "token"
    with pytest.raises(RecipeError, match=r"not a multiple of num_generations 4"):
        load_recipe(
            rl_recipe(tmp_path / "r", "rloo", rl_policy, global_batch_size=30, micro_batch_size=6)
        )
    with pytest.raises(RecipeError, match=r"rloo.loss_type"):
        load_recipe(rl_recipe(tmp_path / "r2", "rloo", rl_policy, loss_type="dapo"))


def test_on_policy_gspo_takes_grpos_step(rl_policy, tmp_path):
    """With one update per generated batch the sequence ratio is 1 and GSPO's gradient is
    GRPO's (loss_type grpo, same beta): the first step's loss and gradient norm agree. (Later
    steps drift apart by rounding, which Adam amplifies in weights with tiny gradients.)"""
    common = dict(max_steps=1, save_every=0, num_iterations=1, loss_type="grpo", epsilon=0.2)
    grpo = load_recipe(rl_recipe(tmp_path / "grpo", "grpo", rl_policy, **common))
    gspo = load_recipe(rl_recipe(tmp_path / "gspo", "gspo", rl_policy, **common, epsilon_high=0.2))
    run_grpo(grpo, run_args())
    run_gspo(gspo, run_args())

    def first_step(recipe, method):
        return next(
            r for r in read_metrics(recipe.stage_dir(method) / "metrics.jsonl") if "loss" in r
        )

    ours, theirs = first_step(gspo, "gspo"), first_step(grpo, "grpo")
    assert ours["reward"] == theirs["reward"]
    assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-5)
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5, abs=1e-8)
