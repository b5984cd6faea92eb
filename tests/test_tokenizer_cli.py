"""`llmtrain tokenizer RECIPE` and `llmtrain tokenizer eval DIR ... --corpus PATH` from the shell."""

from __future__ import annotations

import json

import pytest

from llmtrain.errors import InputDataError, StageInputError
from tests.conftest import run_cli
from tests.tokenizer_support import train


@pytest.fixture(scope="module")
def two_tokenizers(tokenizer_corpus, tmp_path_factory):
    small, _ = train(tmp_path_factory.mktemp("small"), tokenizer_corpus, vocab_size=320)
    large, _ = train(
        tmp_path_factory.mktemp("large"),
        tokenizer_corpus,
        vocab_size=960,
        algorithm="unigram",
        backend="sentencepiece",
    )
    return small, large


def test_train_from_the_command_line(write_recipe, tokenizer_corpus, tmp_path):
    recipe = write_recipe(
        f"""
        name: cli
        output_dir: out
        tokenizer:
          vocab_size: 400
          sources: [{{paths: ["{tokenizer_corpus}"]}}]
          heldout_fraction: 0.1
        """
    )
    result = run_cli("tokenizer", str(recipe))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out" / "tokenizer"
    assert result.stdout.startswith(f"tokenizer: {out} (448 tokens, trained in ")
    assert "bytes/token" in result.stdout and "round trip exact" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "report.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]

    again = run_cli("tokenizer", str(recipe))
    assert again.returncode == 0
    assert (
        again.stdout
        == f"tokenizer: {out} is up to date (same settings); --overwrite trains it again\n"
    )

    changed = run_cli("tokenizer", str(recipe), "--set", "tokenizer.vocab_size=500")
    assert changed.returncode == 2
    assert changed.stderr.strip().endswith(
        f"llmtrain: error: tokenizer: {out} already holds a tokenizer trained with other "
        "settings (changed: vocab_size); pass --overwrite to replace it, or set "
        "tokenizer.output_dir to write elsewhere"
    )
    replaced = run_cli("tokenizer", str(recipe), "--set", "tokenizer.vocab_size=500", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((out / "report.json").read_text())["vocab_size"] == 512


def test_eval_compares_directories(two_tokenizers, tokenizer_corpus, tmp_path):
    small, large = two_tokenizers
    result = run_cli(
        "tokenizer",
        "eval",
        str(small),
        str(large),
        "--corpus",
        str(tokenizer_corpus),
        "--max-docs",
        "30",
        "--json",
        str(tmp_path / "eval.json"),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "| tokenizer | model | backend | vocab | bytes/token | chars/token | tokens/word | "
        "unk rate | round trip |"
    )
    assert lines[2].startswith(f"| {small} | BPE | tokenizers | 320 | ")
    assert lines[3].startswith(f"| {large} | Unigram | sentencepiece | 960 | ")
    assert lines[2].endswith(" | - | exact |") and lines[3].endswith(" | exact |")
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert [r["documents"] for r in rows] == [30, 30]
    assert rows[0]["bytes"] == rows[1]["bytes"]  # the same documents for both
    assert rows[1]["bytes_per_token"] > rows[0]["bytes_per_token"]  # larger vocabulary
    assert rows[1]["unknown_rate"] == 0.0


def test_eval_in_process_matches_the_training_report(two_tokenizers, tmp_path):
    from llmtrain.recipe import validate_recipe
    from llmtrain.tokenizer.corpus import Corpus
    from llmtrain.tokenizer.evaluate import evaluate

    small, _ = two_tokenizers
    report = json.loads((small / "report.json").read_text())
    held = tmp_path / "held.jsonl"
    settings = report["settings"]
    # rebuild the held-out documents from the same corpus, seed and fraction
    section = {k: v for k, v in settings.items() if k != "seed"}
    recipe = validate_recipe(
        {"name": "x", "output_dir": str(tmp_path), "seed": settings["seed"], "tokenizer": section}
    )
    corpus = Corpus(recipe.tokenizer, recipe.seed)
    for _ in corpus.training_texts():
        pass
    held.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus.heldout))
    (row,) = evaluate([small], [str(held)])
    for key in ("documents", "bytes", "tokens", "bytes_per_token", "tokens_per_word"):
        assert row[key] == report["heldout"][key]


def test_eval_errors(two_tokenizers, tmp_path):
    from llmtrain.tokenizer.evaluate import evaluate

    small, _ = two_tokenizers
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputDataError) as error:
        evaluate([small], [str(empty)])
    assert str(error.value) == (
        f"--corpus: no text in {empty}; check the files and --text-field ('text')"
    )
    with pytest.raises(StageInputError) as error:
        evaluate([small, tmp_path / "nothing"], [str(empty)])
    assert str(error.value) == f"tokenizer eval: {tmp_path / 'nothing'} is not a directory"
    with pytest.raises(StageInputError) as error:
        evaluate([tmp_path], [str(empty)])
    assert str(error.value).startswith(f"tokenizer eval: cannot load a tokenizer from {tmp_path} (")


def test_usage_errors_and_help(tmp_path):
    result = run_cli("tokenizer", "--help")
    assert result.returncode == 0
    assert "llmtrain tokenizer RECIPE [--set KEY=VALUE ...] [--overwrite]" in result.stdout
    assert "llmtrain tokenizer eval DIR [DIR ...] --corpus PATH [PATH ...]" in result.stdout
    result = run_cli("tokenizer", "eval", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == (
        "llmtrain: error: llmtrain tokenizer eval: --corpus is required (the files to measure on)\n"
    )
    result = run_cli("tokenizer", "recipe.yaml", "some_dir")
    assert result.returncode == 2
    assert result.stderr == (
        "llmtrain: error: llmtrain tokenizer recipe.yaml: unexpected arguments some_dir; "
        "directories are compared with `llmtrain tokenizer eval DIR ... --corpus PATH`\n"
    )
