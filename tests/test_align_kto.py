"""`llmtrain align --method kto`: unpaired good/bad replies, held-out margin, resume, data."""

from __future__ import annotations

import json

import pytest

from llmtrain.errors import InputDataError
from llmtrain.recipe import load_recipe
from llmtrain.rundir import read_metrics
from llmtrain.train.align.chat_data import load_examples
from llmtrain.train.align.kto import run_kto, with_kl_completions
from tests.align_support import (
    FAST,
    assert_resume_repeats,
    run_args,
    write_jsonl,
    write_recipe_file,
    write_unpaired_data,
)
from tests.conftest import run_cli


def _kto_section(sft_recipe, train, held, **overrides):
    return {
        "model": str(sft_recipe.stage_dir("sft") / "final"),
        "data": [{"path": str(train)}],
        "validation_data": [{"path": str(held)}],
        "max_steps": 12,
        "global_batch_size": 16,
        "micro_batch_size": 8,
        "lr": 1.0e-3,
        "beta": 0.1,
        "eval_every": 6,
        "save_every": 6,
        "keep_last": 0,
        **FAST,
        "log_every": 1,
        **overrides,
    }


@pytest.fixture(scope="module")
def kto_run(sft_arithmetic, tmp_path_factory):
    sft_recipe, _ = sft_arithmetic
    folder = tmp_path_factory.mktemp("kto")
    train, held = write_unpaired_data(folder)
    recipe = load_recipe(write_recipe_file(folder, {"kto": _kto_section(sft_recipe, train, held)}))
    return recipe, run_kto(recipe, run_args())


def test_kto_separates_good_from_bad_replies_on_held_out_prompts(kto_run):
    recipe, _ = kto_run
    records = read_metrics(recipe.stage_dir("kto") / "metrics.jsonl")
    start = records[0]
    assert start["data/train_desirable"] == start["data/train_undesirable"] == 360
    train = [r for r in records if "rewards/margins" in r]
    # the policy starts as its own reference: every reward is 0
    assert train[0]["step"] == 1 and train[0]["rewards/margins"] == pytest.approx(0, abs=1e-6)
    evals = [r for r in records if "eval_rewards/margins" in r]
    assert [r["step"] for r in evals] == [6, 12]
    assert evals[-1]["eval_rewards/chosen"] > 0 > evals[-1]["eval_rewards/rejected"]
    assert evals[-1]["eval_rewards/margins"] > 2.0
    assert evals[-1]["eval_rewards/margins"] > evals[0]["eval_rewards/margins"]


def test_kto_resumes_exactly(kto_run, tmp_path):
    recipe, _ = kto_run
    assert_resume_repeats(run_kto, recipe, "kto", 6, tmp_path)


def test_kl_completions_rotate_within_each_micro_batch():
    from datasets import Dataset

    rows = Dataset.from_list([{"completion_ids": [i]} for i in range(5)])
    rotated = with_kl_completions(rows, 2)["KL_completion_ids"]
    assert rotated == [[1], [0], [3], [2], [4]]


def test_unpaired_records_and_pairs_and_their_errors(tmp_path):
    prompt = [{"role": "user", "content": "What is 1 + 1?"}]
    good = [{"role": "assistant", "content": "2"}]
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"prompt": prompt, "completion": good, "label": True},
            {"prompt": "Q: 2 + 2?", "completion": " 5", "label": False},
            {"prompt": prompt, "chosen": good, "rejected": [{"role": "assistant", "content": "3"}]},
        ],
    )
    section = type("S", (), {"data": [type("D", (), {"path": str(path), "weight": 1.0,
                             "split": "train"})()], "validation_data": [],
                             "validation_split": 0.0, "on_bad_record": "raise"})()  # fmt: skip
    data = load_examples(section, "unpaired", method="kto", seed=0)
    assert sorted((json.dumps(e["completion"]), e["label"]) for e in data.train) == [
        ('" 5"', False),
        ('[{"role": "assistant", "content": "2"}]', True),
        ('[{"role": "assistant", "content": "2"}]', True),
        ('[{"role": "assistant", "content": "3"}]', False),
    ]

    write_jsonl(path, [{"prompt": "Q", "completion": "A", "label": "yes"}])
    with pytest.raises(InputDataError) as err:
        load_examples(section, "unpaired", method="kto", seed=0)
    assert str(err.value) == (
        f"{path}:1: label must be true (a good completion) or false, got 'yes'; fix the record, "
        "or set kto.on_bad_record: skip to skip and count such records"
    )


def _good_only_recipe(sft_recipe, folder):
    train, held = write_unpaired_data(folder)
    good_only = [r for r in map(json.loads, train.read_text().splitlines()) if r["label"]]
    write_jsonl(train, good_only)
    return load_recipe(write_recipe_file(folder, {"kto": _kto_section(sft_recipe, train, held)}))


NO_BAD_EXAMPLES = (
    "kto: the training data has no bad (label: false) examples; KTO learns from both kinds "
    "(for good examples alone, use sft)"
)


def test_kto_needs_good_and_bad_examples(sft_arithmetic, tmp_path):
    recipe = _good_only_recipe(sft_arithmetic[0], tmp_path)
    with pytest.raises(InputDataError) as err:
        run_kto(recipe, run_args())
    assert str(err.value) == NO_BAD_EXAMPLES
    assert not recipe.stage_dir("kto").exists()


@pytest.mark.slow  # a fresh process imports torch, transformers and TRL (~20 s here)
def test_the_align_command_reports_it_without_traceback(sft_arithmetic, tmp_path):
    """The same through the command the registry declares: exit status 2, no traceback."""
    recipe = _good_only_recipe(sft_arithmetic[0], tmp_path)
    result = run_cli("align", "--method", "kto", str(recipe.source))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"llmtrain: error: {NO_BAD_EXAMPLES}"
    assert "Traceback" not in result.stderr
    assert not recipe.stage_dir("kto").exists()
