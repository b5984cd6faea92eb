"""Arithmetic problems: a synthetic task with checkable answers, for tests and the demo.

The same problems come as pretraining text, chat SFT records, preference pairs (a correct
answer preferred over a wrong one) and RL prompts with their answers. Answers end with
"The answer is N." so a verifier can read the final number.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

ANSWER_PATTERN = re.compile(r"The answer is (-?\d+)\.")


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def question(self) -> str:
        return f"What is {self.a} {self.op} {self.b}?"

    def solution(self, answer: int | None = None) -> str:
        value = self.answer if answer is None else answer
        return f"{self.a} {self.op} {self.b} = {value}. The answer is {value}."


def make_problems(n: int, seed: int, max_operand: int = 20, ops: str = "+-") -> list[Problem]:
    """`n` distinct problems (as many as exist when fewer), in a seeded random order."""
    rng = random.Random(seed)
    every = [
        Problem(a, op, b)
        for a in range(max_operand + 1)
        for b in range(max_operand + 1)
        for op in ops
    ]
    rng.shuffle(every)
    return every[:n]


def split_problems(problems: list[Problem], held_out: int) -> tuple[list[Problem], list[Problem]]:
    """(train, held out): the last `held_out` problems are kept out of training."""
    return problems[:-held_out], problems[-held_out:]


def wrong_answer(problem: Problem, rng: random.Random) -> int:
    offset = rng.choice([-3, -2, -1, 1, 2, 3, 10])
    return problem.answer + offset


def user_message(problem: Problem) -> dict:
    return {"role": "user", "content": problem.question}


def sft_record(problem: Problem) -> dict:
    return {
        "messages": [user_message(problem), {"role": "assistant", "content": problem.solution()}]
    }


def preference_record(problem: Problem, rng: random.Random) -> dict:
    return {
        "prompt": [user_message(problem)],
        "chosen": [{"role": "assistant", "content": problem.solution()}],
        "rejected": [
            {"role": "assistant", "content": problem.solution(wrong_answer(problem, rng))}
        ],
    }


def prompt_record(problem: Problem) -> dict:
    return {"prompt": [user_message(problem)], "answer": str(problem.answer)}


def pretraining_text(problems: list[Problem]) -> str:
    return "\n".join(f"{p.question} {p.solution()}" for p in problems) + "\n"


def read_answer(text: str) -> int | None:
    """The final answer in a completion, or None when it has none."""
    found = ANSWER_PATTERN.findall(text)
    return int(found[-1]) if found else None
