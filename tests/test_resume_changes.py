"""Issue 18.2: what a --resume may change. The learning rate and schedule take effect from the
resumed step (pretraining and SFT), the change is recorded in metrics.jsonl and config.yaml,
and a setting a resume cannot apply is refused, named."""

from __future__ import annotations

import re
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


def test_sft_resume_takes_the_new_lr_and_continues_num_tokens(tmp_path, tiny_causal_lm_dir):
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
    straight = read_metrics(run_dir / "metrics.jsonl")
    straight_tokens = {r["step"]: r["num_tokens"] for r in straight if "num_tokens" in r}
    shutil.rmtree(run_dir / "checkpoints" / "step-6")
    shutil.rmtree(run_dir / "final")
    trainer = run_sft(recipe(1e-4), run_args(resume=True))
    assert trainer.state.global_step == 6
    records = read_metrics(run_dir / "metrics.jsonl")
    lrs = {r["step"]: r["learning_rate"] for r in records if "learning_rate" in r}
    assert [lrs[step] for step in range(1, 7)] == pytest.approx([1e-3] * 3 + [1e-4] * 3)
    # issue 18.7: num_tokens continues from the checkpoint's count (it restarted from zero)
    tokens = {r["step"]: r["num_tokens"] for r in records if "num_tokens" in r}
    assert tokens == straight_tokens and tokens[4] > tokens[3]
    assert [r["resumed"] for r in records if "resumed" in r] == [
        {"sft.lr": {"from": 0.001, "to": 0.0001}}
    ]
    assert (
        (run_dir / "config.yaml")
        .read_text()
        .startswith("# resumed at step 3, applying from step 4: sft.lr 0.001 -> 0.0001\n")
    )


# ---------------------------------------------------------------------------------------------
# Issue 18.7: a checkpoint that cannot be loaded gives one message


def test_a_truncated_checkpoint_or_one_of_another_shape_gives_one_message(clm_data, tmp_path):
    from llmtrain.errors import RunDirError

    first = tmp_path / "first"
    (tmp_path / "other").mkdir()
    first.mkdir()
    run_pretrain(load_recipe(_pretrain_recipe(first, clm_data, 0.001)))
    step6 = first / "out" / "pretrain" / "checkpoints" / "step-6"

    other = write_pretrain_recipe(
        tmp_path / "other" / "recipe.yaml",
        output_dir=tmp_path / "other" / "out",
        data=clm_data,
        model="preset: llama-tiny\nhidden_size: 32\nhead_dim: 8",
        pretrain="steps: 8\nglobal_batch_size: 16\nmicro_batch_size: 8\nprecision: fp32",
    )
    with pytest.raises(RunDirError) as err:
        run_pretrain(load_recipe(other), resume=step6)
    assert re.fullmatch(
        rf"--resume: cannot load the checkpoint {re.escape(str(step6))} \(size mismatch for "
        r"\S+: copying a param with shape torch.Size\(\[\d+, \d+\]\) from checkpoint, the shape "
        r"in current model is torch.Size\(\[\d+, \d+\]\)\.\); it is truncated or damaged, or was "
        r"written for another model shape; resume from another checkpoint \(--resume PATH\) or "
        r"start again with --overwrite",
        str(err.value),
    )

    weights = step6 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(RunDirError) as err:
        run_pretrain(load_recipe(_pretrain_recipe(first, clm_data, 0.001)), resume=step6)
    assert str(err.value) == (
        f"--resume: cannot load the checkpoint {step6} (Error while deserializing header: "
        "incomplete metadata, file not fully covered); it is truncated or damaged, or was "
        "written for another model shape; resume from another checkpoint (--resume PATH) or "
        "start again with --overwrite"
    )


def test_disk_full_while_checkpointing_gives_one_message_and_the_resume_cleans_up(
    clm_data, tmp_path, monkeypatch
):
    """Issue 18.7: a full disk (simulated: writing optimizer.pt raises ENOSPC) gives one message
    naming the run directory; the partial .step-3.tmp goes when the run is started again."""
    import errno

    import torch

    from llmtrain.errors import RunDirError

    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):
        if str(path).endswith("optimizer.pt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    run_dir = tmp_path / "out" / "pretrain"
    recipe = _pretrain_recipe(tmp_path, clm_data, 0.001)
    with pytest.raises(RunDirError) as err:
        run_pretrain(load_recipe(recipe))
    partial = run_dir / "checkpoints" / ".step-3.tmp"
    assert str(err.value) == (
        f"{run_dir}: no space left on its disk (writing {partial / 'optimizer.pt'}); free space "
        "or set output_dir to a larger disk, then continue with --resume"
    )
    assert partial.is_dir()
    monkeypatch.setattr(torch, "save", real_save)
    run_pretrain(load_recipe(recipe))  # no checkpoint was complete: a plain start
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-3", "step-6"]


def test_an_output_directory_that_cannot_be_written_gives_one_message(
    tmp_path, tiny_causal_lm_dir, monkeypatch
):
    """Issue 18.7: a read-only output directory (simulated: creating in it raises EROFS, as
    root ignores permissions) gives one message naming the run directory."""
    import errno
    from pathlib import Path

    from llmtrain.errors import RunDirError

    data = write_sft_data(tmp_path)
    section = {"model": str(tiny_causal_lm_dir), "data": [{"path": str(data)}], **FAST}
    recipe = load_recipe(write_recipe_file(tmp_path, {"sft": section}))
    out = tmp_path / "out"
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self == out or out in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(RunDirError) as err:
        run_sft(recipe, run_args())
    assert str(err.value) == (
        f"{out / 'sft'}: cannot write there (Read-only file system) (writing {out}); make it "
        "writable or set output_dir to a writable directory"
    )


def test_a_setting_another_version_added_is_not_a_change():
    """A config.yaml written before a key existed (or after it was removed) resumes: only keys
    both recipes hold are compared; the seed and the model section count too."""
    from llmtrain.train.resume import resume_changes

    old = "seed: 1\nmodel: {hidden_size: 64}\npretrain: {lr: 0.1, steps: 5}\n"
    new = "seed: 2\nmodel: {hidden_size: 32}\npretrain: {lr: 0.1, steps: 5, optimizer: adamw}\n"
    assert resume_changes(old, new, ("pretrain", "model")) == {
        "seed": (1, 2),
        "model.hidden_size": (64, 32),
    }
