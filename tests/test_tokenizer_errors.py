"""Bad input to `llmtrain tokenizer`: each mistake gets one message naming the place and the fix,
and nothing is left behind."""

from __future__ import annotations

import json

import pytest

from llmtrain.errors import InputDataError, RecipeError
from tests.tokenizer_support import tokenizer_recipe, train

GOOD = [{"text": f"document number {i}: the quick brown fox, again and again."} for i in range(40)]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def assert_nothing_written(tmp_path):
    run = tmp_path / "run"
    assert not run.exists() or [p.name for p in run.iterdir()] == []


def test_empty_corpus_names_the_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n  \n")
    with pytest.raises(InputDataError) as error:
        train(tmp_path, [{"paths": [str(empty), str(blank)]}])
    assert str(error.value) == (
        f"tokenizer.sources[0]: no text in {empty}, {blank}; check that the files hold "
        "documents and that text_field ('text') names the field with the text"
    )
    assert_nothing_written(tmp_path)


def test_corpus_empty_after_the_text_field_is_read(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", GOOD)
    hollow = write_jsonl(tmp_path / "hollow.jsonl", [{"text": ""}, {"text": ""}])
    with pytest.raises(InputDataError) as error:
        train(tmp_path, [{"paths": [str(good)]}, {"paths": [str(hollow)]}])
    assert str(error.value) == (
        f"tokenizer.sources[1]: no text in {hollow}; check that the files hold documents and "
        "that text_field ('text') names the field with the text"
    )
    assert_nothing_written(tmp_path)


def test_record_without_the_text_field_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [*GOOD[:3], {"content": "x"}, *GOOD[3:]])
    with pytest.raises(InputDataError) as error:
        train(tmp_path, path)
    assert str(error.value) == (
        f"{path}:4: record has no field 'text' (fields: content); set text_field to the field "
        "that holds the text, or set on_error: skip to skip and count such records"
    )
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("backend", ["tokenizers", "sentencepiece"])
def test_broken_json_names_file_and_line(tmp_path, backend):
    path = tmp_path / "c.jsonl"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in GOOD[:5]) + '{"text": "cut off\n', encoding="utf-8"
    )
    with pytest.raises(InputDataError) as error:
        train(tmp_path, path, backend=backend)
    assert str(error.value).startswith(f"{path}:6: invalid JSON (")
    assert str(error.value).endswith(
        "; fix the line, or set on_error: skip to skip and count such lines"
    )
    assert_nothing_written(tmp_path)


def test_on_error_skip_counts_bad_records(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in GOOD) + "not json\n" + '{"body": 1}\n',
        encoding="utf-8",
    )
    _, report = train(tmp_path, [{"paths": [str(path)], "on_error": "skip"}])
    corpus = report["corpus"][0]
    assert corpus["skipped_records"] == 2
    assert corpus["documents"] == len(GOOD)
    assert corpus["skipped_examples"][0].startswith(f"{path}:41: invalid JSON")


def test_non_utf8_names_file_and_byte_offset_or_is_replaced(tmp_path):
    path = tmp_path / "c.jsonl"
    good = "".join(json.dumps(r) + "\n" for r in GOOD[:3]).encode()
    path.write_bytes(good + b'{"text": "caf\xe9 au lait"}\n' + good)
    with pytest.raises(InputDataError) as error:
        train(tmp_path, path)
    offset = len(good) + len(b'{"text": "caf')
    assert str(error.value) == (
        f"{path}:4: not valid UTF-8 at byte offset {offset}; convert the file to UTF-8, or set "
        "encoding_errors: replace to replace bad bytes"
    )
    assert_nothing_written(tmp_path)
    out, report = train(
        tmp_path, [{"paths": [str(path)], "encoding_errors": "replace"}], heldout_fraction=0
    )
    assert report["corpus"][0]["documents"] == 7
    from tests.tokenizer_support import load

    tokenizer = load(out)
    ids = tokenizer("caf\ufffd au lait", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "caf\ufffd au lait"


def test_plain_text_non_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"plain text\nmore \xff\xfe here\n")
    with pytest.raises(InputDataError) as error:
        train(tmp_path, path)
    assert str(error.value) == (
        f"{path}: not valid UTF-8 at byte offset 16; convert the file to UTF-8, or set "
        "encoding_errors: replace to replace bad bytes"
    )


def test_lone_surrogates_from_json_escapes_become_replacement_characters(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GOOD) + '{"text": "bad \\ud800 pair"}\n')
    _, report = train(tmp_path, path, heldout_fraction=0)
    assert report["corpus"][0]["documents"] == len(GOOD) + 1


def test_missing_input_file_is_named_before_any_work(tmp_path):
    recipe = tokenizer_recipe(tmp_path, tmp_path / "absent" / "*.jsonl")
    from llmtrain.tokenizer.train import run_tokenizer

    with pytest.raises(RecipeError) as error:
        run_tokenizer(recipe)
    assert str(error.value) == (
        f"tokenizer.sources[0].paths[0]: no file matches {tmp_path}/absent/*.jsonl"
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"vocab_size": 100},
            "tokenizer: vocab_size 100 is smaller than the 4 special tokens plus the base "
            "alphabet (256); set vocab_size to at least 260",
        ),
        (
            {"vocab_size": 270, "special_tokens": {"sentinels": 20}},
            "tokenizer: vocab_size 270 is smaller than the 24 special tokens plus the base "
            "alphabet (256); set vocab_size to at least 280",
        ),
        (
            {"algorithm": "wordpiece", "vocab_size": 900},
            "tokenizer: vocab_size 900 is smaller than the 5 special tokens plus the base "
            "alphabet (1000); set vocab_size to at least 1005",
        ),
        (
            {"special_tokens": {"pad": "<|endoftext|>"}},
            "tokenizer: special_tokens: '<|endoftext|>' is used twice; each special token "
            "needs its own text",
        ),
        (
            {"algorithm": "unigram", "pattern": "llama3"},
            "tokenizer: pattern applies to byte-level BPE (algorithm bpe, backend tokenizers) "
            "only; remove it",
        ),
        (
            {"backend": "sentencepiece", "digits": "groups_of_3"},
            "tokenizer: sentencepiece splits numbers into single digits or not at all; set "
            "digits to single or runs",
        ),
        (
            {"backend": "sentencepiece", "algorithm": "wordpiece"},
            "tokenizer: backend sentencepiece trains bpe or unigram, not wordpiece; use backend "
            "tokenizers for wordpiece",
        ),
        ({"add_bos": True}, "tokenizer: add_bos needs a bos token; set special_tokens.bos"),
        (
            {"algorithm": "bpe", "backend": "tokenizers", "special_tokens": {"reserved": -1}},
            "tokenizer.special_tokens.reserved: expected greater than or equal to 0, got -1",
        ),
        (
            {"algorithm": "wordpiece", "vocab_size": 2000, "max_token_length": 8},
            "tokenizer: max_token_length applies to bpe and unigram; the wordpiece trainer has "
            "no such limit: remove it",
        ),
        (
            {"max_token_length": 1},
            "tokenizer.max_token_length: expected greater than or equal to 2, got 1",
        ),
        (
            {"vocab_sise": 1000},
            "tokenizer.vocab_sise: unknown key; did you mean vocab_size?",
        ),
    ],
)
def test_recipe_mistakes(tmp_path, settings, message):
    with pytest.raises(RecipeError) as error:
        tokenizer_recipe(tmp_path, tmp_path / "corpus.jsonl", **settings)
    assert str(error.value) == message


def test_invalid_pattern_and_chat_template_fail_before_training(tmp_path):
    from llmtrain.tokenizer.train import run_tokenizer

    corpus = write_jsonl(tmp_path / "c.jsonl", GOOD)
    recipe = tokenizer_recipe(tmp_path, corpus, pattern="([a-z]")
    with pytest.raises(RecipeError) as error:
        run_tokenizer(recipe)
    assert str(error.value) == (
        "tokenizer.pattern: not a valid regex (Oniguruma error: end pattern with unmatched "
        "parenthesis): "
        "'([a-z]'"
    )
    recipe = tokenizer_recipe(tmp_path, corpus, chat_template="{% for m in messages %}{{ m }")
    with pytest.raises(RecipeError) as error:
        run_tokenizer(recipe)
    assert str(error.value).startswith(
        "tokenizer.chat_template: the template cannot render a conversation (TemplateSyntaxError"
    )
    assert str(error.value).endswith("fix the Jinja, or use chat_template: chatml")
    assert_nothing_written(tmp_path)


def test_sentencepiece_vocabulary_larger_than_the_corpus_allows(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", GOOD)
    with pytest.raises(InputDataError) as error:
        train(tmp_path, corpus, backend="sentencepiece", vocab_size=4096, heldout_fraction=0)
    message = str(error.value)
    assert message.startswith("tokenizer.vocab_size: the corpus is too small for 4096 tokens; ")
    assert message.endswith(" from it: lower vocab_size or add text")
    assert_nothing_written(tmp_path)


def test_everything_held_out_is_an_error(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", GOOD[:1])
    with pytest.raises(InputDataError) as error:
        train(tmp_path, corpus, heldout_fraction=0.999)
    assert str(error.value) == (
        "tokenizer: all 1 documents were held out, none is left to train on; lower "
        "heldout_fraction or heldout_max_chars, or add documents"
    )
