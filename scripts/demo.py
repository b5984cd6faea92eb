"""The demo pipeline run by `make demo`: every stage that exists, on recipes/tiny.yaml.

The corpus is collected on this machine first (scripts/collect_corpus.py -> runs/corpus/).

Each step is an `llmtrain` command, printed before it runs; the first failure stops the demo.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "tiny.yaml")
CORPUS = REPO / "runs" / "corpus"

STEPS: list[list[str]] = [
    ["config", "check", RECIPE],
    ["tokenizer", RECIPE],
    # the mixture in token shards; reruns reuse finished steps, --overwrite takes new settings
    ["data", RECIPE, "--overwrite"],
    ["pretrain", RECIPE, "--overwrite"],
    # after pretraining: chat SFT of pretrain/final, then a reward model and DPO from sft/final
    ["align", "--method", "sft", RECIPE, "--overwrite"],
    ["align", "--method", "rm", RECIPE, "--overwrite"],
    ["align", "--method", "dpo", RECIPE, "--overwrite"],
]


def main() -> None:
    start = time.perf_counter()
    print(f"$ python scripts/collect_corpus.py {CORPUS}", flush=True)
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "collect_corpus.py"), str(CORPUS)], check=True
    )
    for step in STEPS:
        print(f"\n$ llmtrain {shlex.join(step)}", flush=True)
        result = subprocess.run([sys.executable, "-m", "llmtrain", *step], cwd=REPO)
        if result.returncode != 0:
            sys.exit(f"demo: `llmtrain {shlex.join(step)}` failed (exit {result.returncode})")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
