"""`llmtrain data RECIPE`: build the recipe's data mixture into token shards.

    llmtrain data recipes/tiny.yaml                 # build, finish an interrupted build, or
                                                    # do nothing when it is complete
    llmtrain data recipes/tiny.yaml --overwrite     # rebuild with changed settings
    llmtrain data recipes/tiny.yaml --verify        # recompute every shard's sha256
    llmtrain data recipes/tiny.yaml --executor ray  # on a Ray started for this build
    llmtrain data recipes/tiny.yaml --executor ray --ray-address auto   # on a running cluster

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
        help="clean, filter, dedup, decontaminate, mix, tokenize and pack the recipe's sources",
        parents=[common],
    )
    add_recipe_arguments(parser)
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
    args.overrides = [*(args.overrides or []), *run_overrides(args)]
    recipe = load_recipe_from_args(args)
    if args.verify:
        _verify(recipe.stage_dir("data"))
        return
    from llmtrain.data_pipeline.build import build_data

    out = build_data(recipe, overwrite=args.overwrite)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"data build: {out}")


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
