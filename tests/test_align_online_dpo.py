"""`llmtrain align --method online_dpo` (TRL's experimental OnlineDPOTrainer behind our recipe)
on the small-sums task of the GRPO tests, ranked by the verifiable answer_match reward."""

from __future__ import annotations

import pytest

from llmtrain.errors import RecipeError
from llmtrain.recipe import load_recipe
from llmtrain.rundir import read_metrics
from llmtrain.train.align.online_dpo import run_online_dpo
from tests.align_support import assert_resume_repeats, run_args
from tests.rl_support import greedy_reward, rl_recipe


@pytest.fixture(scope="module")
def online_dpo_run(rl_policy, tmp_path_factory):
    recipe = load_recipe(rl_recipe(tmp_path_factory.mktemp("online-dpo"), "online_dpo", rl_policy))
    return recipe, run_online_dpo(recipe, run_args())


def test_online_dpo_raises_held_out_reward(online_dpo_run, rl_policy):
    recipe, trainer = online_dpo_run
    assert trainer.ref_model is not None  # a frozen copy of the input model
    steps = [
        r for r in read_metrics(recipe.stage_dir("online_dpo") / "metrics.jsonl") if "loss" in r
    ]
    assert [r["step"] for r in steps] == list(range(1, 9))
    for key in ("objective/scores", "objective/scores_margin", "rewards/margins", "objective/kl"):
        assert key in steps[-1], key
    # the policy starts as its own reference: the implicit rewards start at 0
    assert steps[0]["rewards/margins"] == pytest.approx(0, abs=1e-5)
    assert greedy_reward(rl_policy) <= 0.25
    final = greedy_reward(recipe.stage_dir("online_dpo") / "final")
    assert final >= 0.5, final  # measured 0.625 (16 pairs a step, many of them ties)


def test_online_dpo_resumes_exactly(online_dpo_run, tmp_path):
    recipe, _ = online_dpo_run
    assert_resume_repeats(run_online_dpo, recipe, "online_dpo", 4, tmp_path)


def test_online_dpo_refuses_validation_data(rl_policy, tmp_path):
    path = rl_recipe(tmp_path, "online_dpo", rl_policy, validation_split=0.1)
    with pytest.raises(RecipeError, match=r"online_dpo does not evaluate during training"):
        load_recipe(path)
