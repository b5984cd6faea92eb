"""`llmtrain tokenizer`: train the recipe's tokenizer, or compare tokenizers on a corpus.

    llmtrain tokenizer RECIPE [--set KEY=VALUE ...] [--overwrite]
    llmtrain tokenizer eval DIR [DIR ...] --corpus PATH [PATH ...] [--text-field F] [--max-docs N]

One parser holds both forms (argparse cannot put a positional recipe beside sub-subcommands):
the first argument is the recipe, or the word `eval` followed by tokenizer directories.
Light module: tokenizers and transformers are imported only when the command runs.
"""

from __future__ import annotations

import argparse

from llmtrain.cli import add_recipe_arguments, load_recipe_from_args
from llmtrain.errors import RecipeError
from llmtrain.stages import Stage
from llmtrain.tokenizer.config import TokenizerSection

STAGES = (
    Stage("tokenizer", TokenizerSection, ("tokenizer",), produces="tokenizer", repeatable=False),
)

USAGE = """llmtrain tokenizer RECIPE [--set KEY=VALUE ...] [--overwrite]
       llmtrain tokenizer eval DIR [DIR ...] --corpus PATH [PATH ...] [--text-field F]
                               [--text-mode {file,line,paragraph}] [--max-docs N] [--json FILE]"""

DESCRIPTION = """\
Train: read the recipe's `tokenizer:` section, train a BPE, Unigram or WordPiece tokenizer
(Hugging Face tokenizers or SentencePiece) and write a Hugging Face tokenizer directory with
report.json (settings, vocabulary, special token ids, held-out bytes/token, tokens/word,
unknown-token rate, round-trip check) to <output_dir>/tokenizer.

Eval: measure one or several tokenizer directories on a corpus (jsonl/.gz/.zst, parquet,
plain text, globs) and print them side by side."""


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "tokenizer",
        help="train a tokenizer from the recipe, or `tokenizer eval` to compare tokenizers",
        description=DESCRIPTION,
        usage=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    add_recipe_arguments(parser)
    parser.add_argument(
        "dirs", nargs="*", metavar="DIR", help="eval: the tokenizer directories to compare"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train: replace an existing tokenizer directory trained with other settings",
    )
    evaluation = parser.add_argument_group("eval options")
    evaluation.add_argument(
        "--corpus", nargs="+", metavar="PATH", help="files, directories or globs to measure on"
    )
    evaluation.add_argument(
        "--text-field", default="text", help="record field holding the text (default: text)"
    )
    evaluation.add_argument(
        "--text-mode",
        choices=("file", "line", "paragraph"),
        default="file",
        help="plain-text files: one document per file, line or paragraph (default: file)",
    )
    evaluation.add_argument(
        "--max-docs", type=int, metavar="N", help="measure on the first N documents only"
    )
    evaluation.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.set_defaults(func=_run)


_EVAL_ONLY = {"corpus": "--corpus", "max_docs": "--max-docs", "json": "--json"}


def _run(args: argparse.Namespace) -> None:
    if args.recipe == "eval":
        _evaluate(args)
        return
    if args.dirs:
        raise RecipeError(
            f"llmtrain tokenizer {args.recipe}: unexpected arguments {' '.join(args.dirs)}; "
            "directories are compared with `llmtrain tokenizer eval DIR ... --corpus PATH`"
        )
    given = [flag for name, flag in _EVAL_ONLY.items() if getattr(args, name) is not None]
    if given:
        raise RecipeError(
            f"{', '.join(given)} belong to `llmtrain tokenizer eval DIR ... --corpus PATH`, "
            "not to training"
        )
    recipe = load_recipe_from_args(args)
    from llmtrain.tokenizer.train import run_tokenizer

    run_tokenizer(recipe, overwrite=args.overwrite)


def _evaluate(args: argparse.Namespace) -> None:
    if not args.dirs:
        raise RecipeError("llmtrain tokenizer eval: name at least one tokenizer directory")
    if not args.corpus:
        raise RecipeError("llmtrain tokenizer eval: --corpus is required (the files to measure on)")
    if args.overrides or args.overwrite:
        raise RecipeError("llmtrain tokenizer eval takes no --set or --overwrite")
    if args.max_docs is not None and args.max_docs < 1:
        raise RecipeError(f"--max-docs must be at least 1, got {args.max_docs}")
    from llmtrain.tokenizer.evaluate import evaluate, format_table, write_json

    rows = evaluate(
        args.dirs,
        args.corpus,
        text_field=args.text_field,
        text_mode=args.text_mode,
        max_docs=args.max_docs,
    )
    print(format_table(rows))
    if args.json:
        write_json(args.json, rows)
