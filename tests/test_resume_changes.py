"""Issue 18.2: what a --resume may change. The learning rate and schedule take effect from the
resumed step (pretraining and SFT), the change is recorded in metrics.jsonl and config.yaml,
and a setting a resume cannot apply is refused, named."""

from __future__ import annotations

import shutil

import pytest
import yaml

from llmtrain.errors import RecipeError
from llmtrain.recipe import load_recipe
from llmtrain.rundir import read_metrics
from llmtrain.train.align.sft import run_sft
from llmtrain.train.optim import lr_multiplier
from llmtrain.train.pretrain import run_pretrain
from tests.align_support import FAST, run_args, write_recipe_file, write_sft_data
from tests.pretrain_support import build_data, write_pretrain_recipe

SEQ_LEN = 64


@pytest.fixture(scope="module")
def clm_data(tiny_tokenizer_dir, tmp_path_factory):
    return build_data(tmp_path_factory.mktemp("clm-data"), tiny_tokenizer_dir, SEQ_LEN)


def _pretrain_recipe(tmp_path, data, lr, micro_batch_size=8):
    return write_pretrain_recipe(
        tmp_path / "recipe.yaml",
        output_dir=tmp_path / "out",
        data=data,
        model="preset: llama-tiny",
        pretrain=f"""
            steps: 6
            global_batch_size: 16
            micro_batch_size: {micro_batch_size}
            precision: fp32
            lr: {lr}
            warmup_steps: 2
            min_lr_ratio: 0.1
            log_every: 1
            eval_every: 0
            save_every: 3
            keep_last: 0
        """,
    )


def test_pretrain_resume_takes_the_new_lr_and_refuses_a_new_batch_shape(clm_data, tmp_path):
    run_dir = tmp_path / "out" / "pretrain"
    run_pretrain(load_recipe(_pretrain_recipe(tmp_path, clm_data, 0.001)))
    shutil.rmtree(run_dir / "checkpoints" / "step-6")
    shutil.rmtree(run_dir / "final")

    with pytest.raises(RecipeError) as err:
        run_pretrain(
            load_recipe(_pretrain_recipe(tmp_path, clm_data, 0.001, micro_batch_size=4)),
            resume=True,
        )
    assert str(err.value) == (
        "--resume: the recipe changed settings a resume cannot apply to the saved model, "
        "optimizer and data position (pretrain.micro_batch_size 8 -> 4); set them back, or "
        "start a new run with --overwrite. A resume may change pretrain.lr, the schedule, the "
        "number of steps, grad_clip and the log/eval/save cadence (docs/recipes.md#resume)"
    )

    run_pretrain(load_recipe(_pretrain_recipe(tmp_path, clm_data, 0.0001)), resume=True)
    records = read_metrics(run_dir / "metrics.jsonl")
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}

    def expected(peak, step):
        return peak * lr_multiplier(
            step - 1,
            schedule="cosine",
            total_steps=6,
            warmup_steps=2,
            min_lr_ratio=0.1,
            decay_steps=1,
        )

    for step in (1, 2, 3):
        assert lrs[step] == pytest.approx(expected(0.001, step), rel=1e-9)
    for step in (4, 5, 6):
        assert lrs[step] == pytest.approx(expected(0.0001, step), rel=1e-9)
    assert [r["resumed"] for r in records if "resumed" in r] == [
        {"pretrain.lr": {"from": 0.001, "to": 0.0001}}
    ]
    assert [r["step"] for r in records if "resumed" in r] == [3]
    config = (run_dir / "config.yaml").read_text()
    assert config.startswith(
        "# resumed at step 3, applying from step 4: pretrain.lr 0.001 -> 0.0001\n"
    )
    assert yaml.safe_load(config)["pretrain"]["lr"] == 0.0001


def test_sft_resume_takes_the_new_lr(tmp_path, tiny_causal_lm_dir):
    data = write_sft_data(tmp_path)

    def recipe(lr):
        section = {
            "model": str(tiny_causal_lm_dir),
            "data": [{"path": str(data)}],
            "max_steps": 6,
            "global_batch_size": 8,
            "micro_batch_size": 8,
            "lr": lr,
            "schedule": "constant",
            "save_every": 3,
            "keep_last": 0,
            "eval_every": 0,
            **FAST,
            "log_every": 1,
        }
        return load_recipe(write_recipe_file(tmp_path, {"sft": section}))

    run_sft(recipe(1e-3), run_args())
    run_dir = tmp_path / "out" / "sft"
    shutil.rmtree(run_dir / "checkpoints" / "step-6")
    shutil.rmtree(run_dir / "final")
    trainer = run_sft(recipe(1e-4), run_args(resume=True))
    assert trainer.state.global_step == 6
    records = read_metrics(run_dir / "metrics.jsonl")
    lrs = {r["step"]: r["learning_rate"] for r in records if "learning_rate" in r}
    assert [lrs[step] for step in range(1, 7)] == pytest.approx([1e-3] * 3 + [1e-4] * 3)
    assert [r["resumed"] for r in records if "resumed" in r] == [
        {"sft.lr": {"from": 0.001, "to": 0.0001}}
    ]
    assert (
        (run_dir / "config.yaml")
        .read_text()
        .startswith("# resumed at step 3, applying from step 4: sft.lr 0.001 -> 0.0001\n")
    )
