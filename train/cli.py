"""`llmtrain pretrain RECIPE`: pretrain the recipe's `model` on its data build.

    llmtrain pretrain recipes/tiny.yaml
    torchrun --nproc-per-node 8 -m llmtrain pretrain recipe.yaml --resume

Light module: torch and transformers are imported only when the command runs.
"""

from __future__ import annotations

import argparse

from llmtrain.cli import (
    add_recipe_arguments,
    add_run_arguments,
    add_stage_argument,
    load_recipe_from_args,
)
from llmtrain.stages import Stage
from llmtrain.train.config import ModelSection, PretrainSection

STAGES = (
    Stage(
        name="pretrain",
        section=PretrainSection,
        command=("pretrain",),
        reads={"data": "data", "model": None},
        extra_sections={"model": ModelSection},
        curves=("loss", "val_loss"),
    ),
)


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "pretrain",
        help="pretrain a model (clm, mlm or span) on the data build; DDP or DeepSpeed ZeRO "
        "under torchrun",
        parents=[common],
    )
    add_recipe_arguments(parser)
    add_stage_argument(parser, "pretrain")
    add_run_arguments(parser)
    parser.set_defaults(func=_run)

    plan = commands.add_parser(
        "plan",
        help="parameters, FLOPs, tokens, predicted loss, memory per GPU (ZeRO 0-3), wall time",
        parents=[common],
    )
    add_recipe_arguments(plan)
    plan.add_argument("--gpus", type=int, default=8, help="GPUs in data parallel (default 8)")
    plan.add_argument(
        "--gpu", default="H100", help="GPU name for its memory and peak FLOP/s (default H100)"
    )
    plan.add_argument("--gpu-memory", type=float, metavar="GIB", help="memory of one GPU")
    plan.add_argument("--peak-tflops", type=float, help="peak TFLOP/s of one GPU")
    plan.add_argument(
        "--mfu", type=float, default=0.4, help="model FLOPs utilisation for the wall time"
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=_plan)


def _run(args: argparse.Namespace) -> None:
    recipe = load_recipe_from_args(args)
    from llmtrain.train.pretrain import run_pretrain

    run_pretrain(recipe, resume=args.resume, overwrite=args.overwrite)


def _plan(args: argparse.Namespace) -> None:
    import json

    from llmtrain.train.plan import format_plan, format_rl_memory, make_plan, rl_memory_plans

    recipe = load_recipe_from_args(args)
    plan = make_plan(
        recipe,
        gpus=args.gpus,
        gpu=args.gpu,
        gpu_memory=args.gpu_memory,
        mfu=args.mfu,
        peak_tflops=args.peak_tflops,
    )
    # the recipe's RL stages: their memory per GPU after the pretraining plan
    rl = rl_memory_plans(recipe, gpus=args.gpus, gpu=args.gpu, gpu_memory=args.gpu_memory)
    if args.json:
        data = json.loads(plan.to_json())
        data["rl_memory"] = [memory.to_dict() for memory in rl]
        print(json.dumps(data, indent=2))
    else:
        print(format_plan(plan) + format_rl_memory(rl, args.gpus, args.gpu))
