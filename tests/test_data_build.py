"""`llmtrain data` end to end: dedup across sources, decontamination, mixture, shards, manifest,
report, and re-runs (nothing to do, refused, --overwrite reusing finished steps)."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from transformers import AutoTokenizer

from llmtrain.data_pipeline.build import build_data
from llmtrain.data_pipeline.loader import TrainBatches
from llmtrain.data_pipeline.shards import file_sha256
from llmtrain.errors import RecipeError, RunDirError
from llmtrain.recipe import validate_recipe
from llmtrain.tokenizer.fingerprint import tokenizer_fingerprint
from tests.data_support import data_recipe, decode_shards, english_documents, write_jsonl


def near_copy(text: str, changes: int, seed: int) -> str:
    """`text` with `changes` words replaced (Jaccard of 5-grams stays high for few changes)."""
    rng = np.random.default_rng(seed)
    words = text.split()
    for position in rng.choice(len(words), changes, replace=False):
        words[position] = "zebra"
    return " ".join(words)


@pytest.fixture(scope="module")
def dedup_build(tiny_tokenizer_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dedup")
    first = english_documents(30, seed=1)
    second = english_documents(30, seed=2)
    web = [*first, "  " + first[0].upper().replace(" ", "   ")]  # exact copy within web
    books = [
        *second,
        first[1].lower(),  # exact copy (after normalisation) of a web document
        near_copy(first[2], 1, seed=0),  # near copy of a web document
        near_copy(second[3], 1, seed=1),  # near copy of a books document
    ]
    recipe = validate_recipe(
        data_recipe(
            tmp,
            tiny_tokenizer_dir,
            [
                {"name": "web", "paths": [str(write_jsonl(tmp / "web.jsonl", web))]},
                {
                    "name": "books",
                    "paths": [str(write_jsonl(tmp / "books.jsonl", books))],
                    "weight": 0.5,
                },
            ],
            validation={"fraction": 0.1},
        )
    )
    out = build_data(recipe)
    return recipe, out, first, second


def test_duplicates_across_sources_are_removed_and_the_first_source_wins(
    dedup_build, tiny_tokenizer_dir
):
    _, out, first, second = dedup_build
    manifest = json.loads((out / "manifest.json").read_text())
    web, books = manifest["sources"]
    assert (web["documents_read"], web["exact_duplicates"], web["near_duplicates"]) == (31, 1, 0)
    assert (books["documents_read"], books["exact_duplicates"], books["near_duplicates"]) == (
        33,
        1,
        2,
    )
    assert (web["documents"], books["documents"]) == (30, 30)
    assert manifest["dedup"]["near"]["clusters"] == 2
    # the shards decode back to exactly the kept documents, each in one split
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    decoded = decode_shards(out, tokenizer)
    assert sorted(decoded["web"]) == sorted(first)
    assert sorted(decoded["books"]) == sorted(second)
    validation = decode_shards(out, tokenizer, split="validation")
    assert len(validation["web"]) == 3 and len(validation["books"]) == 3
    assert web["validation"]["documents"] == 3 and web["train"]["documents"] == 27


def test_manifest_records_tokenizer_shards_and_mixture(dedup_build, tiny_tokenizer_dir):
    recipe, out, _, _ = dedup_build
    manifest = json.loads((out / "manifest.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    assert manifest["format_version"] == 1
    assert manifest["tokenizer"] == {
        "path": str(tiny_tokenizer_dir.resolve()),
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "vocab_size": len(tokenizer),
        "eos_id": tokenizer.eos_token_id,
        "bos_id": None,
        "adds_bos": False,
    }
    assert manifest["dtype"] == "uint16" and manifest["seq_len"] == 16 and manifest["seed"] == 3
    for shard in manifest["shards"]:
        assert shard["tokens"] > 0 and shard["documents"] > 0  # never an empty shard
        assert file_sha256(out / shard["path"]) == shard["sha256"]
        assert (out / shard["path"]).stat().st_size == 2 * shard["tokens"]
    web, books = manifest["sources"]
    assert web["weight"] == pytest.approx(2 / 3) and books["weight"] == pytest.approx(1 / 3)
    # no target given: the target is every training token, and epochs follow the weights
    train = manifest["splits"]["train"]["tokens"]
    assert manifest["target_tokens"] == train == web["tokens"] + books["tokens"]
    assert web["epochs"] == pytest.approx(2 / 3 * train / web["tokens"])
    report = (out / "report.md").read_text()
    assert f"| web | {web['tokens'] / 1e3:.2f}K | 66.7% | {web['epochs']:.2f} |" in report
    assert "| books | 33 | 0 | 0 | 1 | 2 | 0 | 30 |" in report
    # intermediate files are gone; the step records stay
    assert not (out / "work" / "scan").exists() and (out / "work" / "steps").is_dir()


def test_rerun_does_nothing_and_other_settings_are_refused(dedup_build, caplog):
    recipe, out, _, _ = dedup_build
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with caplog.at_level("INFO"):
        build_data(recipe)
    assert "is complete with these settings; nothing to do" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    raw = recipe.model_dump(mode="json")
    raw["data"]["sources"][1]["weight"] = 2.0
    raw["data"]["seq_len"] = 32
    changed = validate_recipe(raw)
    with pytest.raises(RunDirError) as error:
        build_data(changed)
    assert str(error.value) == (
        f"{out} holds a data build made with other settings (changed: data.sources[1].weight, "
        "data.seq_len); run `llmtrain data` with --overwrite to rebuild it (steps whose inputs "
        "did not change are reused), or set output_dir to another directory"
    )
    assert (out / "manifest.json").is_file()  # the refused run touched nothing


def test_filters_count_what_they_drop_per_source(tiny_tokenizer_dir, tmp_path):
    good = english_documents(9, seed=21)
    words = good[0].split()
    lines = [" ".join(words[i : i + 10]) for i in range(0, len(words), 10)]
    bullets = "\n".join("- " + line for line in lines)  # 50+ words, every line a bullet
    repeated = "\n".join(lines + lines[:6])  # 6 of 16 lines repeat an earlier one
    prose = [*good[1:6], "Hi there.", bullets, "too short to keep", repeated, "\x00\x07 \n", ""]
    code = [*good[6:], bullets]
    out = build_data(
        validate_recipe(
            data_recipe(
                tmp_path,
                tiny_tokenizer_dir,
                [
                    {"name": "prose", "paths": [str(write_jsonl(tmp_path / "p.jsonl", prose))]},
                    {
                        "name": "code",
                        "paths": [str(write_jsonl(tmp_path / "c.jsonl", code))],
                        "filters": {"gopher_quality": {"enabled": False}},
                    },
                ],
                validation={"fraction": 0},
            )
        )
    )
    manifest = json.loads((out / "manifest.json").read_text())
    prose_entry, code_entry = manifest["sources"]
    assert prose_entry["documents_read"] == 11 and prose_entry["after_filters"] == 5
    assert prose_entry["dropped"] == {"empty": 2, "gopher_quality": 1, "length": 2, "repetition": 1}
    assert prose_entry["dropped_detail"] == {
        "empty.after_cleaning": 1,
        "empty.no_text": 1,
        "gopher_quality.max_bullet_lines_ratio": 1,
        "length.min_words": 2,
        "repetition.max_duplicate_lines_ratio": 1,
    }
    # the source that turned the quality filter off keeps the bullet list
    assert code_entry["dropped"] == {} and code_entry["documents"] == 4
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    decoded = decode_shards(out, tokenizer)
    assert decoded == {"prose": good[1:6], "code": [*good[6:], bullets]}
    report = (out / "report.md").read_text()
    assert (
        "| prose | 11 | 0 | empty 2, gopher_quality 1, length 2, repetition 1 | 0 | 0 | 0 | 5 |"
        in (report)
    )
    assert "- prose: gopher_quality.max_bullet_lines_ratio 1" in report


def test_decontamination_catches_a_planted_13gram(tiny_tokenizer_dir, tmp_path):
    passage = english_documents(1, seed=9, words=(40, 41))[0]
    words = passage.split()
    docs = english_documents(6, seed=4)
    # 13 consecutive eval words, with other case and punctuation, inside a training document
    docs[1] = docs[1] + " " + " ".join(words[10:23]).upper().replace(" ", ", ")
    docs[2] = docs[2] + " " + " ".join(words[10:22])  # 12 words: not contaminated
    docs[3] = docs[3] + " " + " ".join(words[25:38])  # 13 words of the second eval item
    eval_a = write_jsonl(tmp_path / "eval_a.jsonl", [passage], field="question")
    eval_b = tmp_path / "eval_b.jsonl"
    eval_b.write_text(
        json.dumps({"prompt": [{"role": "user", "content": " ".join(words[25:])}], "answer": "42"})
        + "\n"
    )
    recipe = validate_recipe(
        data_recipe(
            tmp_path,
            tiny_tokenizer_dir,
            [{"name": "web", "paths": [str(write_jsonl(tmp_path / "web.jsonl", docs))]}],
            decontamination={"eval_files": [str(eval_a), str(eval_b)]},
            validation={"fraction": 0},
        )
    )
    out = build_data(recipe)
    (web,) = json.loads((out / "manifest.json").read_text())["sources"]
    # docs[3]'s words 25..37 are in both eval files: the first listed one is named
    assert web["decontaminated"] == {str(eval_a): 2}
    assert web["documents"] == 4
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    kept = decode_shards(out, tokenizer)["web"]
    assert docs[2] in kept and docs[1] not in kept and docs[3] not in kept
    assert f"- web: `{eval_a}` 2" in (out / "report.md").read_text()


def test_mixture_shares_epochs_and_max_epochs(dedup_build, tmp_path, caplog):
    recipe, out, _, _ = dedup_build
    manifest = json.loads((out / "manifest.json").read_text())
    web, books = manifest["sources"]
    # the loader draws the weights' token shares
    batches = TrainBatches(out, seq_len=16, micro_batch_size=8, seed=1)
    for _ in range(200):
        next(batches)
    shares = batches.tokens_per_source
    total = sum(shares.values())
    assert abs(shares["web"] / total - 2 / 3) < 0.01
    assert abs(shares["books"] / total - 1 / 3) < 0.01
    # work on a copy of the build: the step records travel with it
    copy = tmp_path / "out" / "data"
    shutil.copytree(out, copy)
    out = copy
    # a target that needs more epochs of `books` than allowed is refused, naming the numbers
    raw = recipe.model_dump(mode="json")
    raw["output_dir"] = str(tmp_path / "out")
    raw["data"]["target_tokens"] = 12 * manifest["splits"]["train"]["tokens"]
    raw["data"]["sources"][1]["max_epochs"] = 4
    with pytest.raises(RecipeError) as error:
        build_data(validate_recipe(raw), overwrite=True)
    target = 12 * manifest["splits"]["train"]["tokens"]
    assert str(error.value) == (
        f"data.sources[1] (books): the target of {target:,} tokens x weight 0.333 needs "
        f"{target / 3:,.0f} tokens from this source, {target / 3 / books['tokens']:.2f} epochs "
        f"of its {books['tokens']:,} training tokens, above max_epochs 4; lower its weight or "
        "data.target_tokens, raise max_epochs, or add text to the source (then run `llmtrain "
        "data` again: finished steps are reused)"
    )
    # allowed: only the manifest is rewritten (no file is scanned or tokenized again)
    raw["data"]["sources"][1]["max_epochs"] = 16
    with caplog.at_level("INFO"):
        build_data(validate_recipe(raw), overwrite=True)
    assert "every step was done before; writing the manifest" in caplog.text
    new = json.loads((out / "manifest.json").read_text())
    assert new["target_tokens"] == target
    assert new["sources"][1]["epochs"] == pytest.approx(target / 3 / books["tokens"])
    assert new["shards"] == manifest["shards"]
    # the report's GPT-3-style table: weight in mix and epochs at the target, per source
    epochs = [target * w / s["tokens"] for w, s in zip((2 / 3, 1 / 3), (web, books), strict=True)]
    assert epochs[1] > 4  # books repeated past the max_epochs that was refused above
    report = (out / "report.md").read_text()
    assert f"| 66.7% | {epochs[0]:.2f} |" in report and f"| 33.3% | {epochs[1]:.2f} |" in report
    assert f"target {target / 1e3:.2f}K tokens" in report


def test_a_vocabulary_above_65536_gets_uint32_shards(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", unk_token="[UNK]"
    ).save_pretrained(str(tmp_path / "big"))
    rng = np.random.default_rng(0)
    docs = [" ".join(f"w{i}" for i in rng.integers(0, 70_000, 40)) for _ in range(6)]
    out = build_data(
        validate_recipe(
            data_recipe(
                tmp_path,
                tmp_path / "big",
                [{"name": "ids", "paths": [str(write_jsonl(tmp_path / "ids.jsonl", docs))]}],
                filters={
                    "length": {"min_words": 1},
                    "gopher_quality": {"enabled": False},
                    "repetition": {"enabled": False},
                },
                validation={"fraction": 0},
            )
        )
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "uint32" and manifest["tokenizer"]["vocab_size"] == 70_002
    (shard,) = manifest["shards"]
    assert (out / shard["path"]).stat().st_size == 4 * shard["tokens"] == 4 * 41 * 6
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "big"))
    assert decode_shards(out, tokenizer) == {"ids": docs}  # ids above 65535 survive
    batch = next(TrainBatches(out, seq_len=16, micro_batch_size=4, seed=0))
    assert int(batch.max()) > 65_535


def test_sources_in_every_format_with_their_own_fields(tiny_tokenizer_dir, tmp_path):
    docs = english_documents(9, seed=11)
    pq.write_table(pa.Table.from_pylist([{"content": d} for d in docs[:3]]), tmp_path / "a.parquet")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n\n".join(docs[3:6]) + "\n")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "part-1.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(
            "".join(json.dumps({"text": d}) + "\n" for d in docs[6:]).encode()
        )
    )
    out = build_data(
        validate_recipe(
            data_recipe(
                tmp_path,
                tiny_tokenizer_dir,
                [
                    {
                        "name": "parquet",
                        "paths": [str(tmp_path / "a.parquet")],
                        "text_field": "content",
                    },
                    {
                        "name": "text",
                        "paths": [str(tmp_path / "b.txt.gz")],
                        "text_mode": "paragraph",
                    },
                    {"name": "zst", "paths": [str(tmp_path / "c" / "*.zst")]},
                ],
                validation={"fraction": 0},
            )
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    decoded = decode_shards(out, tokenizer)
    assert decoded == {"parquet": docs[:3], "text": docs[3:6], "zst": docs[6:]}
