"""`llmtrain run` for real: a pipeline killed mid-pretraining skips what finished and resumes."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from llmtrain.rundir import read_metrics


def pipeline_recipe(folder, corpus):
    recipe = {
        "name": "run-test",
        "output_dir": str(folder / "out"),
        "seed": 7,
        "tokenizer": {"vocab_size": 512, "sources": [{"paths": [str(corpus)]}]},
        "data": {
            "seq_len": 64,
            "num_proc": 1,
            "sources": [{"name": "mixed", "paths": [str(corpus)]}],
            "filters": {"length": {"min_words": 5}},
            "validation": {"fraction": 0.2},
        },
        "model": {"preset": "llama-tiny"},
        "pretrain": {
            "steps": 40,
            "global_batch_size": 8,
            "micro_batch_size": 8,
            "precision": "fp32",
            "warmup_steps": 2,
            "log_every": 1,
            "eval_every": 0,
            "save_every": 10,
        },
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def actions(stdout: str) -> dict[str, str]:
    """The plan `llmtrain run` prints first: '<stage>: <action> (<reason>)' per stage."""
    return dict(re.findall(r"^\s*(\w+): (skip|run|resume|rerun)\s+\(", stdout, flags=re.M))


@pytest.mark.slow
def test_run_killed_mid_pretraining_resumes_and_skips_finished_stages(tokenizer_corpus, tmp_path):
    recipe = pipeline_recipe(tmp_path, tokenizer_corpus)
    command = [sys.executable, "-m", "llmtrain", "run", str(recipe)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pretrain_dir = tmp_path / "out" / "pretrain"
    first = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # the stage runs in a child process: kill the whole group
    )
    deadline = time.time() + 600
    while not (pretrain_dir / "checkpoints" / "step-20").is_dir():
        assert first.poll() is None and time.time() < deadline, "no step-20 checkpoint"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    stdout, _ = first.communicate()
    assert actions(stdout) == {"tokenizer": "run", "data": "run", "pretrain": "run"}
    assert not (pretrain_dir / "final").exists()

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert actions(again.stdout) == {"tokenizer": "skip", "data": "skip", "pretrain": "resume"}
    resumed = re.search(r"resumed from \S*step-(\d+)", again.stderr)
    assert resumed and 20 <= int(resumed.group(1)) < 40, again.stderr[-3000:]
    steps = [r["step"] for r in read_metrics(pretrain_dir / "metrics.jsonl") if "loss" in r]
    assert steps == list(
        range(1, 41)
    )  # each step once: resumed runs cut metrics past the checkpoint
    assert (pretrain_dir / "final" / "model.safetensors").is_file()

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert actions(done.stdout) == {"tokenizer": "skip", "data": "skip", "pretrain": "skip"}


@pytest.mark.slow
def test_run_with_instances_anneals_and_fine_tunes_twice(tokenizer_corpus, tmp_path):
    """A second data build and an annealing pretrain that continues the first pretrain's
    model, then sft and a second SFT instance on top of it: `run` runs them in order, skips
    them when done, and reruns only what reads a changed stage."""
    from tests.align_support import FAST, write_sft_data

    recipe_path = pipeline_recipe(tmp_path, tokenizer_corpus)
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["pretrain"].update(steps=6, save_every=0, lr=3.0e-3)
    sft_data = write_sft_data(tmp_path)
    sft = {"data": [{"path": str(sft_data)}], "max_steps": 2, "global_batch_size": 8}
    sft.update(micro_batch_size=8, **FAST)
    recipe["sft"] = sft
    recipe["stages"] = {
        "data_anneal": {**recipe["data"], "kind": "data"},
        "pretrain_anneal": {
            **recipe["pretrain"],
            "kind": "pretrain",
            "inputs": {"data": "data_anneal", "model": "pretrain"},
            "steps": 3,
            "lr": 1.0e-4,
        },
        "sft_2": {**sft, "kind": "sft", "inputs": {"model": "sft"}},
    }
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    command = [sys.executable, "-m", "llmtrain", "run", str(recipe_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    order = ["tokenizer", "data", "data_anneal", "pretrain", "pretrain_anneal", "sft", "sft_2"]
    assert list(actions(first.stdout)) == order
    assert set(actions(first.stdout).values()) == {"run"}
    out = tmp_path / "out"
    for stage in ("pretrain", "pretrain_anneal", "sft", "sft_2"):
        assert (out / stage / "final" / "config.json").is_file(), stage
    assert (out / "data_anneal" / "manifest.json").is_file()
    # the annealing run starts from pretrain's weights (a fresh model starts near ln 512 = 6.2)
    pretrain_loss = [
        r["loss"] for r in read_metrics(out / "pretrain" / "metrics.jsonl") if "loss" in r
    ]
    anneal_loss = [
        r["loss"] for r in read_metrics(out / "pretrain_anneal" / "metrics.jsonl") if "loss" in r
    ]
    assert anneal_loss[0] < pretrain_loss[0] - 0.3, (pretrain_loss, anneal_loss)
    report = (out / "report" / "report.md").read_text()
    assert "## pretrain_anneal" in report and "## Data mixture: data_anneal" in report

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(actions(again.stdout).values()) == {"skip"}

    changed = subprocess.run(
        [*command, "--set", "stages.data_anneal.validation.fraction=0.3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert actions(changed.stdout) == {
        "tokenizer": "skip",
        "data": "skip",
        "data_anneal": "rerun",
        "pretrain": "skip",
        "pretrain_anneal": "rerun",
        "sft": "skip",
        "sft_2": "skip",
    }
