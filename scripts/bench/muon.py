"""Muon vs AdamW at equal steps: validation loss of pretraining, each at its best lr of a sweep.

    python scripts/bench/muon.py                      # a few minutes on a 2-core CPU
    python scripts/bench/muon.py --steps 200 --adamw-lrs 1e-3,3e-3,1e-2 --muon-lrs 0.01,0.02,0.05

One data build (Python's standard library docs, a byte-level BPE trained here, 5% held out),
one model (llama-tiny widened by --hidden/--layers, same seed), the same batches, schedule
(warmup + cosine), clipping and fp32 precision, all through `run_pretrain` in this process.
AdamW runs once per `--adamw-lrs`; Muon (`pretrain.optimizer: muon`) once per `--muon-lrs`, its
AdamW part (embeddings, head, norms) at the best AdamW lr. Each run's final validation loss
(the same `--eval-batches` windows for all) is printed; the figure is the ratio of the best
of each side, and the difference in nats.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def run(args, workdir: Path, data: Path, name: str, **pretrain) -> float:
    from llmtrain.recipe import validate_recipe
    from llmtrain.train.pretrain import run_pretrain

    recipe = validate_recipe(
        {
            "name": "bench-muon",
            "output_dir": str(workdir / name),
            "seed": 0,
            "model": {
                "preset": "llama-tiny",
                "hidden_size": args.hidden,
                "intermediate_size": args.hidden * 8 // 3 // 16 * 16,
                "num_layers": args.layers,
            },
            "pretrain": {
                "data": str(data),
                "steps": args.steps,
                "global_batch_size": args.batch,
                "micro_batch_size": args.batch,
                "precision": "fp32",
                "warmup_steps": args.steps // 20,
                "log_every": args.steps,
                "eval_every": 0,
                "eval_batches": args.eval_batches,
                "save_every": 0,
                **pretrain,
            },
        }
    )
    started = time.perf_counter()
    result = run_pretrain(recipe)
    loss = result.last_metrics["val_loss"]
    print(f"{name:28s} val_loss {loss:.4f}  ({time.perf_counter() - started:.0f} s)", flush=True)
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-bytes", type=int, default=1_500_000)
    parser.add_argument("--eval-batches", type=int, default=16)
    parser.add_argument("--adamw-lrs", default="3e-4,1e-3,2e-3,3e-3")
    parser.add_argument("--muon-lrs", default="0.02,0.05,0.1,0.2")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    from tests.conftest import build_tiny_tokenizer
    from tests.pretrain_support import build_data

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tokenizer = build_tiny_tokenizer(workdir / "tokenizer", vocab_size=512)
        data = build_data(workdir / "data", tokenizer, args.seq_len, max_bytes=args.max_bytes)
        adamw = {
            lr: run(args, workdir, data, f"adamw lr {lr:g}", lr=lr)
            for lr in map(float, args.adamw_lrs.split(","))
        }
        best_lr = min(adamw, key=adamw.get)
        muon = {
            lr: run(
                args,
                workdir,
                data,
                f"muon muon_lr {lr:g}",
                optimizer="muon",
                muon_lr=lr,
                lr=best_lr,
            )
            for lr in map(float, args.muon_lrs.split(","))
        }
    best_muon = min(muon, key=muon.get)
    machine = platform.processor() or platform.machine()
    print(
        f"\n{args.steps} steps x {args.batch} x {args.seq_len} tokens, llama-tiny hidden "
        f"{args.hidden} x {args.layers} layers, {machine} CPU, {torch.get_num_threads()} threads"
    )
    print(f"AdamW best: lr {best_lr:g}, val_loss {adamw[best_lr]:.4f}")
    print(f"Muon best:  muon_lr {best_muon:g} (AdamW part at lr {best_lr:g}), ", end="")
    print(f"val_loss {muon[best_muon]:.4f}")
    print(
        f"Muon / AdamW validation loss: {muon[best_muon] / adamw[best_lr]:.4f} "
        f"({muon[best_muon] - adamw[best_lr]:+.4f} nats)"
    )


if __name__ == "__main__":
    main()
