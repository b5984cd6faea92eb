"""The demo pipeline run by `make demo`: every stage of recipes/tiny.yaml, then the report.

1. scripts/collect_corpus.py collects the corpus on this machine (runs/corpus/): Python's
   standard library documentation and source, arithmetic problems, chats, preference pairs,
   RL prompts and 100 held-out problems.
2. `llmtrain run recipes/tiny.yaml`: tokenizer, data, pretrain, sft, rm, dpo, ppo, grpo, each
   model evaluated (perplexity, held-out arithmetic) as its stage finishes, then the report.
   A second `make demo` skips the stages that finished; an interrupted one resumes.
3. The eval table, and the demo's checks: SFT answers more held-out problems than the
   pretrained model, none of DPO, PPO and GRPO is worse than SFT on the same problems beyond
   chance (an exact one-sided McNemar test at 5%: on 100 problems a one- or two-problem dip is
   noise, and the figures move that much from machine to machine), and the reward model and
   DPO rank at least 80% of held-out preference pairs right.

The settings that pass on a 2-core CPU in about 10 minutes (recipes/tiny.yaml says why each is
what it is): pretraining text with the worked column arithmetic (the digit facts; SFT alone
on 4 layers left single-digit slips and post-training lost accuracy), SFT 450 steps, RPO
(DPO + the chosen answers' NLL) at beta 0.5, GRPO at 5e-5.
"""

from __future__ import annotations

import json
import math
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


def held_out_pair_accuracy(stage: str, key: str) -> float | None:
    """The last held-out preference accuracy a stage logged (metrics.jsonl), if any."""
    path = OUTPUT / stage / "metrics.jsonl"
    if not path.is_file():
        return None
    found = None
    for line in path.read_text().splitlines():
        found = json.loads(line).get(key, found)
    return found


def per_problem(stage: str) -> dict[str, bool]:
    """prompt -> answered right, from the eval's samples of `stage`."""
    path = OUTPUT / "eval" / "samples" / f"{stage}-{TASK}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {json.dumps(row["prompt"]): bool(row["correct"]) for row in rows}


def worse_beyond_chance(lost: int, gained: int, level: float = 0.05) -> bool:
    """Exact one-sided McNemar test: is losing `lost` problems while gaining `gained` unlikely
    (p < level) if the two models were equally good?"""
    n = lost + gained
    p_value = sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n if n else 1.0
    return p_value < level


def check(found: dict[str, float], pairs: dict[str, float | None]) -> list[str]:
    """What the demo promises, as failed statements."""
    problems = []
    if "sft" in found and "pretrain" in found and not found["sft"] > found["pretrain"]:
        problems.append(f"sft {found['sft']:.2f} is not above pretrain {found['pretrain']:.2f}")
    for stage in ("dpo", "ppo", "grpo"):
        if stage not in found or "sft" not in found:
            continue
        before, after = per_problem("sft"), per_problem(stage)
        lost = sum(before[p] and not after[p] for p in before)
        gained = sum(after[p] and not before[p] for p in before)
        if worse_beyond_chance(lost, gained):
            problems.append(
                f"{stage} {found[stage]:.2f} is worse than sft {found['sft']:.2f} beyond chance "
                f"(it lost {lost} of sft's problems and solved {gained} new ones)"
            )
    for stage, accuracy in pairs.items():
        if accuracy is not None and accuracy < 0.8:
            problems.append(f"{stage} ranks {accuracy:.2f} of held-out pairs right, under 0.80")
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
    pairs = {
        "rm": held_out_pair_accuracy("rm", "eval_accuracy"),
        "dpo": held_out_pair_accuracy("dpo", "eval_rewards/accuracies"),
    }
    print(
        "held-out preference pairs ranked right: "
        + ", ".join(f"{stage} {value:.2f}" for stage, value in pairs.items() if value is not None)
    )
    problems = check(found, pairs)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; report: "
          f"{OUTPUT / 'report' / 'report.md'}")  # fmt: skip
    if problems:
        sys.exit("demo: " + "; ".join(problems))


if __name__ == "__main__":
    main()
