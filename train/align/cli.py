"""`llmtrain align --method METHOD RECIPE`: one subcommand for every post-training method.

Each method declares itself once, in STAGES below: its recipe section, the stages it reads from,
what its final/ holds, the curves the report draws, and the function that runs it (imported
only when that method runs). Adding a method is its module plus one entry here.
"""

from __future__ import annotations

import argparse
import importlib

from llmtrain.cli import (
    add_recipe_arguments,
    add_run_arguments,
    add_stage_argument,
    load_recipe_from_args,
)
from llmtrain.stages import Stage
from llmtrain.train.align.config import (
    DPOSection,
    KTOSection,
    ORPOSection,
    RMSection,
    SFTSection,
    SimPOSection,
)
from llmtrain.train.align.rl_config import GRPOSection, PPOSection

STAGES = (
    Stage(
        name="sft",
        section=SFTSection,
        command=("align", "--method", "sft"),
        reads={"model": "pretrain"},
        curves=("loss", "eval_loss"),
        entry="llmtrain.train.align.sft:run_sft",
    ),
    Stage(
        name="rm",
        section=RMSection,
        command=("align", "--method", "rm"),
        reads={"model": "sft"},
        produces="reward_model",
        curves=("loss", "eval_accuracy", "accuracy"),
        entry="llmtrain.train.align.rm:run_rm",
    ),
    Stage(
        name="dpo",
        section=DPOSection,
        command=("align", "--method", "dpo"),
        reads={"model": "sft"},
        curves=("loss", "rewards/margins", "rewards/accuracies", "eval_rewards/accuracies"),
        entry="llmtrain.train.align.dpo:run_dpo",
    ),
    Stage(
        name="kto",
        section=KTOSection,
        command=("align", "--method", "kto"),
        reads={"model": "sft"},
        curves=("loss", "rewards/margins", "kl", "eval_rewards/margins"),
        entry="llmtrain.train.align.kto:run_kto",
    ),
    Stage(
        name="orpo",
        section=ORPOSection,
        command=("align", "--method", "orpo"),
        reads={"model": "sft"},
        curves=("loss", "nll_loss", "log_odds_ratio", "eval_rewards/accuracies"),
        entry="llmtrain.train.align.ref_free:run_orpo",
    ),
    Stage(
        name="simpo",
        section=SimPOSection,
        command=("align", "--method", "simpo"),
        reads={"model": "sft"},
        curves=("loss", "rewards/margins", "rewards/accuracies", "eval_rewards/accuracies"),
        entry="llmtrain.train.align.ref_free:run_simpo",
    ),
    Stage(
        name="ppo",
        section=PPOSection,
        command=("align", "--method", "ppo"),
        reads={"model": "sft", "reward_model": "rm"},
        curves=("reward/mean", "eval/reward_mean", "kl", "policy_loss", "value_loss", "entropy"),
        entry="llmtrain.train.align.ppo:run_ppo",
    ),
    Stage(
        name="grpo",
        section=GRPOSection,
        command=("align", "--method", "grpo"),
        reads={"model": "sft", "reward_model": "rm"},
        curves=("reward", "reward_std", "reward_group_zero_std_share", "kl", "loss", "entropy"),
        entry="llmtrain.train.align.grpo:run_grpo",
    ),
)
METHODS = {stage.name: stage for stage in STAGES}


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "align",
        help=f"post-train a model: {' | '.join(METHODS)}",
        parents=[common],
    )
    parser.add_argument("--method", required=True, choices=list(METHODS))
    add_recipe_arguments(parser)
    add_stage_argument(parser, kind=None)  # the kind is --method
    add_run_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    args.stage_kind = args.method
    recipe = load_recipe_from_args(args)
    module_name, function_name = METHODS[args.method].entry.split(":")
    getattr(importlib.import_module(module_name), function_name)(recipe, args)
