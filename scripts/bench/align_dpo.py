"""DPO throughput with padding (TRL's DPOTrainer as is) and with our padding-free forward.

    python scripts/bench/align_dpo.py [--steps 20] [--hidden 256] [--layers 4] [--repeats 2] [--threads 1]

One process runs `llmtrain.train.align.dpo.run_dpo` twice on the same preference pairs (chosen
and rejected are docstring slices of varied length, see align_common.py), same model, seed and
batch of --micro pairs; the reference model is a frozen copy of the policy in both runs:

- padded: TRL pads the 2 x micro chosen/rejected sequences to the longest one;
- padding_free: ours (dpo.PaddingFreeForward), the real tokens end to end in one row for the
  policy and the reference forward, position_ids restarting per sequence.

Without flash-attention (CPU, or SDPA on a GPU) that row is attended through a block-diagonal
mask over the whole row, so attention grows with the square of the 2 x micro sequences' total
tokens; padding-free then saves the padded tokens' MLP and LM-head work but pays more
attention. Flash-attention's varlen kernels skip the masked blocks.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from align_common import build_model, doc_slices, report, set_threads, timed_run, write_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    set_threads(args.threads)

    from llmtrain.recipe import validate_recipe
    from llmtrain.train.align.dpo import run_dpo

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_model(work, args.hidden, args.layers)
        texts = doc_slices(args.steps * args.micro * 4, seed=0)
        pairs = [
            {
                "prompt": [
                    {"role": "user", "content": "Explain this part of the standard library."}
                ],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
            for chosen, rejected in zip(texts[0::2], texts[1::2], strict=False)
        ]
        data = write_jsonl(work / "pairs.jsonl", pairs)
        modes = {"padded": {}, "padding_free": {"padding_free": True}}
        results: dict[str, list] = {mode: [] for mode in modes}
        for _ in range(args.repeats):
            for mode, extra in modes.items():
                section = {
                    "model": str(model),
                    "data": [{"path": str(data)}],
                    "validation_split": 0,
                    "max_length": args.max_length,
                    "max_steps": args.steps,
                    "global_batch_size": args.micro,
                    "micro_batch_size": args.micro,
                    "lr": 1e-5,
                    "precision": args.precision,
                    "log_every": 1,
                    "eval_every": 0,
                    "save_every": 0,
                    **extra,
                }
                recipe = validate_recipe(
                    {"name": "bench", "output_dir": str(work / mode), "seed": 0, "dpo": section}
                )
                results[mode].append(timed_run(run_dpo, recipe, args.warmup))
        print(
            f"DPO, {args.steps} steps of {args.micro} pairs, Llama hidden {args.hidden} x "
            f"{args.layers} layers, {args.precision}, reference = frozen copy"
        )
        report(results, baseline="padded")


if __name__ == "__main__":
    main()
