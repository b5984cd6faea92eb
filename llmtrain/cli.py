"""The `llmtrain` command.

Each stage registers its own subcommand from a light `cli.py` in its package (listed in
STAGE_COMMANDS) and imports torch, DeepSpeed or TRL only inside the function that runs it, so
`llmtrain --help` and `llmtrain config ...` answer quickly. A user error (`LLMTrainError`)
prints one message and exits with status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from llmtrain import __version__
from llmtrain.errors import LLMTrainError

STAGE_COMMANDS: tuple[str, ...] = (
    "llmtrain.tokenizer.cli",
    "llmtrain.data_pipeline.cli",
    "llmtrain.train.cli",
    "llmtrain.train.align.cli",
    "llmtrain.train.evaluate.cli",
    "llmtrain.train.export.cli",
)
"""Modules with a `register(commands, common)` function, in the order their commands are
listed; those of stage packages also declare their stages (`STAGES`, see llmtrain.stages) and
may add options to `llmtrain run` (`add_run_options(parser)`, `run_overrides(args)` -> recipe
overrides passed on to every stage)."""


def stage_command_modules() -> list:
    return [importlib.import_module(name) for name in STAGE_COMMANDS]


USER_ERROR_EXIT = 2


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe file and `--set KEY=VALUE` overrides, for every command that reads a recipe."""
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set pretrain.lr=3e-4 (value parsed as YAML; repeatable)",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--resume and --overwrite, for every command that writes a run directory."""
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue from the latest checkpoint of the run directory, or from CHECKPOINT",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="delete the run directory and start again"
    )


def add_stage_argument(parser: argparse.ArgumentParser, kind: str | None) -> None:
    """--stage NAME, for the commands of stage kinds: run the instance NAME (declared under the
    recipe's `stages:`) instead of the kind's own section."""
    parser.add_argument(
        "--stage",
        metavar="NAME",
        help="run the stage NAME of the recipe's `stages:` (default: the command's own section)",
    )
    parser.set_defaults(stage_kind=kind)


def load_recipe_from_args(args: argparse.Namespace):  # -> Recipe (import kept lazy)
    """The recipe of the command; with --stage, as that stage sees it (Recipe.for_stage)."""
    from llmtrain.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    name = getattr(args, "stage", None)
    if name is None:
        return recipe
    kind = recipe.stage_kind(name)
    if kind.name != args.stage_kind:
        from llmtrain.errors import RecipeError

        raise RecipeError(
            f"--stage {name}: that is a {kind.name} stage, not {args.stage_kind}; run it with "
            f"`{kind.shell_command(name)}`"
        )
    return recipe.for_stage(name)


def _debug_flag(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show tracebacks and debug logs"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmtrain",
        description="From raw text to an aligned chat model: tokenizer, data, pretraining, "
        "SFT, reward model, PPO, DPO, GRPO.",
    )
    parser.add_argument("--version", action="version", version=f"llmtrain {__version__}")
    _debug_flag(parser, default=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # subcommands accept --debug too, without overwriting the top-level value
    common = argparse.ArgumentParser(add_help=False)
    _debug_flag(common, default=argparse.SUPPRESS)

    for module in stage_command_modules():
        module.register(commands, common)

    run = commands.add_parser(
        "run", help="run the recipe's stages in order, skipping finished ones", parents=[common]
    )
    add_recipe_arguments(run)
    run.add_argument(
        "--stages",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        metavar="A,B,...",
        help="run only these stages (default: every stage the recipe has)",
    )
    run.add_argument("--from", dest="start", metavar="STAGE", help="rerun from this stage on")
    run.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="launch training stages with torchrun on N processes",
    )
    run.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="run up to N stages at once, each when the stages it reads from have finished "
        "(stages side by side share the CPU threads; output in <output_dir>/logs/STAGE.log)",
    )
    run.add_argument("--dry-run", action="store_true", help="show what would run, run nothing")
    for module in stage_command_modules():
        if hasattr(module, "add_run_options"):
            module.add_run_options(run)
    run.set_defaults(func=_run_pipeline)

    report = commands.add_parser(
        "report",
        help="Markdown report (curves, data mixture, metrics, eval) of a pipeline",
        parents=[common],
    )
    report.add_argument("output_dir", help="the recipe's output_dir")
    report.set_defaults(func=_report)

    config = commands.add_parser("config", help="show, check or describe recipes", parents=[common])
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_commands.add_parser(
        "show",
        help="print the resolved recipe (extends merged, overrides applied, defaults filled)",
        parents=[common],
    )
    add_recipe_arguments(show)
    show.set_defaults(func=_config_show)
    check = config_commands.add_parser(
        "check", help="validate a recipe without running anything", parents=[common]
    )
    add_recipe_arguments(check)
    check.add_argument(
        "--skip-inputs",
        action="store_true",
        help="do not check that input files exist (a recipe meant for another machine)",
    )
    check.set_defaults(func=_config_check)
    schema = config_commands.add_parser(
        "schema", help="print the JSON schema of the recipe", parents=[common]
    )
    schema.set_defaults(func=_config_schema)
    return parser


def _run_pipeline(args: argparse.Namespace) -> None:
    from llmtrain.pipeline import run_pipeline

    for module in stage_command_modules():  # options a stage adds to `run` (data: --executor)
        if hasattr(module, "run_overrides"):
            args.overrides = [*args.overrides, *module.run_overrides(args)]  # to every stage
    recipe = load_recipe_from_args(args)
    run_pipeline(
        recipe,
        args.recipe,
        args.overrides,
        stages=args.stages,
        start=args.start,
        nproc_per_node=args.nproc_per_node,
        jobs=args.jobs,
        dry_run=args.dry_run,
    )
    if not args.dry_run:
        from llmtrain.report import build_report

        print(f"report: {build_report(recipe.output_dir)}")


def _report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from llmtrain.report import build_report

    print(build_report(Path(args.output_dir)))


def _config_show(args: argparse.Namespace) -> None:
    sys.stdout.write(load_recipe_from_args(args).to_yaml())


def _config_check(args: argparse.Namespace) -> None:
    from pydantic import BaseModel

    recipe = load_recipe_from_args(args)
    sections = [name for name, value in recipe if isinstance(value, BaseModel)]
    instances = recipe.instance_names()
    if not args.skip_inputs:
        recipe.check_inputs(*sections, *instances)
    print(f"ok: {args.recipe} ({', '.join([*sections, *instances])})")


def _config_schema(args: argparse.Namespace) -> None:
    from llmtrain.recipe import Recipe

    print(json.dumps(Recipe.model_json_schema(), indent=2))


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    from llmtrain.compat import check_versions
    from llmtrain.runtime import setup_logging

    setup_logging(debug=args.debug)
    check_versions()  # warns when an installed dependency is outside its tested range
    try:
        args.func(args)
    except LLMTrainError as exc:
        if args.debug:
            raise
        print(f"llmtrain: error: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt:
        print("llmtrain: interrupted", file=sys.stderr)
        sys.exit(130)
