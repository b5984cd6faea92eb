"""`llmtrain align --method orpo | simpo`: reference-free preference losses on DPOTrainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmtrain.data_pipeline.arithmetic import Problem, user_message
from llmtrain.recipe import load_recipe
from llmtrain.rundir import read_metrics
from llmtrain.train.align.ref_free import orpo_loss, run_orpo, run_simpo, simpo_loss
from tests.align_support import (
    FAST,
    arithmetic_split,
    assert_resume_repeats,
    run_args,
    write_jsonl,
    write_recipe_file,
)


def concise_preference(problem: Problem) -> dict:
    return {
        "prompt": [user_message(problem)],
        "chosen": [{"role": "assistant", "content": f"The answer is {problem.answer}."}],
        "rejected": [{"role": "assistant", "content": problem.solution()}],
    }


def write_concise_preferences(folder: Path) -> tuple[Path, Path]:
    train, held = arithmetic_split()
    return (
        write_jsonl(folder / "prefs.jsonl", [concise_preference(p) for p in train]),
        write_jsonl(folder / "prefs_held.jsonl", [concise_preference(p) for p in held]),
    )


RUNS = {"orpo": run_orpo, "simpo": run_simpo}
SETTINGS = {"orpo": {"beta": 0.5}, "simpo": {"beta": 2.0, "gamma": 1.0}}


@pytest.fixture(scope="module", params=["orpo", "simpo"])
def ref_free_run(request, sft_arithmetic, tmp_path_factory):
    """From the SFT model, which answers "a + b = c. The answer is c.", towards the concise
    "The answer is c.": a preference it does not hold yet."""
    method = request.param
    sft_recipe, _ = sft_arithmetic
    folder = tmp_path_factory.mktemp(method)
    train, held = write_concise_preferences(folder)
    section = {
        "model": str(sft_recipe.stage_dir("sft") / "final"),
        "data": [{"path": str(train)}],
        "validation_data": [{"path": str(held)}],
        "max_steps": 12,
        "global_batch_size": 16,
        "micro_batch_size": 8,
        "lr": 1.0e-3,
        "eval_every": 6,
        "save_every": 6,
        "keep_last": 0,
        **FAST,
        "log_every": 1,
        **SETTINGS[method],
    }
    recipe = load_recipe(write_recipe_file(folder, {method: section}))
    return method, recipe, RUNS[method](recipe, run_args())


def test_learns_to_prefer_the_chosen_reply_on_held_out_pairs(ref_free_run):
    method, recipe, trainer = ref_free_run
    assert trainer.ref_model is None
    records = read_metrics(recipe.stage_dir(method) / "metrics.jsonl")
    train = [r for r in records if "rewards/margins" in r]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert train[-1]["loss"] < train[0]["loss"]
    assert train[0]["rewards/accuracies"] <= 0.2  # the first batch, scored before any update
    evals = [r for r in records if "eval_rewards/margins" in r]
    assert [r["step"] for r in evals] == [6, 12]
    assert evals[-1]["eval_rewards/accuracies"] >= 0.9
    assert evals[-1]["eval_rewards/margins"] > evals[0]["eval_rewards/margins"] > 0
    if method == "orpo":  # the supervised term makes the chosen replies likely
        assert evals[-1]["eval_nll_loss"] < train[0]["nll_loss"] / 2


def test_resumes_exactly(ref_free_run, tmp_path):
    method, recipe, _ = ref_free_run
    assert_resume_repeats(RUNS[method], recipe, method, 6, tmp_path)


def test_losses_match_their_papers():
    mean_c = torch.tensor([-0.5, -1.0])
    mean_r = torch.tensor([-2.0, -0.8])
    nll = torch.tensor(0.75)
    # ORPO: nll - beta * mean(log sigmoid(log odds(c) - log odds(r)))
    odds = lambda m: m.exp() / (1 - m.exp())  # noqa: E731
    ratio = torch.log(torch.sigmoid(torch.log(odds(mean_c) / odds(mean_r))))
    loss, extra = orpo_loss(mean_c, mean_r, nll, beta=0.1)
    torch.testing.assert_close(loss, nll - 0.1 * ratio.mean())
    torch.testing.assert_close(extra["log_odds_ratio"], ratio)
    # SimPO: -log sigmoid(beta * (mean_c - mean_r) - gamma) + sft_weight * nll
    loss, _ = simpo_loss(mean_c, mean_r, nll, beta=2.0, gamma=1.0, sft_weight=0.5)
    expected = -torch.log(torch.sigmoid(2.0 * (mean_c - mean_r) - 1.0)).mean() + 0.5 * nll
    torch.testing.assert_close(loss, expected)
