"""The demo pipeline run by `make demo`: every stage of recipes/tiny.yaml, then the report.

1. scripts/collect_corpus.py collects the corpus on this machine (runs/corpus/): Python's
   standard library documentation and source, arithmetic problems, chats, preference pairs,
   RL prompts and 100 held-out problems.
2. `llmtrain run recipes/tiny.yaml`: tokenizer, data, pretrain, sft, rm, dpo, ppo, grpo, each
   model evaluated (perplexity, held-out arithmetic) as its stage finishes, then the report.
   A second `make demo` skips the stages that finished; an interrupted one resumes.
3. The eval table, and a check that SFT answers more held-out problems than the pretrained
   model and that DPO, PPO and GRPO keep at least SFT's accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny.yaml"
CORPUS = REPO / "runs" / "corpus"
OUTPUT = REPO / "runs" / "tiny-demo"
TASK = "arithmetic"


def run(command: list[str]) -> None:
    print(f"\n$ {' '.join(command)}", flush=True)
    # passive OpenMP waiting: spinning threads make a 2-core machine with other load crawl
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}
    result = subprocess.run(command, cwd=REPO, env=env)
    if result.returncode != 0:
        sys.exit(f"demo: `{' '.join(command)}` failed (exit {result.returncode})")


def accuracies() -> dict[str, float]:
    found = {}
    for stage in ("pretrain", "sft", "dpo", "ppo", "grpo"):
        path = OUTPUT / "eval" / f"{stage}.json"
        if path.is_file():
            found[stage] = json.loads(path.read_text())["tasks"][TASK]["exact_match"]
    return found


def check(found: dict[str, float]) -> list[str]:
    """What the demo promises about held-out accuracy, as failed statements."""
    problems = []
    if "sft" in found and "pretrain" in found and not found["sft"] > found["pretrain"]:
        problems.append(f"sft {found['sft']:.2f} is not above pretrain {found['pretrain']:.2f}")
    for stage in ("dpo", "ppo", "grpo"):
        if stage in found and "sft" in found and found[stage] < found["sft"]:
            problems.append(f"{stage} {found[stage]:.2f} is below sft {found['sft']:.2f}")
    return problems


def main() -> None:
    start = time.perf_counter()
    run([sys.executable, str(REPO / "scripts" / "collect_corpus.py"), str(CORPUS)])
    run([sys.executable, "-m", "llmtrain", "run", str(RECIPE)])
    print(f"\n{(OUTPUT / 'eval' / 'results.md').read_text()}")
    found = accuracies()
    print(
        "held-out arithmetic accuracy: "
        + ", ".join(f"{stage} {value:.2f}" for stage, value in found.items())
    )
    problems = check(found)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; report: "
          f"{OUTPUT / 'report' / 'report.md'}")  # fmt: skip
    if problems:
        sys.exit("demo: " + "; ".join(problems))


if __name__ == "__main__":
    main()
