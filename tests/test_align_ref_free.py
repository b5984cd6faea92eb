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


def test_padding_free_gives_the_padded_loss_and_metrics(ref_free_run, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    from llmtrain.chat import CHATML
    from llmtrain.rundir import RunDir
    from llmtrain.train.align.chat_data import normalize_preference, tokenize_preferences
    from llmtrain.train.align.ref_free import reference_free_trainer_class

    method, recipe, _ = ref_free_run
    final = recipe.stage_dir(method) / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    examples = [concise_preference(p) for p in arithmetic_split()[1][:6]]
    rows, _ = tokenize_preferences(
        [normalize_preference(e) for e in examples],
        tokenizer,
        CHATML,
        max_length=256,
        on_too_long="truncate",
    )
    # simpo with its supervised term too, which reads the chosen tokens' log-probs
    loss_args = (
        {"beta": 0.5} if method == "orpo" else {"beta": 2.0, "gamma": 1.0, "sft_weight": 0.5}
    )
    results = []
    for padding_free in (False, True):
        args = DPOConfig(
            output_dir=str(tmp_path / f"out-{padding_free}"), report_to="none", use_cpu=True,
            bf16=False, per_device_train_batch_size=6, max_length=None,
            precompute_ref_log_probs=True,
        )  # fmt: skip
        trainer = reference_free_trainer_class()(
            method=method, loss_args=loss_args, run_dir=RunDir(tmp_path / f"run-{padding_free}"),
            keep_last=1, padding_free=padding_free, model=AutoModelForCausalLM.from_pretrained(final),
            args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        )  # fmt: skip
        assert trainer.ref_model is None
        trainer.model.train()
        inputs = trainer._prepare_inputs(trainer.data_collator(rows))
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, inputs)
        results.append((loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}))
    (padded_loss, padded), (flat_loss, flat) = results
    torch.testing.assert_close(flat_loss, padded_loss, rtol=1e-5, atol=1e-6)
    assert padded["rewards/accuracies"] == 1.0  # the trained model prefers the chosen replies
    for key in ("rewards/margins", "logps/chosen", "logps/rejected", "nll_loss"):
        assert flat[key] == pytest.approx(padded[key], rel=1e-4, abs=1e-5), key


def test_lora_trains_adapters_and_final_is_merged(tiny_causal_lm_dir, tmp_path):
    from tests.align_support import assert_final_is_merged_adapter

    train, _ = write_concise_preferences(tmp_path)
    section = {
        "model": str(tiny_causal_lm_dir), "data": [{"path": str(train)}], "validation_split": 0,
        "max_steps": 3, "global_batch_size": 8, "micro_batch_size": 8, "lr": 1.0e-2,
        "eval_every": 0, "save_every": 0, **FAST, "log_every": 1,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "beta": 2.0, "gamma": 1.0,
    }  # fmt: skip
    recipe = load_recipe(write_recipe_file(tmp_path, {"simpo": section}))
    trainer = run_simpo(recipe, run_args())
    assert trainer.ref_model is None
    run_dir = recipe.stage_dir("simpo")
    losses = [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert_final_is_merged_adapter(run_dir, trainer)
