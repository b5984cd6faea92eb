"""Pretraining throughput: our loop vs Hugging Face `Trainer`, and MFU of a ~1B Llama on a GPU.

    python scripts/bench/pretrain.py trainer              # CPU or GPU: ours vs Trainer, one process
    python scripts/bench/pretrain.py mfu                  # GPU: llama-1b, bf16, seq 2048

`trainer`: one data build (Python's standard library docs, a byte-level BPE trained here), one
model (a Llama preset, same seed), the same batch (micro-batch x accumulation), optimizer (fused
AdamW, no decay on norms/embeddings), schedule (warmup + cosine), clipping and precision. Ours
is `llmtrain.train.pretrain.run_pretrain` reading the data build; `Trainer` reads the same
windows from a `datasets.Dataset`. Each side runs `--repeats` times alternately; tokens/s is
timed over the steps after `--warmup` (setup, checkpoints and the final save are excluded for
both) and the best repeat is reported.

`mfu`: `run_pretrain` on llama-1b (Llama 3.2 1B shapes, 128256-row vocabulary) in bf16 with
sequences of 2048 on one GPU; prints tokens/s and MFU (6N + attention FLOPs per token over the
device's peak from llmtrain.train.flops, or --peak-tflops).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

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


def run_ours(args, workdir: Path, data: Path) -> dict:
    from llmtrain.train.pretrain import release_accelerator, run_pretrain
    from tests.pretrain_support import read_records

    release_accelerator()
    recipe = recipe_for(args, workdir, data)
    result = run_pretrain(recipe, overwrite=True)
    records = [r for r in read_records(result.run_dir) if "step_time_s" in r]
    timed = [r for r in records if r["step"] > args.warmup]
    seconds = sum(r["step_time_s"] for r in timed)
    tokens = len(timed) * args.micro * args.accum * args.seq_len
    out = {"tokens_per_s": tokens / seconds, "final_loss": records[-1]["loss"]}
    mfus = [r["mfu"] for r in timed if "mfu" in r]
    if mfus:
        out["mfu"] = statistics.median(mfus)
    release_accelerator()
    return out


def run_hf_trainer(args, workdir: Path, data: Path) -> dict:
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

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: dict[int, float] = {}

        def on_step_end(self, arguments, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times[state.global_step] = time.perf_counter()

    timer = StepTimer()
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
        seed=0,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, callbacks=[timer])
    trainer.train()
    seconds = timer.times[args.steps] - timer.times[args.warmup]
    tokens = (args.steps - args.warmup) * args.micro * args.accum * args.seq_len
    release_accelerator()
    return {"tokens_per_s": tokens / seconds}


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
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start")
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--corpus-bytes", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
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
        order = ["ours", "hf_trainer"] if repeat % 2 == 0 else ["hf_trainer", "ours"]
        for side in order:
            if side == "ours":
                results["ours"].append(run_ours(args, workdir / "ours-run", data))
            elif args.mode == "trainer":
                results["hf_trainer"].append(run_hf_trainer(args, workdir / "hf-run", data))

    best = {
        name: max(runs, key=lambda r: r["tokens_per_s"]) for name, runs in results.items() if runs
    }
    print(json.dumps({"mode": args.mode, "machine": machine(), "settings": {
        k: getattr(args, k) for k in ("preset", "hidden", "layers", "vocab_size", "seq_len", "micro",
                                       "accum", "steps", "warmup", "precision", "compile")
    }, "runs": results}, indent=2))  # fmt: skip
    median = {
        name: statistics.median(r["tokens_per_s"] for r in runs)
        for name, runs in results.items()
        if runs
    }
    print(f"\nmachine: {machine()}; best (median) of {args.repeats} runs each")
    print(
        f"ours:       {best['ours']['tokens_per_s']:,.0f} ({median['ours']:,.0f}) tokens/s", end=""
    )
    print(f"   MFU {best['ours']['mfu']:.1%}" if "mfu" in best["ours"] else "")
    if "hf_trainer" in best:
        hf = best["hf_trainer"]["tokens_per_s"]
        print(f"HF Trainer: {hf:,.0f} ({median['hf_trainer']:,.0f}) tokens/s")
        print(
            f"ours / Trainer: {best['ours']['tokens_per_s'] / hf:.2f}x best, "
            f"{median['ours'] / median['hf_trainer']:.2f}x median"
        )


if __name__ == "__main__":
    main()
