"""`llmtrain data RECIPE`: build the recipe's data mixture into token shards.

    llmtrain data recipes/tiny.yaml                 # build, finish an interrupted build, or
                                                    # do nothing when it is complete
    llmtrain data recipes/tiny.yaml --overwrite     # rebuild with changed settings
    llmtrain data recipes/tiny.yaml --verify        # recompute every shard's sha256
    llmtrain data recipes/tiny.yaml --executor ray  # on a Ray started for this build
    llmtrain data recipes/tiny.yaml --executor ray --ray-address auto   # on a running cluster
    llmtrain data train-classifier recipes/tiny.yaml  # train data.filters.quality's model from
                                                    # data.classifier's files

Light module: numpy, transformers and tokenizers are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json

from llmtrain.cli import add_recipe_arguments, add_stage_argument, load_recipe_from_args
from llmtrain.data_pipeline.config import DataSection
from llmtrain.stages import Stage

STAGES = (Stage("data", DataSection, ("data",), reads={"tokenizer": "tokenizer"}, produces="data"),)


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "data",
        help="clean, filter, dedup, decontaminate, mix, tokenize and pack the recipe's sources; "
        "`data train-classifier RECIPE` trains the quality classifier",
        usage="%(prog)s RECIPE [options] | %(prog)s train-classifier RECIPE [--set KEY=VALUE]",
        parents=[common],
    )
    add_recipe_arguments(parser)
    parser.add_argument(
        "classifier_recipe",
        nargs="?",
        metavar="RECIPE",
        help="with `train-classifier` first: the recipe whose data.classifier to train",
    )
    add_stage_argument(parser, "data")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild a build made with other settings (steps whose inputs did not change "
        "are reused)",
    )
    add_run_options(parser)
    parser.add_argument(
        "--verify",
        action="store_true",
        help="build nothing; check the finished build's shards against their sha256",
    )
    parser.set_defaults(func=_run)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--executor and --ray-address (for `llmtrain data` and `llmtrain run`)."""
    parser.add_argument(
        "--executor",
        choices=["local", "ray"],
        help="where the data build runs: a process pool here, or Ray (sets data.executor)",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="the Ray cluster of --executor ray: auto, HOST:PORT of its head, or none to start "
        "a Ray for this build (sets data.ray.address)",
    )


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The recipe overrides (`--set` form) that --executor and --ray-address stand for."""
    overrides = []
    if args.executor:
        overrides.append(f"data.executor={args.executor}")
    if args.ray_address:
        address = None if args.ray_address.lower() in ("none", "null") else args.ray_address
        overrides.append(f"data.ray.address={json.dumps(address)}")
    return overrides


def _run(args: argparse.Namespace) -> None:
    if args.recipe == "train-classifier":
        _train_classifier(args)
        return
    if args.classifier_recipe is not None:
        from llmtrain.errors import RecipeError

        raise RecipeError(
            f"llmtrain data takes one recipe, got {args.recipe} and {args.classifier_recipe}; "
            "to train the quality classifier run `llmtrain data train-classifier RECIPE`"
        )
    args.overrides = [*(args.overrides or []), *run_overrides(args)]
    recipe = load_recipe_from_args(args)
    if args.verify:
        _verify(recipe.stage_dir("data"))
        return
    from llmtrain.data_pipeline.build import build_data

    out = build_data(recipe, overwrite=args.overwrite)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"data build: {out}")


def _train_classifier(args: argparse.Namespace) -> None:
    from llmtrain.errors import RecipeError

    if args.classifier_recipe is None:
        raise RecipeError("llmtrain data train-classifier needs a recipe: RECIPE is missing")
    args.recipe = args.classifier_recipe
    recipe = load_recipe_from_args(args)
    from llmtrain.data_pipeline.quality import train_classifier

    info = train_classifier(recipe)
    held_out = info["held_out"]
    print(
        f"held-out documents: {held_out['positive']} positive, {held_out['negative']} negative; "
        f"AUC {held_out['auc']:.4f}, precision {held_out['precision']:.4f} and recall "
        f"{held_out['recall']:.4f} at score >= {held_out['threshold']}"
    )
    print(f"quality classifier: {info['directory']}")


def _verify(build_dir) -> None:
    from llmtrain.data_pipeline.manifest import read_manifest, verify_shards
    from llmtrain.errors import StageInputError

    manifest = read_manifest(build_dir)
    bad = verify_shards(build_dir, manifest)
    if bad:
        raise StageInputError(
            f"{len(bad)} of the {len(manifest['shards'])} shards of {build_dir} do not match "
            f"the sha256 in its manifest ({', '.join(bad[:5])}); rebuild them with "
            "`llmtrain data RECIPE --overwrite`"
        )
    print(f"ok: the {len(manifest['shards'])} shards of {build_dir} match their sha256")
