"""`llmtrain pretrain RECIPE`: pretrain the recipe's `model` on its data build.

    llmtrain pretrain recipes/tiny.yaml
    torchrun --nproc-per-node 8 -m llmtrain pretrain recipe.yaml --resume

Light module: torch and transformers are imported only when the command runs.
"""

from __future__ import annotations

import argparse

from llmtrain.cli import add_recipe_arguments, add_run_arguments, load_recipe_from_args


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "pretrain",
        help="pretrain a model (clm, mlm or span) on the data build; DDP or DeepSpeed ZeRO "
        "under torchrun",
        parents=[common],
    )
    add_recipe_arguments(parser)
    add_run_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    recipe = load_recipe_from_args(args)
    from llmtrain.train.pretrain import run_pretrain

    run_pretrain(recipe, resume=args.resume, overwrite=args.overwrite)
