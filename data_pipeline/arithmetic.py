"""Arithmetic problems: a synthetic task with checkable answers, for tests and the demo.

The same problems come as pretraining text, chat SFT records, preference pairs (a correct
answer preferred over a wrong one) and RL prompts with their answers. Answers end with
"The answer is N." so a verifier can read the final number.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llmtrain.answers import extract_answer

ANSWER_PATTERN = r"The answer is (-?\d+)\."
"""The final answer's regex (recipes/tiny.yaml's rewards and eval use the same)."""


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

    def ones_column(self) -> int:
        """The result of the ones column of `worked_solution` (borrowing 10 when needed)."""
        a_ones, b_ones = self.a % 10, self.b % 10
        if self.op == "+":
            return a_ones + b_ones
        return a_ones + 10 * int(a_ones < b_ones) - b_ones

    def worked_solution(self, slip: int = 0) -> str:
        """Column arithmetic on two-digit operands (subtraction with a >= b), ones then tens:
        "8 + 5 = 13, 1 + 1 + 1 = 3. The answer is 33." Each step is one small fact, which a
        tiny model learns where it cannot learn the whole sum at once. `slip` adds that much
        to the ones column (which must stay >= 0): a plausible wrong answer carried through the
        steps."""
        if not (0 <= self.b <= 99 and 0 <= self.a <= 99) or (self.op == "-" and self.a < self.b):
            raise ValueError(f"no column arithmetic for {self.question!r}")
        if self.ones_column() + slip < 0:
            raise ValueError(
                f"a slip of {slip} makes the ones column of {self.question!r} negative"
            )
        a_tens, a_ones = divmod(self.a, 10)
        b_tens, b_ones = divmod(self.b, 10)
        if self.op == "+":
            ones = a_ones + b_ones + slip
            carry = ones // 10
            tens = a_tens + b_tens + carry
            steps = f"{a_ones} + {b_ones} = {ones}, {a_tens} + {b_tens} + {carry} = {tens}"
            value = tens * 10 + ones % 10
        else:
            borrow = int(a_ones < b_ones)
            ones = a_ones + 10 * borrow - b_ones + slip
            tens = a_tens - b_tens - borrow
            steps = f"{a_ones + 10 * borrow} - {b_ones} = {ones}, {a_tens} - {b_tens} - {borrow} = {tens}"
            value = tens * 10 + ones
        return f"{steps}. The answer is {value}."


def slip_for(problem: Problem, rng: random.Random) -> int:
    """A nonzero error of at most 3 for the ones column, up or down alike (a preference set
    whose wrong answers are all too large teaches a model to answer low)."""
    slip = rng.choice([-3, -2, -1, 1, 2, 3])
    return slip if problem.ones_column() + slip >= 0 else -slip


def make_problems(
    n: int, seed: int, max_operand: int = 20, ops: str = "+-", non_negative: bool = False
) -> list[Problem]:
    """`n` distinct problems (as many as exist when fewer), in a seeded random order;
    `non_negative` leaves out subtractions with a negative result."""
    rng = random.Random(seed)
    every = [
        Problem(a, op, b)
        for a in range(max_operand + 1)
        for b in range(max_operand + 1)
        for op in ops
        if not (non_negative and op == "-" and a < b)
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


def sft_record(problem: Problem, worked: bool = False) -> dict:
    answer = problem.worked_solution() if worked else problem.solution()
    return {"messages": [user_message(problem), {"role": "assistant", "content": answer}]}


def preference_record(
    problem: Problem, rng: random.Random, worked: bool = False, slip: bool = False
) -> dict:
    """The right answer over a wrong one; worked: the worked solution over a wrong guess with
    no steps; slip: the worked solution over the same steps with a slip in the ones column
    (`slip_for`), a near miss that only a model that checks the arithmetic ranks right."""
    if slip:
        chosen, rejected = (
            problem.worked_solution(),
            problem.worked_solution(slip_for(problem, rng)),
        )
    elif worked:
        chosen = problem.worked_solution()
        rejected = problem.solution(wrong_answer(problem, rng))
    else:
        chosen, rejected = problem.solution(), problem.solution(wrong_answer(problem, rng))
    return {
        "prompt": [user_message(problem)],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def prompt_record(problem: Problem) -> dict:
    return {"prompt": [user_message(problem)], "answer": str(problem.answer)}


def pretraining_text(problems: list[Problem]) -> str:
    return "\n".join(f"{p.question} {p.solution()}" for p in problems) + "\n"


def read_answer(text: str) -> int | None:
    """The final answer in a completion (as rewards and eval read it), or None."""
    answer = extract_answer(text, ANSWER_PATTERN)
    return None if answer is None else int(answer)
