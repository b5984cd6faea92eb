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
from llmtrain.stages import Produces, Stage
from llmtrain.train.align.config import (
    DPOSection,
    KTOSection,
    ORPOSection,
    RMSection,
    SFTSection,
    SimPOSection,
)
from llmtrain.train.align.rl_config import (
    GRPOSection,
    GSPOSection,
    OnlineDPOSection,
    PPOSection,
    RLOOSection,
)

FROM_SFT = {"model": "sft"}
FROM_SFT_AND_RM = {"model": "sft", "reward_model": "rm"}
PREFERENCE_CURVES = ("loss", "rewards/margins", "rewards/accuracies", "eval_rewards/accuracies")
GROUP_CURVES = ("reward", "reward_std", "reward_group_zero_std_share", "kl", "loss", "entropy")


def method(
    name: str,
    section: type,
    entry: str,
    *,
    reads: dict[str, str] = FROM_SFT,
    curves: tuple[str, ...] = (),
    produces: Produces = "causal_lm",
) -> Stage:
    """The Stage of `llmtrain align --method NAME`; `entry` is "module:function" of this package."""
    return Stage(
        name=name,
        section=section,
        command=("align", "--method", name),
        reads=reads,
        produces=produces,
        curves=curves,
        entry=f"llmtrain.train.align.{entry}",
    )


STAGES = (
    method(
        "sft", SFTSection, "sft:run_sft", reads={"model": "pretrain"}, curves=("loss", "eval_loss")
    ),
    method(
        "rm",
        RMSection,
        "rm:run_rm",
        produces="reward_model",
        curves=("loss", "eval_accuracy", "accuracy"),
    ),
    method("dpo", DPOSection, "dpo:run_dpo", curves=PREFERENCE_CURVES),
    method(
        "kto",
        KTOSection,
        "kto:run_kto",
        curves=("loss", "rewards/margins", "kl", "eval_rewards/margins"),
    ),
    method(
        "orpo",
        ORPOSection,
        "ref_free:run_orpo",
        curves=("loss", "nll_loss", "log_odds_ratio", "eval_rewards/accuracies"),
    ),
    method("simpo", SimPOSection, "ref_free:run_simpo", curves=PREFERENCE_CURVES),
    method(
        "ppo",
        PPOSection,
        "ppo:run_ppo",
        reads=FROM_SFT_AND_RM,
        curves=("reward/mean", "eval/reward_mean", "kl", "policy_loss", "value_loss", "entropy"),
    ),
    method("grpo", GRPOSection, "grpo:run_grpo", reads=FROM_SFT_AND_RM, curves=GROUP_CURVES),
    method(
        "gspo",
        GSPOSection,
        "grpo:run_gspo",
        reads=FROM_SFT_AND_RM,
        curves=(*GROUP_CURVES[:3], "clip_ratio/region_mean", "loss"),
    ),
    method("rloo", RLOOSection, "grpo:run_rloo", reads=FROM_SFT_AND_RM, curves=GROUP_CURVES),
    method(
        "online_dpo",
        OnlineDPOSection,
        "online_dpo:run_online_dpo",
        reads=FROM_SFT_AND_RM,
        curves=("objective/scores", "objective/scores_margin", "rewards/margins", "objective/kl"),
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
