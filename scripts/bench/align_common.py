"""Shared parts of the SFT and DPO throughput benchmarks (scripts/bench/align_sft.py, align_dpo.py).

Data of realistic, varied lengths: chat turns whose assistant text is a slice of a docstring of
Python's standard library (a few dozen to several hundred tokens), so padding matters as it does
on real chat data. Model: a Llama of the given size with the tests' byte-level BPE tokenizer
(chatml template). Timing: a TrainerCallback stamps every optimizer step with wall-clock and
process CPU time; steps/s and tokens/s are taken over the steps after the warmup ones, best of
the repeats, modes alternating. On a machine shared with other jobs, wall-clock swings with
their load; with --threads 1 the process CPU time is the cost of the step itself, so the
per-CPU-second figures are the ones to compare there.
"""

from __future__ import annotations

import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def build_model(workdir: Path, hidden: int, layers: int) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tests.conftest import build_tiny_tokenizer

    tokenizer_dir = build_tiny_tokenizer(workdir / "tokenizer", vocab_size=2048)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=(len(tokenizer) + 63) // 64 * 64,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    out = workdir / "model"
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def doc_slices(n: int, seed: int, min_chars: int = 80, max_chars: int = 2000) -> list[str]:
    from llmtrain.data_pipeline.stdlib_corpus import iter_documents

    rng = random.Random(seed)
    docs = [d for d in iter_documents("docs", max_bytes=3_000_000) if len(d) >= min_chars]
    rng.shuffle(docs)
    return [doc[: rng.randint(min_chars, max_chars)] for doc in docs[:n]]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.cpu: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())
            self.cpu.append(time.process_time())

    return StepTimer()


def timed_run(run: Any, recipe: Any, warmup: int) -> dict[str, float]:
    """Run `run(recipe, args)` with a step timer; steps/s and tokens/s after `warmup` steps."""
    import argparse

    from llmtrain.rundir import read_metrics
    from llmtrain.train.align import trl_glue

    timer = step_timer()
    original = trl_glue.AlignRun.callbacks
    trl_glue.AlignRun.callbacks = lambda self: [*original(self), timer]
    try:
        run(recipe, argparse.Namespace(resume=None, overwrite=True))
    finally:
        trl_glue.AlignRun.callbacks = original
    method = next(m for m in ("sft", "dpo") if getattr(recipe, m) is not None)
    records = read_metrics(recipe.stage_dir(method) / "metrics.jsonl")
    tokens = {r["step"]: r["num_tokens"] for r in records if "num_tokens" in r and "loss" in r}
    steps = len(timer.times)
    seconds = timer.times[-1] - timer.times[warmup - 1]
    cpu_seconds = timer.cpu[-1] - timer.cpu[warmup - 1]
    return {
        "steps_per_s": (steps - warmup) / seconds,
        "tokens_per_s": (tokens[steps] - tokens[warmup]) / seconds,
        "steps_per_cpu_s": (steps - warmup) / cpu_seconds,
        "tokens_per_cpu_s": (tokens[steps] - tokens[warmup]) / cpu_seconds,
    }


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def report(results: dict[str, list[dict[str, float]]], baseline: str) -> None:
    """Best repeat of each mode; ratios to `baseline` in real tokens per wall-clock second and
    per CPU second (steps/s ratios equal the tokens/s ones except for packing, whose steps
    hold more examples)."""
    best = {mode: max(runs, key=lambda r: r["tokens_per_cpu_s"]) for mode, runs in results.items()}
    base = best[baseline]
    print(f"machine: {machine()}")
    print(
        f"{'mode':>14} {'steps/s':>8} {'tokens/s':>9} {'ratio':>6}"
        f" {'steps/cpu-s':>12} {'tokens/cpu-s':>13} {'ratio':>6}"
    )
    for mode, r in best.items():
        wall = r["tokens_per_s"] / base["tokens_per_s"]
        cpu = r["tokens_per_cpu_s"] / base["tokens_per_cpu_s"]
        print(
            f"{mode:>14} {r['steps_per_s']:8.3f} {r['tokens_per_s']:9.0f} {wall:5.2f}x"
            f" {r['steps_per_cpu_s']:12.3f} {r['tokens_per_cpu_s']:13.0f} {cpu:5.2f}x"
        )
