"""`llmtrain eval`, `llmtrain generate` and `llmtrain chat`."""

from __future__ import annotations

import argparse
import json
import sys

from llmtrain.cli import add_recipe_arguments, load_recipe_from_args
from llmtrain.stages import Stage
from llmtrain.train.evaluate.config import EvalSection

STAGES = (Stage("eval", EvalSection, ("eval",), produces="eval", repeatable=False),)


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="perplexity and tasks (multiple choice, generation) for the recipe's models",
        parents=[common],
    )
    add_recipe_arguments(evaluate)
    evaluate.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="STAGE_OR_DIR",
        help="evaluate this stage's final model or this directory (repeatable); "
        "default: eval.models, else every stage with a final model",
    )
    evaluate.set_defaults(func=_run_eval)

    generate = commands.add_parser(
        "generate", help="complete prompts with a model directory", parents=[common]
    )
    generate.add_argument("model", help="Hugging Face model directory (with tokenizer)")
    generate.add_argument("prompts", nargs="*", help="prompts (default: one per line on stdin)")
    generate.add_argument("--prompt-file", help="jsonl with a 'prompt' per record, or text lines")
    _add_prompt_format(generate)
    _add_decoding_arguments(generate)
    generate.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    generate.set_defaults(func=_run_generate)

    chat = commands.add_parser(
        "chat", help="talk to a model directory (chat template, streamed)", parents=[common]
    )
    chat.add_argument("model", help="Hugging Face model directory (with tokenizer)")
    chat.add_argument("--system", help="system message")
    _add_decoding_arguments(chat, default_strategy="sample", default_temperature=0.7)
    chat.set_defaults(func=_run_chat)


def _add_prompt_format(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--chat",
        dest="chat",
        action="store_true",
        default=None,
        help="render prompts with the chat template (default when it has one)",
    )
    group.add_argument("--plain", dest="chat", action="store_false", help="plain text prompts")


def _add_decoding_arguments(
    parser: argparse.ArgumentParser,
    default_strategy: str = "greedy",
    default_temperature: float = 1.0,
) -> None:
    group = parser.add_argument_group("decoding")
    group.add_argument(
        "--strategy",
        default=default_strategy,
        choices=["greedy", "sample", "beam", "best_of_n", "self_consistency"],
    )
    group.add_argument("--max-new-tokens", type=int, default=128)
    group.add_argument("--temperature", type=float, default=default_temperature)
    group.add_argument("--top-k", type=int, default=0)
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--num-beams", type=int, default=4)
    group.add_argument(
        "--n", type=int, default=8, help="candidates for best_of_n / self_consistency"
    )
    group.add_argument(
        "--reward-model", help="reward model directory that ranks best_of_n candidates"
    )
    group.add_argument("--answer-pattern", help="regex whose first group is the final answer")
    group.add_argument("--seed", type=int, default=0)


def _decoding_from_args(args: argparse.Namespace):
    from llmtrain.recipe import validate_section
    from llmtrain.train.evaluate.generation import DecodingSection

    values = {
        "strategy": args.strategy,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "num_beams": args.num_beams,
        "n": args.n,
        "reward_model": args.reward_model,
        "answer_pattern": args.answer_pattern,
    }
    return validate_section(DecodingSection, values, source="command line")


def _run_eval(args: argparse.Namespace) -> None:
    from llmtrain.train.evaluate.runner import evaluate_recipe, write_table

    recipe = load_recipe_from_args(args)
    evaluate_recipe(recipe, args.models)
    sys.stdout.write(write_table(recipe.stage_dir("eval")))


def _read_prompts(args: argparse.Namespace) -> list:
    if args.prompt_file:
        from pathlib import Path

        from llmtrain.data_pipeline.readers import iter_records

        path = Path(args.prompt_file)
        if path.suffix in (".jsonl", ".json"):
            return [record["prompt"] for _, record in iter_records(path)]
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if args.prompts:
        return list(args.prompts)
    return [line for line in sys.stdin.read().splitlines() if line.strip()]


def _run_generate(args: argparse.Namespace) -> None:
    from llmtrain.runtime import seed_everything
    from llmtrain.train.evaluate.generation import decode, load_causal_lm

    settings = _decoding_from_args(args)
    model, tokenizer = load_causal_lm(args.model)
    chat = bool(tokenizer.chat_template) if args.chat is None else args.chat
    scorer = _scorer(settings)
    seed_everything(args.seed)
    prompts = _read_prompts(args)
    for prompt, output in zip(
        prompts, decode(model, tokenizer, prompts, settings, chat=chat, scorer=scorer)
    ):
        if args.json:
            print(
                json.dumps(
                    {
                        "prompt": prompt,
                        "completion": output.text,
                        "answer": output.answer,
                        "candidates": [c.__dict__ for c in output.candidates],
                    },
                    ensure_ascii=False,
                )
            )
        else:
            print(output.text)


def _scorer(settings):
    if settings.strategy != "best_of_n":
        return None
    from llmtrain.train.evaluate.runner import _scorer as scorer_for

    return scorer_for(settings)


def _run_chat(args: argparse.Namespace) -> None:
    from transformers import TextStreamer

    from llmtrain.runtime import seed_everything
    from llmtrain.train.evaluate.generation import decode, load_causal_lm

    settings = _decoding_from_args(args)
    if settings.strategy not in ("greedy", "sample"):
        settings = settings.model_copy(update={"strategy": "sample"})
    model, tokenizer = load_causal_lm(args.model)
    seed_everything(args.seed)
    history: list[dict[str, str]] = (
        [{"role": "system", "content": args.system}] if args.system else []
    )
    print(
        "chat with the model; /reset clears the conversation, /exit or Ctrl-D leaves",
        file=sys.stderr,
    )
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            history = history[:1] if args.system else []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        (output,) = decode(model, tokenizer, [history], settings, chat=True, streamer=streamer)
        history.append({"role": "assistant", "content": output.text})
