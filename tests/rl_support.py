"""A small RL task for the PPO and GRPO tests: an SFT'd tiny policy that answers sums of small
numbers but only sometimes ends with "The answer is N." (the rewarded form).

The policy is fine-tuned here with plain torch (not with the sft stage), so the RL tests stand
alone. It sees every problem in SFT; RL trains on some prompts and evaluates on the others.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain.data_pipeline.arithmetic import ANSWER_PATTERN, Problem

REWARDED_SHARE = 0.35


def problems() -> list[Problem]:
    every = [Problem(a, "+", b) for a in range(6) for b in range(6)]
    random.Random(0).shuffle(every)
    return every


def split() -> tuple[list[Problem], list[Problem]]:
    every = problems()
    return every[:28], every[28:]


def reply(problem: Problem, rewarded: bool) -> str:
    short = f"{problem.a} + {problem.b} = {problem.answer}."
    return f"{short} The answer is {problem.answer}." if rewarded else short


def prompt_record(problem: Problem) -> dict:
    return {
        "prompt": [{"role": "user", "content": problem.question}],
        "answer": str(problem.answer),
    }


def write_prompts(path: Path, items: list[Problem]) -> Path:
    path.write_text("".join(json.dumps(prompt_record(p)) + "\n" for p in items))
    return path


def sft_policy(base_dir: Path, out_dir: Path, steps: int = 300, seed: int = 0) -> Path:
    """Fine-tune the tiny model on the chats (assistant tokens only) and save it with its
    tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    rng = random.Random(seed)
    examples = []
    for problem in problems():
        for _ in range(5):
            messages = [
                {"role": "user", "content": problem.question},
                {"role": "assistant", "content": reply(problem, rng.random() < REWARDED_SHARE)},
            ]
            out = tokenizer.apply_chat_template(
                messages, return_dict=True, return_assistant_tokens_mask=True
            )
            labels = [t if m else -100 for t, m in zip(out["input_ids"], out["assistant_masks"])]
            examples.append((out["input_ids"], labels))
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = rng.sample(examples, 32)
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((32, width), tokenizer.pad_token_id)
        labels = torch.full((32, width), -100)
        attention = torch.zeros((32, width), dtype=torch.long)
        for row, (x, y) in enumerate(batch):
            ids[row, : len(x)] = torch.tensor(x)
            labels[row, : len(y)] = torch.tensor(y)
            attention[row, : len(x)] = 1
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def copy_policy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def rl_recipe(folder: Path, method: str, policy: Path, **overrides) -> Path:
    """A ppo, grpo (gspo, rloo) or online_dpo recipe on the small-sums task (RL prompts and
    held-out prompts)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    train, held = split()
    section = {
        "model": str(policy),
        "data": [{"path": str(write_prompts(folder / "prompts.jsonl", train))}],
        "validation_data": [{"path": str(write_prompts(folder / "held.jsonl", held))}],
        "rewards": [{"type": "answer_match", "pattern": ANSWER_PATTERN}],
        "max_new_tokens": 16,
        "lr": 3.0e-4,
        "precision": "fp32",
        "warmup_steps": 0,
        "log_every": 1,
    }
    if method == "ppo":
        section.update(
            rollout_batch_size=24,
            global_batch_size=12,
            micro_batch_size=12,
            ppo_epochs=2,
            kl_coef=0.02,
            max_steps=8,
            eval_every=4,
            save_every=4,
        )
    elif method == "online_dpo":
        section.update(
            global_batch_size=32,
            micro_batch_size=16,
            lr=5.0e-4,
            beta=0.1,
            max_steps=8,
            eval_every=0,
            save_every=4,
            validation_data=[],
        )
    else:
        section.update(
            num_generations=4,
            global_batch_size=32,
            micro_batch_size=16,
            lr=5.0e-4,
            beta=0.02,
            max_steps=8,
            eval_every=0,
            save_every=4,
            validation_data=[],
            validation_split=0.0,
        )
    section.update(overrides)
    recipe = {"name": "rl-test", "output_dir": str(folder / "out"), "seed": 3, method: section}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def greedy_reward(model_dir: Path) -> float:
    """Share of held-out prompts whose greedy completion earns the answer_match reward."""
    from llmtrain.answers import extract_answer, is_correct
    from llmtrain.train.evaluate.generation import DecodingSection, decode, load_causal_lm

    _, held = split()
    model, tokenizer = load_causal_lm(model_dir)
    prompts = [prompt_record(p)["prompt"] for p in held]
    outputs = decode(model, tokenizer, prompts, DecodingSection(max_new_tokens=16), chat=True)
    hits = [
        is_correct(extract_answer(o.text, ANSWER_PATTERN), p.answer) for o, p in zip(outputs, held)
    ]
    return sum(hits) / len(hits)


def run_ppo_counting_gathers(recipe_path: str, out_path: str) -> None:
    """Run `align --method ppo` (under torchrun) and write, from rank 0, how many times the
    policy was gathered for generation (ZeRO-3)."""
    from llmtrain.recipe import load_recipe
    from llmtrain.train.align.ppo import PPOTrainer
    from llmtrain.train.align.trl_glue import AlignRun
    from llmtrain.train.loop import TrainingLoop

    recipe = load_recipe(recipe_path)
    section = recipe.section("ppo")
    run = AlignRun(recipe, "ppo", section)
    trainer = PPOTrainer(recipe, section, run)
    TrainingLoop(trainer, run, trainer.accelerator, section).run(resume=None, overwrite=False)
    if run.env.is_main:
        Path(out_path).write_text(
            json.dumps({"gathers": trainer.gathers, "world": trainer.world, "step": trainer.step})
        )


if __name__ == "__main__":
    import sys

    run_ppo_counting_gathers(sys.argv[1], sys.argv[2])
