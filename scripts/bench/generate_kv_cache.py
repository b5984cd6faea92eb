"""`generate` tokens/s of a saved final/ before and after the KV cache was switched on.

    python scripts/bench/generate_kv_cache.py [--preset llama-125m] [--new-tokens 128]

The model is the preset built as pretraining builds it (`build_config`: use_cache false),
randomly initialised, saved twice: "before" as final/ was written until 2026-12-02 (the
pretraining stage set config.use_cache true, but generation_config.json kept the false it was
created with, so `generate` re-fed the whole sequence at every token), "after" by
RunDir.save_final (both true). Each is loaded with `from_pretrained` and runs plain
`model.generate(ids, do_sample=False, max_new_tokens=N, min_new_tokens=N)` on the same
prompts, as a user's code would; both must give the same tokens. Runs alternate, best of
--repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="llama-125m")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from llmtrain.rundir import RunDir
    from llmtrain.train.config import ModelSection
    from llmtrain.train.models import build_config

    torch.manual_seed(0)
    config = build_config(ModelSection(preset=args.preset), vocab_size=args.vocab)
    model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(args.vocab, (args.batch, args.prompt_tokens))
    results: dict[str, list[float]] = {"before": [], "after": []}
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        model.config.use_cache = True  # as the pretraining stage did; generation_config kept False
        model.save_pretrained(before)
        after = RunDir(Path(tmp) / "run").save_final(lambda d: model.save_pretrained(d))
        models = {
            name: AutoModelForCausalLM.from_pretrained(path).eval()
            for name, path in (("before", before), ("after", after))
        }
        print(
            f"{args.preset}: {params / 1e6:.0f} M parameters; generation_config use_cache "
            + ", ".join(f"{n} {m.generation_config.use_cache}" for n, m in models.items())
        )
        for repeat in range(args.repeats):
            order = ["before", "after"] if repeat % 2 == 0 else ["after", "before"]
            for name in order:
                with torch.no_grad():
                    start = time.perf_counter()
                    out = models[name].generate(
                        ids,
                        do_sample=False,
                        max_new_tokens=args.new_tokens,
                        min_new_tokens=args.new_tokens,
                    )
                    seconds = time.perf_counter() - start
                results[name].append(seconds)
                outputs[name] = out
                print(
                    f"  {name}: {args.batch * args.new_tokens / seconds:.1f} tokens/s", flush=True
                )
    assert torch.equal(outputs["before"], outputs["after"]), "the two generations differ"
    rate = {n: args.batch * args.new_tokens / min(s) for n, s in results.items()}
    print(
        f"generate, batch {args.batch}, prompt {args.prompt_tokens} + {args.new_tokens} new "
        f"tokens, greedy, fp32, torch {torch.get_num_threads()} threads: before "
        f"{rate['before']:.1f} tokens/s, after {rate['after']:.1f} tokens/s, "
        f"x{rate['after'] / rate['before']:.1f} (best of {args.repeats}; same tokens; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    main()
