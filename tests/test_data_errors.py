"""Bad input to `llmtrain data`: each gets one message naming the place and the fix."""

from __future__ import annotations

import json

import pytest

from llmtrain.data_pipeline.build import build_data
from llmtrain.data_pipeline.shards import ShardWriter
from llmtrain.errors import InputDataError, RecipeError, StageInputError
from llmtrain.recipe import validate_recipe
from tests.conftest import run_cli
from tests.data_support import data_recipe, english_documents, write_jsonl


def recipe_with(tmp_path, tokenizer_dir, sources, **data):
    return validate_recipe(data_recipe(tmp_path, tokenizer_dir, sources, **data))


def test_broken_json_line_names_file_and_line(tmp_path, tiny_tokenizer_dir, write_recipe):
    corpus = write_jsonl(tmp_path / "web.jsonl", english_documents(4, seed=0))
    lines = corpus.read_text().splitlines()
    lines.insert(2, '{"text": "cut off"')
    corpus.write_text("\n".join(lines) + "\n")
    recipe = write_recipe(
        f"""
        name: bad-json
        output_dir: {tmp_path / "out"}
        data:
          tokenizer: {tiny_tokenizer_dir}
          num_proc: 1
          sources: [{{name: web, paths: [{corpus}]}}]
        """
    )
    result = run_cli("data", str(recipe))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"llmtrain: error: {corpus}:3: invalid JSON (Expecting ',' delimiter at column 19); "
        "fix the line, or set on_error: skip to skip and count such lines"
    )
    assert not (tmp_path / "out" / "data" / "manifest.json").exists()


def test_skipped_lines_are_counted(tmp_path, tiny_tokenizer_dir):
    corpus = write_jsonl(tmp_path / "web.jsonl", english_documents(6, seed=0))
    with open(corpus, "a") as f:
        f.write("not json\n" + json.dumps({"body": "no text field"}) + "\n")
    out = build_data(
        recipe_with(
            tmp_path,
            tiny_tokenizer_dir,
            [{"name": "web", "paths": [str(corpus)], "on_error": "skip"}],
        )
    )
    (web,) = json.loads((out / "manifest.json").read_text())["sources"]
    assert web["documents_read"] == 6 and web["read_errors_skipped"] == 2
    assert "| web | 6 | 2 |" in (out / "report.md").read_text()


def test_missing_text_field(tmp_path, tiny_tokenizer_dir):
    corpus = write_jsonl(tmp_path / "web.jsonl", english_documents(2, seed=0), field="content")
    with pytest.raises(InputDataError) as error:
        build_data(
            recipe_with(tmp_path, tiny_tokenizer_dir, [{"name": "web", "paths": [str(corpus)]}])
        )
    assert str(error.value) == (
        f"{corpus}:1: record has no field 'text' (fields: content); set text_field to the field "
        "that holds the text, or set on_error: skip to skip and count such records"
    )


def test_unreadable_file(tmp_path, tiny_tokenizer_dir):
    damaged = tmp_path / "web.jsonl.zst"
    damaged.write_bytes(b"this is not zstandard data" * 4)
    with pytest.raises(InputDataError) as error:
        build_data(
            recipe_with(tmp_path, tiny_tokenizer_dir, [{"name": "web", "paths": [str(damaged)]}])
        )
    assert str(error.value) == (
        f"{damaged}: cannot read (ZstdError: zstd decompress error: Unknown frame descriptor); "
        "it looks like a damaged or truncated zstandard file: replace it, or leave it out of the "
        "paths"
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"weight": 0},
            "data.sources[0].weight: weight must be positive, got 0.0; remove the "
            "source to leave it out",
        ),
        (
            {"weight": -1},
            "data.sources[0].weight: weight must be positive, got -1.0; remove "
            "the source to leave it out",
        ),
        (
            {"weight": float("inf")},
            "data.sources[0].weight: expected a finite number, got inf",
        ),
        (
            {"max_epochs": 0},
            "data.sources[0].max_epochs: expected greater than 0, got 0",
        ),
        (
            {"name": "a/b"},
            "data.sources[0].name: source name 'a/b' must start with a letter or "
            "digit and hold only letters, digits, _ . - (it names files)",
        ),
        (
            {"paths": []},
            "data.sources[0].paths: List should have at least 1 item after "
            "validation, not 0 (got [])",
        ),
    ],
)
def test_bad_source_settings(tmp_path, source, message):
    raw = data_recipe(tmp_path, tmp_path, [{"name": "web", "paths": ["x.jsonl"], **source}])
    with pytest.raises(RecipeError) as error:
        validate_recipe(raw)
    assert str(error.value) == message


def test_duplicate_source_names(tmp_path):
    raw = data_recipe(
        tmp_path, tmp_path, [{"name": "web", "paths": ["a"]}, {"name": "web", "paths": ["b"]}]
    )
    with pytest.raises(RecipeError) as error:
        validate_recipe(raw)
    assert str(error.value) == (
        "data: sources[1].name 'web' is used twice; give each source its own name"
    )


def test_source_emptied_by_a_filter_names_it(tmp_path, tiny_tokenizer_dir):
    short = write_jsonl(tmp_path / "short.jsonl", ["What is 2 + 3? 2 + 3 = 5."] * 3 + ["Hi."])
    good = write_jsonl(tmp_path / "good.jsonl", english_documents(4, seed=1))
    with pytest.raises(InputDataError) as error:
        build_data(
            recipe_with(
                tmp_path,
                tiny_tokenizer_dir,
                [
                    {"name": "prose", "paths": [str(good)]},
                    {"name": "sums", "paths": [str(short)]},
                ],
            )
        )
    assert str(error.value) == (
        "data.sources[1] (sums): the filters removed all 4 documents (length 4); the length "
        "filter removed the most (min_words: 4); loosen data.filters.length or turn it off for "
        "this source (data.sources[1].filters.length.enabled: false), then run `llmtrain data` "
        "again with --overwrite (finished steps are reused)"
    )


def test_source_without_any_document(tmp_path, tiny_tokenizer_dir):
    good = write_jsonl(tmp_path / "good.jsonl", english_documents(4, seed=1))
    blank = write_jsonl(tmp_path / "blank.jsonl", ["", ""])
    with pytest.raises(InputDataError) as error:
        build_data(
            recipe_with(
                tmp_path,
                tiny_tokenizer_dir,
                [
                    {"name": "prose", "paths": [str(good)]},
                    {"name": "blank", "paths": [str(blank)]},
                ],
            )
        )
    assert str(error.value) == (
        "data.sources[1] (blank): its files hold no document (2 records whose 'text' is "
        "empty); check data.sources[1].paths and text_field"
    )


def test_source_emptied_by_cleaning(tmp_path, tiny_tokenizer_dir):
    controls = write_jsonl(tmp_path / "controls.jsonl", ["\x07\x07", "\ufeff \x00", "\x1b", ""])
    with pytest.raises(InputDataError) as error:
        build_data(
            recipe_with(tmp_path, tiny_tokenizer_dir, [{"name": "c", "paths": [str(controls)]}])
        )
    assert str(error.value) == (
        "data.sources[0] (c): the filters removed all 4 documents (empty 4); the empty filter "
        "removed the most (after_cleaning: 3, no_text: 1); cleaning leaves most of them empty: "
        "check the files' text and data.clean / data.sources[0].clean, then run `llmtrain data` "
        "again with --overwrite (finished steps are reused)"
    )


def test_unreachable_target_names_the_source_and_the_fix(tmp_path, tiny_tokenizer_dir):
    corpus = write_jsonl(tmp_path / "web.jsonl", english_documents(4, seed=1))
    recipe = recipe_with(
        tmp_path,
        tiny_tokenizer_dir,
        [{"name": "web", "paths": [str(corpus)]}],
        target_tokens=1e9,
        validation={"fraction": 0},
    )
    with pytest.raises(RecipeError) as error:
        build_data(recipe)
    message = str(error.value)
    assert message.startswith(
        "data.sources[0] (web): the target of 1,000,000,000 tokens x weight 1.000 needs "
        "1,000,000,000 tokens from this source, "
    )
    assert message.endswith(
        "training tokens, above max_epochs 16; lower its weight or data.target_tokens, raise "
        "max_epochs, or add text to the source (then run `llmtrain data` again: finished steps "
        "are reused)"
    )
    assert not (tmp_path / "out" / "data" / "manifest.json").exists()  # no build that lies


def test_source_emptied_by_dedup_names_it(tmp_path, tiny_tokenizer_dir):
    docs = english_documents(4, seed=1)
    first = write_jsonl(tmp_path / "a.jsonl", docs)
    copy = write_jsonl(tmp_path / "b.jsonl", [d.upper() for d in docs])
    with pytest.raises(InputDataError) as error:
        build_data(
            recipe_with(
                tmp_path,
                tiny_tokenizer_dir,
                [
                    {"name": "a", "paths": [str(first)]},
                    {"name": "b", "paths": [str(copy)]},
                ],
            )
        )
    assert str(error.value) == (
        "data.sources[1] (b): all 4 documents left after filtering were removed: 4 exact "
        "duplicates and 0 near duplicates of documents of sources listed earlier, 0 "
        "overlapping eval files (none); drop the source, list it earlier, or turn off "
        "data.dedup / data.decontamination for it, then run `llmtrain data` again with "
        "--overwrite"
    )


def test_missing_tokenizer_names_the_stage(tmp_path):
    corpus = write_jsonl(tmp_path / "web.jsonl", english_documents(2, seed=0))
    raw = data_recipe(tmp_path, tmp_path, [{"name": "web", "paths": [str(corpus)]}])
    del raw["data"]["tokenizer"]
    with pytest.raises(StageInputError) as error:
        build_data(validate_recipe(raw))
    assert str(error.value) == (
        f"data.tokenizer: no tokenizer at {tmp_path / 'out' / 'tokenizer'}; run `llmtrain "
        "tokenizer` with this recipe first, or set data.tokenizer to a Hugging Face tokenizer "
        "directory"
    )


def test_tokenizer_without_eos_is_refused(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    tokenizer.eos_token = None
    tokenizer.save_pretrained(str(tmp_path / "no-eos"))
    corpus = write_jsonl(tmp_path / "web.jsonl", english_documents(2, seed=0))
    with pytest.raises(StageInputError) as error:
        build_data(
            recipe_with(tmp_path, tmp_path / "no-eos", [{"name": "web", "paths": [str(corpus)]}])
        )
    assert str(error.value) == (
        f"data.tokenizer: the tokenizer at {tmp_path / 'no-eos'} has no eos_token, which "
        "separates documents in the token shards; set one (tokenizer.add_special_tokens("
        "{'eos_token': '<|endoftext|>'}) then save_pretrained), or train the tokenizer with "
        "`llmtrain tokenizer`"
    )


def test_a_foreign_directory_is_not_overwritten(tmp_path, tiny_tokenizer_dir):
    (tmp_path / "out" / "data").mkdir(parents=True)
    (tmp_path / "out" / "data" / "notes.txt").write_text("mine")
    corpus = write_jsonl(tmp_path / "web.jsonl", english_documents(3, seed=0))
    recipe = recipe_with(tmp_path, tiny_tokenizer_dir, [{"name": "web", "paths": [str(corpus)]}])
    with pytest.raises(Exception) as error:
        build_data(recipe)
    assert str(error.value) == (
        f"{tmp_path / 'out' / 'data'} exists and is not a data build (no build.json); move it "
        "away, or run with --overwrite to delete its contents"
    )
    build_data(recipe, overwrite=True)
    assert not (tmp_path / "out" / "data" / "notes.txt").exists()


def test_a_shard_is_never_written_empty(tmp_path):
    with pytest.raises(ValueError, match="no document to write"):
        with ShardWriter(tmp_path / "empty.bin", "<u2"):
            pass
    assert list(tmp_path.iterdir()) == []
