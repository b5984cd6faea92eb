"""Step time of PPO (ours) and GRPO (TRL's GRPOTrainer behind our recipe), split into
generation, scoring and the update, on the same tiny model and prompts; generation tokens/s.

    python scripts/bench/align_rl.py [--steps 6] [--warmup 2] [--repeats 2] [--hidden 128]
        [--layers 4] [--completions 32] [--max-new-tokens 32] [--threads 1] [--clock cpu]

One process builds a Llama of --hidden x --layers with the tests' byte-level BPE (chatml),
fine-tunes it on small sums (tests/rl_support.py: "What is a + b?" answered "a + b = c.", a
third of the time followed by "The answer is c."), makes a reward model from it (the policy's
body with a new scalar head) and then runs `llmtrain align --method ppo` and `--method grpo`
alternately, --repeats times each, on the 36 sum prompts. Both sample --completions
completions per step (PPO: one per prompt of a rollout batch; GRPO: groups of 4), up to
--max-new-tokens, at temperature 1, and score them with answer_match + the reward model.

- PPO, one iteration: generation; scoring; `reference` = the old policy's, the reference's
  and the value model's forward over the rollout, the KL-penalised rewards and GAE; `update`
  = --ppo-epochs passes of one minibatch (policy + value model forward/backward, AdamW).
- GRPO, one optimizer step: generation; scoring; the rest (TRL: the reference's forward,
  advantages, the policy's forward/backward, AdamW).

The phases come from the runs' own metrics (time/generation, time/scoring, time/reference,
time/update, time/training, generation_tokens_per_s). With --clock cpu (the default) the
stopwatch both methods use reads the process CPU time instead of the wall clock: with
--threads 1 that is the cost of the work itself, which other jobs on a shared machine do not
change; --clock wall gives wall-clock seconds. Per phase the median over the steps after the
--warmup ones and over the repeats is printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from align_common import REPO, build_model, machine, set_threads

sys.path.insert(0, str(REPO))


def reward_model(policy: Path, out: Path) -> Path:
    """The policy's body with a fresh scalar head, saved as a sequence classifier."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def use_clock(kind: str) -> None:
    from llmtrain.train.align import ppo_core

    if kind == "cpu":
        ppo_core.Stopwatch._now = lambda self: time.process_time()


def run_method(method: str, work: Path, policy: Path, rm: Path, prompts: Path, args) -> list:
    from llmtrain.recipe import validate_recipe
    from llmtrain.rundir import read_metrics
    from llmtrain.train.align.grpo import run_grpo
    from llmtrain.train.align.ppo import run_ppo

    section = {
        "model": str(policy),
        "data": [{"path": str(prompts)}],
        "validation_split": 0,
        "rewards": [
            {"type": "answer_match", "pattern": r"The answer is (-?\d+)\."},
            {"type": "reward_model", "path": str(rm), "weight": 0.5, "batch_size": 32},
        ],
        "max_new_tokens": args.max_new_tokens,
        "max_steps": args.warmup + args.steps,
        "lr": 1e-5,
        "precision": "fp32",
        "warmup_steps": 0,
        "log_every": 1,
        "eval_every": 0,
        "save_every": 0,
        "micro_batch_size": args.micro,
    }
    if method == "ppo":
        section.update(
            rollout_batch_size=args.completions,
            global_batch_size=args.completions,
            ppo_epochs=args.ppo_epochs,
        )
    else:
        section.update(num_generations=4, global_batch_size=args.completions, beta=0.04)
    out = work / f"run-{method}"
    recipe = validate_recipe(
        {"name": "bench-rl", "output_dir": str(out), "seed": 0, method: section}
    )
    (run_ppo if method == "ppo" else run_grpo)(
        recipe, argparse.Namespace(resume=None, overwrite=True)
    )
    records = read_metrics(recipe.stage_dir(method) / "metrics.jsonl")
    steps = [r for r in records if "time/generation" in r]
    return steps[args.warmup :]


def summarise(records: list[dict], method: str) -> dict[str, float]:
    def median(key: str) -> float:
        return statistics.median(r[key] for r in records)

    if method == "ppo":
        rest = {"ppo_reference": median("time/reference"), "ppo_epochs": median("time/update")}
        update = statistics.median(r["time/reference"] + r["time/update"] for r in records)
        length = median("response_length")
    else:
        rest = {}
        update = median("time/training")
        length = median("completions/mean_length")
    return {
        "generation": median("time/generation"),
        "scoring": median("time/scoring"),
        "update": update,
        "step": median("time/step"),
        "tokens_per_s": median("generation_tokens_per_s"),
        "length": length,
        **rest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out at the start")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--completions", type=int, default=32, help="completions per step")
    parser.add_argument("--micro", type=int, default=16, help="sequences per forward/backward")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--ppo-epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args()
    set_threads(args.threads)
    use_clock(args.clock)

    from tests.rl_support import problems, sft_policy, write_prompts

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = build_model(work, args.hidden, args.layers)
        policy = sft_policy(base, work / "policy", steps=args.sft_steps)
        rm = reward_model(policy, work / "rm")
        prompts = write_prompts(work / "prompts.jsonl", problems())
        results: dict[str, list[dict]] = {"ppo": [], "grpo": []}
        for _ in range(args.repeats):
            for method in results:
                results[method].extend(run_method(method, work, policy, rm, prompts, args))
    summary = {method: summarise(records, method) for method, records in results.items()}
    unit = "CPU s" if args.clock == "cpu" else "s"
    print(f"machine: {machine()}; clock: {args.clock}; {time.perf_counter() - started:.0f} s")
    print(
        f"Llama hidden {args.hidden} x {args.layers} layers, {args.completions} completions per "
        f"step (<= {args.max_new_tokens} new tokens), PPO {args.ppo_epochs} epoch(s) of one "
        f"minibatch, GRPO groups of 4; median of {args.steps} steps x {args.repeats} runs"
    )
    header = (
        f"{'method':>6} {'generation':>11} {'scoring':>9} {'update':>9} {'step':>9} "
        f"{'gen share':>9} {'tokens/' + unit:>14} {'mean length':>11}"
    )
    print(header)
    for method, r in summary.items():
        print(
            f"{method:>6} {r['generation']:11.3f} {r['scoring']:9.3f} {r['update']:9.3f} "
            f"{r['step']:9.3f} {r['generation'] / r['step']:9.1%} {r['tokens_per_s']:14.0f} "
            f"{r['length']:11.1f}"
        )
    ppo = summary["ppo"]
    print(
        f"PPO update = reference pass {ppo['ppo_reference']:.3f} + PPO epochs "
        f"{ppo['ppo_epochs']:.3f} "
        f"({unit} per step)"
    )
    print(
        "GRPO / PPO: "
        + ", ".join(
            f"{key} {summary['grpo'][key] / summary['ppo'][key]:.2f}x"
            for key in ("generation", "scoring", "update", "step")
        )
    )


if __name__ == "__main__":
    main()
