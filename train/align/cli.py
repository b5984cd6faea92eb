"""`llmtrain align --method METHOD RECIPE`: one subcommand for every post-training method.

A method appears here when it works: METHODS maps its name to the function that runs it,
imported only when that method runs.
"""

from __future__ import annotations

import argparse
import importlib

from llmtrain.cli import add_recipe_arguments, add_run_arguments, load_recipe_from_args

METHODS: dict[str, str] = {
    "sft": "llmtrain.train.align.sft:run_sft",
    "rm": "llmtrain.train.align.rm:run_rm",
    "dpo": "llmtrain.train.align.dpo:run_dpo",
    "ppo": "llmtrain.train.align.ppo:run_ppo",
    "grpo": "llmtrain.train.align.grpo:run_grpo",
}
"""method name -> "module:function"; the function takes (recipe, args)."""


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    if not METHODS:
        return
    parser = commands.add_parser(
        "align",
        help=f"post-train a model: {' | '.join(METHODS)}",
        parents=[common],
    )
    parser.add_argument("--method", required=True, choices=list(METHODS))
    add_recipe_arguments(parser)
    add_run_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    recipe = load_recipe_from_args(args)
    module_name, function_name = METHODS[args.method].split(":")
    getattr(importlib.import_module(module_name), function_name)(recipe, args)
