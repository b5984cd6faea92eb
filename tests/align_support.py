"""Shared helpers for the sft/rm/dpo tests: arithmetic data files, recipes, runs."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import yaml
from pytest import approx

from llmtrain.data_pipeline.arithmetic import (
    Problem,
    make_problems,
    sft_record,
    split_problems,
    user_message,
)
from llmtrain.recipe import load_recipe

HELD_OUT = 40
FAST = {  # tiny runs: fp32 on CPU, high learning rates, no warmup
    "precision": "fp32",
    "warmup_ratio": 0.0,
    "log_every": 5,
}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def arithmetic_split(n: int = 400, seed: int = 0) -> tuple[list[Problem], list[Problem]]:
    return split_problems(make_problems(n, seed=seed), HELD_OUT)


UNHELPFUL = ("I don't know.", "Ask someone else.", "That is a hard one.", "Maybe later.")


def style_preference(problem: Problem, rng: random.Random) -> dict:
    """A learnable synthetic preference: the worked answer over an unhelpful reply."""
    return {
        "prompt": [user_message(problem)],
        "chosen": [{"role": "assistant", "content": problem.solution()}],
        "rejected": [{"role": "assistant", "content": rng.choice(UNHELPFUL)}],
    }


def write_sft_data(folder: Path) -> Path:
    train, _ = arithmetic_split()
    return write_jsonl(folder / "sft.jsonl", [sft_record(p) for p in train])


def write_preference_data(folder: Path) -> tuple[Path, Path]:
    """(train file, held-out file) of style preferences on disjoint problems."""
    train, held = arithmetic_split()
    rng = random.Random(0)
    train_path = write_jsonl(folder / "prefs.jsonl", [style_preference(p, rng) for p in train])
    held_path = write_jsonl(folder / "prefs_held.jsonl", [style_preference(p, rng) for p in held])
    return train_path, held_path


def write_recipe_file(folder: Path, sections: dict[str, Any], name: str = "recipe.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {"name": "align-test", "output_dir": str(folder / "out"), "seed": 7, **sections}
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def run_args(resume: Any = None, overwrite: bool = False) -> argparse.Namespace:
    return argparse.Namespace(resume=resume, overwrite=overwrite)


def train_sft(folder: Path, model_dir: Path, **overrides: Any):
    """Run `align --method sft` on the arithmetic chat data; returns (recipe, trainer)."""
    from llmtrain.train.align.sft import run_sft

    data = write_sft_data(folder)
    section = {
        "model": str(model_dir),
        "data": [{"path": str(data)}],
        "max_steps": 150,
        "global_batch_size": 16,
        "micro_batch_size": 16,
        "lr": 3.0e-3,
        "eval_every": 50,
        "save_every": 75,
        **FAST,
        **overrides,
    }
    recipe = load_recipe(write_recipe_file(folder, {"sft": section}))
    return recipe, run_sft(recipe, run_args(overwrite=True))


def held_out_prompts(problems: list[Problem]) -> list[list[dict]]:
    return [[user_message(p)] for p in problems]


def assert_final_is_merged_adapter(run_dir: Path, trainer: Any) -> Any:
    """A LoRA run: adapter/ holds the adapter, final/ the merged model, which gives the
    trained model's logits; returns those logits on a fixed arithmetic line with the batch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert not (run_dir / "final" / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final")
    batch = tokenizer(["What is 3 + 4? 3 + 4 = 7."], return_tensors="pt")
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "final").eval()
    with torch.no_grad():
        expected = trainer.model.eval()(**batch).logits
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=0, atol=1e-4)
    return batch, expected


def unpaired_records(preference: dict) -> list[dict]:
    """A style preference as two unpaired (KTO) records: the good and the bad reply."""
    return [
        {"prompt": preference["prompt"], "completion": preference["chosen"], "label": True},
        {"prompt": preference["prompt"], "completion": preference["rejected"], "label": False},
    ]


def write_unpaired_data(folder: Path) -> tuple[Path, Path]:
    """(train file, held-out file) of unpaired good/bad replies on disjoint problems."""
    train, held = arithmetic_split()
    rng = random.Random(0)
    paths = []
    for name, problems in (("unpaired", train), ("unpaired_held", held)):
        records = [r for p in problems for r in unpaired_records(style_preference(p, rng))]
        paths.append(write_jsonl(folder / f"{name}.jsonl", records))
    return paths[0], paths[1]


def assert_resume_repeats(run: Any, recipe: Any, method: str, cut: int, tmp_path: Path) -> None:
    """Copy the finished run, cut it back to its step-`cut` checkpoint and resume it: every
    metric of the steps after `cut` (timings aside) equals the uninterrupted run's."""
    import shutil

    from llmtrain.rundir import read_metrics

    run_dir = recipe.stage_dir(method)
    copy = tmp_path / "resumed"
    shutil.copytree(run_dir.parent, copy)
    shutil.rmtree(copy / method / "final")
    for step_dir in (copy / method / "checkpoints").glob("step-*"):
        if int(step_dir.name.split("-")[1]) > cut:
            shutil.rmtree(step_dir)
    run(load_recipe(recipe.source, [f"output_dir={copy}"]), run_args(resume=True))

    # timings differ; TRL's running num_tokens count restarts from 0 on resume (not restored)
    timing = ("time", "runtime", "per_second", "tokens_per_s", "train_", "num_tokens")

    def after_cut(path: Path) -> list[dict]:
        return [
            {k: v for k, v in r.items() if not any(t in k for t in timing)}
            for r in read_metrics(path)
            if r["step"] > cut and ("loss" in r or "eval_loss" in r)
        ]

    original = after_cut(run_dir / "metrics.jsonl")
    resumed = after_cut(copy / method / "metrics.jsonl")
    assert original, "no metrics after the cut"
    assert [r["step"] for r in resumed] == [r["step"] for r in original]
    for ours, theirs in zip(resumed, original, strict=True):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key] == approx(theirs[key], rel=1e-5, abs=1e-6), (ours["step"], key)
    assert (copy / method / "final" / "model.safetensors").is_file()
