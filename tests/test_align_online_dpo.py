"""`llmtrain align --method online_dpo` (our DPO loss on TRL's GRPOTrainer) on the small-sums
task of the GRPO tests, pairs ranked by the verifiable answer_match reward."""

from __future__ import annotations

import pytest
import torch

from llmtrain.errors import RecipeError
from llmtrain.recipe import load_recipe
from llmtrain.rundir import read_metrics
from llmtrain.train.align.online_dpo import dpo_pair_loss, pair_rows, run_online_dpo
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
    for key in ("reward", "reward/answer_match", "pairs/tied_share", "rewards/margins"):
        assert key in steps[-1], key
    # the policy starts as its own reference: the implicit reward margin starts at 0
    assert steps[0]["rewards/margins"] == pytest.approx(0, abs=1e-4)
    assert 0 < steps[0]["pairs/tied_share"] < 1
    assert greedy_reward(rl_policy) <= 0.25
    final = greedy_reward(recipe.stage_dir("online_dpo") / "final")
    assert final >= 0.5, final  # measured 0.625: most pairs tie, 2-5 of 16 carry a preference


def test_online_dpo_resumes_exactly(online_dpo_run, tmp_path):
    recipe, _ = online_dpo_run
    assert_resume_repeats(run_online_dpo, recipe, "online_dpo", 4, tmp_path)


def test_pairs_are_found_in_any_order_and_ties_left_out():
    prompts = torch.tensor([[1, 2], [3, 4], [1, 2], [5, 6], [3, 4], [5, 6]])
    advantages = torch.tensor([-0.5, 0.0, 0.5, 1.0, 0.0, -1.0])
    assert pair_rows(prompts, advantages) == ([2, 3], [0, 5], 1)
    with pytest.raises(RuntimeError, match="holds 1 completions of one prompt"):
        pair_rows(prompts[:5], advantages[:5])


def test_dpo_pair_loss():
    policy = torch.tensor([[-1.0, -2.0], [-3.0, -1.5]])  # (chosen, rejected) x pairs
    reference = torch.tensor([[-2.0, -2.0], [-2.0, -2.0]])
    logits = torch.tensor([(-1.0 + 2.0) - (-3.0 + 2.0), (-2.0 + 2.0) - (-1.5 + 2.0)])
    expected = -torch.nn.functional.logsigmoid(0.1 * logits)
    torch.testing.assert_close(dpo_pair_loss(policy, reference, 0.1, "sigmoid"), expected)
    torch.testing.assert_close(dpo_pair_loss(policy, reference, 0.1, "ipo"), (logits - 5.0) ** 2)


def test_online_dpo_needs_whole_pairs_per_micro_batch(rl_policy, tmp_path):
    path = rl_recipe(tmp_path, "online_dpo", rl_policy, micro_batch_size=5, global_batch_size=30)
    with pytest.raises(RecipeError, match=r"micro_batch_size 5 must be even"):
        load_recipe(path)
