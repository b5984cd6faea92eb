"""SFT throughput with padding (the baseline), padding-free, and packing, on the same data.

    python scripts/bench/align_sft.py [--steps 30] [--hidden 256] [--layers 4] [--repeats 2] [--threads 1]

One process runs `llmtrain.train.align.sft.run_sft` in three modes on the same chat records
(assistant turns are docstring slices of varied length, see align_common.py), same model, seed
and batch of --micro examples:

- padded: each micro-batch padded to its longest example (TRL's default collator);
- padding_free: the micro-batch's examples end to end in one row, position_ids restarting;
- packing xN: N rows of --max-length tokens filled best-fit-decreasing with whole examples,
  fed padding-free (TRL puts the N rows end to end in one row, position_ids restarting). A step
  then holds another number of examples, so compare tokens/s (real tokens, no padding). N is
  each of --packing-rows (default: --micro, the same batch setting as the other modes, and
  --micro / 4, about the tokens of a padded step on this data).

Without flash-attention (CPU, or SDPA on a GPU) the one padding-free row is attended through a
block-diagonal mask over the whole row, so attention costs grow with the square of the row's
tokens rather than of each example's; flash-attention's varlen kernels skip the masked blocks.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from align_common import build_model, doc_slices, report, set_threads, timed_run, write_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--packing-rows", type=int, nargs="+", help="packed rows per step (default: micro, micro/4)"
    )
    args = parser.parse_args()
    packing_rows = args.packing_rows or sorted({args.micro, max(1, args.micro // 4)}, reverse=True)
    set_threads(args.threads)

    from llmtrain.recipe import validate_recipe
    from llmtrain.train.align.sft import run_sft

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_model(work, args.hidden, args.layers)
        records = [
            {
                "messages": [
                    {"role": "user", "content": "Explain this part of the standard library."},
                    {"role": "assistant", "content": text},
                ]
            }
            for text in doc_slices(args.steps * args.micro * 4, seed=0)
        ]
        data = write_jsonl(work / "chats.jsonl", records)
        modes = {
            "padded": {},
            "padding_free": {"padding_free": True},
            **{f"packing x{rows}": {"packing": True, "micro": rows} for rows in packing_rows},
        }
        results: dict[str, list] = {mode: [] for mode in modes}
        for _ in range(args.repeats):
            for mode, extra in modes.items():
                extra = dict(extra)
                micro = extra.pop("micro", args.micro)
                section = {
                    "model": str(model),
                    "data": [{"path": str(data)}],
                    "validation_split": 0,
                    "max_length": args.max_length,
                    "max_steps": args.steps,
                    "global_batch_size": micro,
                    "micro_batch_size": micro,
                    "lr": 1e-4,
                    "precision": args.precision,
                    "log_every": 1,
                    "eval_every": 0,
                    "save_every": 0,
                    **extra,
                }
                out = work / mode.replace(" ", "-")
                recipe = validate_recipe(
                    {"name": "bench", "output_dir": str(out), "seed": 0, "sft": section}
                )
                results[mode].append(timed_run(run_sft, recipe, args.warmup))
        print(
            f"SFT, {args.steps} steps of {args.micro} examples (packing xN: N rows of "
            f"{args.max_length} tokens), Llama hidden {args.hidden} x {args.layers} layers, "
            f"{args.precision}"
        )
        report(results, baseline="padded")


if __name__ == "__main__":
    main()
