"""Pretraining throughput: our loop vs Hugging Face `Trainer`, and MFU of a ~1B Llama on a GPU.

    python scripts/bench/pretrain.py trainer              # CPU or GPU: ours vs Trainer, one process
    python scripts/bench/pretrain.py mfu                  # GPU: llama-1b, bf16, seq 2048

`trainer`: one data build (Python's standard library docs, a byte-level BPE trained here), one
model (a Llama preset, same seed), the same batch (micro-batch x accumulation), optimizer (torch's
fused AdamW), schedule (warmup + cosine), clipping and precision. Ours is
`llmtrain.train.pretrain.run_pretrain` reading the data build; `Trainer` reads the same windows,
in the same order, from a `datasets.Dataset`. The sides run `--repeats` times each, alternating
which goes first. Each reads the clock at the end of every optimizer step (ours: around
`PretrainLoop.train_step`; Trainer: an `on_step_end` callback), and the rates cover the steps
after `--warmup` (set-up, checkpoints and the final save are outside both): tokens per wall
second, tokens per CPU second of the process (`time.process_time`, all threads; on a machine
shared with other jobs the CPU figures are the ones the load changes least; `--threads 1`
keeps idle threads from spinning) and tokens per CPU second of the fastest step. Best and
median repeat are printed; `mean_loss` (mean step loss) checks that both sides did the same
training.

`mfu`: `run_pretrain` on llama-1b (Llama 3.2 1B shapes, 128256-row vocabulary) in bf16 with
sequences of 2048 on one GPU; prints tokens/s and MFU (6N + attention FLOPs per token over the
device's peak from llmtrain.train.flops, or --peak-tflops).
"""

from __future__ import annotations

import argparse
import json
import platform
import queue as queue_module
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def train_tokenizer(out_dir: Path, vocab_size: int) -> Path:
    """A byte-level BPE on stdlib docs (the same recipe as the tests' tiny tokenizer)."""
    from tests.conftest import build_tiny_tokenizer

    return build_tiny_tokenizer(out_dir, vocab_size=vocab_size)


def data_build(out_dir: Path, tokenizer_dir: Path, seq_len: int, max_bytes: int) -> Path:
    from tests.pretrain_support import build_data

    return build_data(out_dir, tokenizer_dir, seq_len, max_bytes=max_bytes)


def recipe_for(args, workdir: Path, data: Path, **pretrain_extra):
    from llmtrain.recipe import validate_recipe

    model = {"preset": args.preset}
    if args.hidden:
        model.update(hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3 // 64 * 64)
    if args.layers:
        model["num_layers"] = args.layers
    if args.vocab_size:
        model["vocab_size"] = args.vocab_size
    pretrain = {
        "data": str(data),
        "steps": args.steps,
        "global_batch_size": args.micro * args.accum,
        "micro_batch_size": args.micro,
        "precision": args.precision,
        "lr": 1e-3,
        "warmup_steps": 2,
        "log_every": 1,
        "eval_every": 0,
        "save_every": 0,
        "compile": args.compile,
        **pretrain_extra,
    }
    if args.peak_tflops:
        pretrain["peak_tflops"] = args.peak_tflops
    return validate_recipe(
        {
            "name": "bench",
            "output_dir": str(workdir),
            "seed": 0,
            "model": model,
            "pretrain": pretrain,
        }
    )


def clock() -> tuple[float, float]:
    """(wall, CPU seconds of this process, all threads), after the GPU has finished."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


class Baton:
    """Strict turns between the optimizer steps of two processes (`--interleave`): a side takes
    the baton before each step and gives it back after, so the steps alternate ours, Trainer,
    ours, ... and both meet the same load on a shared machine; the first side waits for the
    other's last step before it goes on (final save, exit)."""

    def __init__(self, conn: Any, first: bool):
        self.conn, self.first, self.holding = conn, first, first

    def take(self) -> None:
        if not self.holding:
            self.conn.recv()
            self.holding = True

    def give(self, last: bool) -> None:
        self.conn.send(None)
        self.holding = False
        if last and self.first:
            self.conn.recv()


class StepClock:
    """Clock readings at the beginning and end of each optimizer step (1-based).

    Interleaved, a side gives the baton at the end of a step and waits there for its next
    turn, so what it does between steps (ours: metrics and logs; Trainer: fetching and
    collating the next batches) counts in its next step."""

    def __init__(self, args, baton: Baton | None):
        self.args, self.baton = args, baton
        self.begin: dict[int, tuple[float, float]] = {}
        self.end: dict[int, tuple[float, float]] = {}

    def step_begins(self, step: int) -> None:
        if step not in self.begin:  # the first step (later ones begin in step_ends)
            if self.baton is not None:
                self.baton.take()
            self.begin[step] = clock()

    def step_ends(self, step: int) -> None:
        self.end[step] = clock()
        if self.baton is not None:
            last = step == self.args.steps
            self.baton.give(last)
            if not last:
                self.baton.take()
                self.begin[step + 1] = clock()

    def rates(self) -> dict:
        """Tokens per wall and per CPU second over the steps after `warmup`, and per CPU second
        of the fastest step (the least disturbed by other jobs on the machine). Sequential runs
        count from the end of step `warmup` to the end of the last (everything in between);
        interleaved ones the time from each turn to the end of the step (not the waits)."""
        args = self.args
        tokens_per_step = args.micro * args.accum * args.seq_len
        steps = range(args.warmup + 1, args.steps + 1)
        tokens = len(steps) * tokens_per_step
        if self.baton is None:
            (wall0, cpu0), (wall1, cpu1) = self.end[args.warmup], self.end[args.steps]
            wall, cpu = wall1 - wall0, cpu1 - cpu0
            per_step = [self.end[s][1] - self.end[s - 1][1] for s in steps]
        else:
            wall = sum(self.end[s][0] - self.begin[s][0] for s in steps)
            per_step = [self.end[s][1] - self.begin[s][1] for s in steps]
            cpu = sum(per_step)
        return {
            "tokens_per_s": tokens / wall,
            "tokens_per_cpu_s": tokens / cpu,
            "tokens_per_cpu_s_fastest_step": tokens_per_step / min(per_step),
        }


def run_ours(args, workdir: Path, data: Path, baton: Baton | None = None) -> dict:
    from unittest import mock

    from llmtrain.train.pretrain import PretrainLoop, release_accelerator, run_pretrain
    from tests.pretrain_support import read_records

    release_accelerator()
    recipe = recipe_for(args, workdir, data)
    timer = StepClock(args, baton)
    original = PretrainLoop.train_step

    def timed_step(loop, batches=None):  # the whole step: batches, forward/backward, optimizer
        timer.step_begins(loop.step + 1)
        result = original(loop, batches)
        timer.step_ends(loop.step)
        return result

    with mock.patch.object(PretrainLoop, "train_step", timed_step):
        result = run_pretrain(recipe, overwrite=True)
    records = [r for r in read_records(result.run_dir) if "step_time_s" in r]
    out = {**timer.rates(), "mean_loss": statistics.mean(r["loss"] for r in records)}
    mfus = [r["mfu"] for r in records if "mfu" in r and r["step"] > args.warmup]
    if mfus:
        out["mfu"] = statistics.median(mfus)
    release_accelerator()
    return out


def run_hf_trainer(args, workdir: Path, data: Path, baton: Baton | None = None) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from llmtrain.data_pipeline.loader import TrainBatches
    from llmtrain.train.models import create_model
    from llmtrain.train.pretrain import release_accelerator

    release_accelerator()
    recipe = recipe_for(args, workdir, data)
    section = recipe.pretrain
    tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer_dir))
    model = create_model(recipe.model, tokenizer, objective="clm", seed=0)
    # the same windows our loop reads, in the same order
    batches = iter(
        TrainBatches(
            data, seq_len=args.seq_len, micro_batch_size=args.micro, rank=0, world_size=1, seed=0
        )
    )
    rows = [w[:-1].tolist() for _ in range(args.steps * args.accum) for w in next(batches)]
    dataset = Dataset.from_dict({"input_ids": rows, "labels": rows})

    timer = StepClock(args, baton)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, arguments, state, control, **kwargs):
            timer.step_begins(state.global_step + 1)

        def on_step_end(self, arguments, state, control, **kwargs):
            timer.step_ends(state.global_step)

    training_args = TrainingArguments(
        output_dir=str(workdir / "hf"),
        per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.accum,
        max_steps=args.steps,
        learning_rate=section.lr,
        lr_scheduler_type="cosine",
        warmup_steps=section.resolved_warmup_steps,
        weight_decay=section.weight_decay,
        adam_beta1=section.beta1,
        adam_beta2=section.beta2,
        max_grad_norm=section.grad_clip,
        optim="adamw_torch_fused",
        bf16=args.precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        torch_compile=args.compile,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        train_sampling_strategy="sequential",  # the order our loop reads them in
        seed=0,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=dataset, callbacks=[StepTimer()]
    )
    output = trainer.train()
    release_accelerator()
    return {**timer.rates(), "mean_loss": output.training_loss}


def run_side(side: str, args, workdir: Path, data: Path, conn: Any, first: bool, queue: Any):
    """One side of an interleaved run, in its own process."""
    import torch

    from llmtrain.runtime import setup_logging

    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logging()
    run = run_ours if side == "ours" else run_hf_trainer
    queue.put((side, run(args, workdir / f"{side}-run", data, Baton(conn, first))))


def run_interleaved(args, workdir: Path, data: Path, ours_first: bool) -> dict[str, dict]:
    """Both sides at once in two processes, their optimizer steps taking turns."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ours_end, hf_end = context.Pipe()
    queue = context.Queue()
    processes = [
        context.Process(target=run_side, args=(side, args, workdir, data, end, first, queue))
        for side, end, first in (
            ("ours", ours_end, ours_first),
            ("hf_trainer", hf_end, not ours_first),
        )
    ]
    for process in processes:
        process.start()
    results: dict[str, dict] = {}
    while len(results) < len(processes):
        try:
            side, result = queue.get(timeout=5)
            results[side] = result
        except queue_module.Empty:
            failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if failed:
                for process in processes:
                    process.kill()
                raise SystemExit(f"a benchmark process failed (exit status {failed[0]})") from None
    for process in processes:
        process.join()
    return results


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["trainer", "mfu"])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--vocab-size", type=int, default=None)
    parser.add_argument("--tokenizer-vocab", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--micro", type=int, default=None)
    parser.add_argument("--accum", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start (>= 1)")
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="trainer mode: run both sides at once in two processes whose steps take turns",
    )
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--corpus-bytes", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.mode == "trainer":
        defaults = dict(preset="llama-tiny", hidden=256, layers=4, tokenizer_vocab=2048,
                        seq_len=256, micro=8, accum=2, steps=40, precision="fp32",
                        corpus_bytes=3_000_000)  # fmt: skip
    else:
        defaults = dict(preset="llama-1b", vocab_size=128256, tokenizer_vocab=32000, seq_len=2048,
                        micro=4, accum=8, steps=40, precision="bf16", corpus_bytes=40_000_000)  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    from llmtrain.runtime import setup_logging

    setup_logging()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    args.tokenizer_dir = train_tokenizer(workdir / "tokenizer", args.tokenizer_vocab)
    data = data_build(workdir / "data", args.tokenizer_dir, args.seq_len, args.corpus_bytes)
    print(f"data ready in {time.perf_counter() - started:.0f} s: {data}", flush=True)

    results: dict[str, list[dict]] = {"ours": [], "hf_trainer": []}
    for repeat in range(args.repeats):
        # alternate which side goes first, so neither always gets the warmer machine
        if args.interleave and args.mode == "trainer":
            pair = run_interleaved(args, workdir, data, ours_first=repeat % 2 == 0)
            for side, result in pair.items():
                results[side].append(result)
            continue
        order = ["ours", "hf_trainer"] if repeat % 2 == 0 else ["hf_trainer", "ours"]
        for side in order:
            if side == "ours":
                results["ours"].append(run_ours(args, workdir / "ours-run", data))
            elif args.mode == "trainer":
                results["hf_trainer"].append(run_hf_trainer(args, workdir / "hf-run", data))

    print(json.dumps({"mode": args.mode, "machine": machine(), "settings": {
        k: getattr(args, k) for k in ("preset", "hidden", "layers", "vocab_size", "seq_len", "micro",
                                       "accum", "steps", "warmup", "precision", "compile", "threads", "interleave")
    }, "runs": results}, indent=2))  # fmt: skip
    print(f"\nmachine: {machine()}; best (median) of {args.repeats} runs each, "
          f"{time.perf_counter() - started:.0f} s in all")  # fmt: skip
    for key, unit in (
        ("tokens_per_s", "tokens/s"),
        ("tokens_per_cpu_s", "tokens per CPU s"),
        ("tokens_per_cpu_s_fastest_step", "tokens per CPU s, fastest step"),
    ):
        best = {name: max(r[key] for r in runs) for name, runs in results.items() if runs}
        median = {
            name: statistics.median(r[key] for r in runs) for name, runs in results.items() if runs
        }
        print(f"{unit}:")
        print(f"  ours:       {best['ours']:,.0f} ({median['ours']:,.0f})")
        if "hf_trainer" in best:
            print(f"  HF Trainer: {best['hf_trainer']:,.0f} ({median['hf_trainer']:,.0f})")
            print(
                f"  ours / Trainer: {best['ours'] / best['hf_trainer']:.2f}x best, "
                f"{median['ours'] / median['hf_trainer']:.2f}x median"
            )
    mfus = [r["mfu"] for r in results["ours"] if "mfu" in r]
    if mfus:
        print(f"MFU (ours): {max(mfus):.1%} best, {statistics.median(mfus):.1%} median")


if __name__ == "__main__":
    main()
