"""Collect the demo corpus on this machine: nothing is downloaded.

    python scripts/collect_corpus.py runs/corpus

writes
    stdlib_docs.jsonl     docstrings of Python's standard library (documentation text)
    stdlib_source.jsonl   standard library source files (code), capped by --source-mb
    arithmetic.jsonl      arithmetic problems with their answers, as pretraining text
    sft.jsonl             the same problems as chats {"messages": [...]} whose answers work
                          the sum out column by column, for SFT
    preferences.jsonl     {"prompt", "chosen", "rejected"} pairs for the reward model: the
                          worked solution over a wrong guess
    preferences_near_miss.jsonl  pairs for DPO on larger problems (an operand of 50 to 99,
                          in no other file): the worked solution over a near miss, the same
                          steps with a slip in the ones column
    prompts.jsonl         {"prompt", "answer"} for PPO and GRPO
    eval_arithmetic.jsonl 500 held-out problems {"prompt", "answer"}, in no training file
    eval_preferences.jsonl  a pair of the reward model's kind for each held-out problem
    eval_near_miss.jsonl  500 held-out near-miss pairs of DPO's kind
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from llmtrain.data_pipeline import arithmetic
from llmtrain.data_pipeline.stdlib_corpus import iter_documents, write_jsonl


def collect(
    out_dir: Path, source_mb: float, seed: int = 1234, held_out: int = 500, near_misses: int = 3500
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "stdlib_docs.jsonl", iter_documents("docs"))
    write_jsonl(
        out_dir / "stdlib_source.jsonl", iter_documents("source", max_bytes=int(source_mb * 2**20))
    )
    # operands up to 49, no negative results: 3775 problems, each written out as worked column
    # arithmetic (the digit facts the model must know are learnt in pretraining; SFT teaches
    # the chat format); 500 held out, enough to tell a 10-point gain from noise
    problems = arithmetic.make_problems(10**6, seed=seed, max_operand=49, non_negative=True)
    train, evaluation = arithmetic.split_problems(problems, held_out)
    lines = [f"{p.question} {p.worked_solution()}" for p in train]
    write_jsonl(
        out_dir / "arithmetic.jsonl",
        ("\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)),
    )
    rng = random.Random(seed)
    write_jsonl_records(
        out_dir / "sft.jsonl", [arithmetic.sft_record(p, worked=True) for p in train]
    )
    write_jsonl_records(
        out_dir / "preferences.jsonl",
        [arithmetic.preference_record(p, rng, worked=True) for p in train],
    )
    write_jsonl_records(out_dir / "prompts.jsonl", [arithmetic.prompt_record(p) for p in train])
    write_jsonl_records(
        out_dir / "eval_arithmetic.jsonl", [arithmetic.prompt_record(p) for p in evaluation]
    )
    write_jsonl_records(
        out_dir / "eval_preferences.jsonl",
        [arithmetic.preference_record(p, rng, worked=True) for p in evaluation],
    )
    # near misses for DPO on problems that no other file has (an operand of 50 to 99): SFT
    # ranks about 85% of them right, where it ranks 99% of those of its own problems right
    larger = [
        p
        for p in arithmetic.make_problems(10**6, seed=seed + 1, max_operand=99, non_negative=True)
        if max(p.a, p.b) >= 50
    ]
    near_miss_train, near_miss_eval = arithmetic.split_problems(larger[:near_misses], held_out)
    write_jsonl_records(
        out_dir / "preferences_near_miss.jsonl",
        [arithmetic.preference_record(p, rng, slip=True) for p in near_miss_train],
    )
    write_jsonl_records(
        out_dir / "eval_near_miss.jsonl",
        [arithmetic.preference_record(p, rng, slip=True) for p in near_miss_eval],
    )


def write_jsonl_records(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--source-mb", type=float, default=4.0, help="cap on stdlib source text")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    collect(args.out_dir, args.source_mb, args.seed)
    for path in sorted(args.out_dir.glob("*.jsonl")):
        print(f"{path}  {path.stat().st_size / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
