"""Issue 18's guards on the TRL-backed stages and on stage inputs: non-finite steps skipped and
stopped (pretraining's guard, shared), no non-finite checkpoint or final/, the wrong kind of
model refused at start."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import trl
from safetensors.torch import load_file

from llmtrain.errors import TrainingError
from llmtrain.recipe import load_recipe
from llmtrain.train.align.sft import run_sft
from llmtrain.train.align.trl_glue import AlignRun
from tests.align_support import FAST, run_args, write_recipe_file, write_sft_data


def _sft_section(tmp_path, model_dir, **extra):
    data = write_sft_data(tmp_path)
    return {
        "model": str(model_dir),
        "data": [{"path": str(data)}],
        "max_steps": 20,
        "global_batch_size": 8,
        "micro_batch_size": 8,
        "lr": 3.0e-3,
        "eval_every": 0,
        "save_every": 5,
        "keep_last": 0,
        **FAST,
        "log_every": 1,
        **extra,
    }


def _strict_records(run_dir):
    """metrics.jsonl parsed as strict JSON (a bare NaN or Infinity fails)."""

    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line, parse_constant=refuse) for line in lines]


def test_sft_skips_non_finite_steps_and_stops_with_pretrainings_message(
    tmp_path, tiny_causal_lm_dir, monkeypatch, caplog
):
    """Issue 18.3: a non-finite loss in a TRL-backed stage skips the step (the weights stay
    finite and keep learning) and max_nonfinite_steps in a row stop the run with pretraining's
    message; no final/ is written."""
    real = trl.SFTTrainer.compute_loss
    calls = {"train": 0}

    def poisoned(self, model, inputs, *args, **kwargs):
        result = real(self, model, inputs, *args, **kwargs)
        if not model.training:
            return result
        calls["train"] += 1
        if calls["train"] == 3 or calls["train"] >= 7:
            if isinstance(result, tuple):
                return (result[0] * float("nan"), *result[1:])
            return result * float("nan")
        return result

    monkeypatch.setattr(trl.SFTTrainer, "compute_loss", poisoned)
    section = _sft_section(tmp_path, tiny_causal_lm_dir, max_nonfinite_steps=3)
    recipe = load_recipe(write_recipe_file(tmp_path, {"sft": section}))
    run_dir = recipe.stage_dir("sft")
    caplog.set_level(logging.WARNING)
    with pytest.raises(TrainingError) as err:
        run_sft(recipe, run_args())
    assert str(err.value) == (
        "sft stopped: 3 steps in a row (7-9) had a non-finite loss or gradient "
        "(sft.max_nonfinite_steps is 3); the last good checkpoint "
        f"{run_dir / 'checkpoints' / 'step-5'} is intact. Lower sft.lr, keep grad_clip on "
        "or use bf16 rather than fp16, then continue with --resume"
    )
    assert "step 3: the gradient norm is nan; the step was skipped" in caplog.text
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-5"]
    assert not (run_dir / "final").exists()
    weights = load_file(run_dir / "checkpoints" / "step-5" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    records = {r["step"]: r for r in _strict_records(run_dir) if "loss" in r}
    assert "skipped_steps" not in records[2] and records[3]["skipped_steps"] == 1
    assert records[6]["loss"] < records[1]["loss"]  # the weights stayed finite and kept learning


def test_sft_never_publishes_non_finite_weights(tmp_path, tiny_causal_lm_dir, monkeypatch):
    """Issue 18.3: weights that turn non-finite (a finite loss, a poisoned update) are neither
    checkpointed nor written as final/; the error names the last checkpoint written from finite
    weights as the good one."""
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            if state.global_step == 7:  # the 8th update
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = float("inf")

    real_callbacks = AlignRun.callbacks
    monkeypatch.setattr(AlignRun, "callbacks", lambda self: [*real_callbacks(self), Poison()])
    section = _sft_section(tmp_path, tiny_causal_lm_dir, max_steps=10)
    recipe = load_recipe(write_recipe_file(tmp_path, {"sft": section}))
    run_dir = recipe.stage_dir("sft")
    with pytest.raises(TrainingError) as err:
        run_sft(recipe, run_args())
    assert str(err.value) == (
        "sft: the trained weights hold NaN or infinite values, so final/ was not written; "
        f"the last good checkpoint is {run_dir / 'checkpoints' / 'step-5'}. Lower sft.lr or "
        "keep grad_clip on, then train again (or continue from the checkpoint with --resume)"
    )
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-5"]
    assert not (run_dir / "final").exists()
    _strict_records(run_dir)
