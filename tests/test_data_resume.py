"""An interrupted build (the process killed with SIGKILL) completes on re-run, redoing only
unfinished steps, and gives the same shards as a build never interrupted (and as one made
with another number of processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from llmtrain.data_pipeline.build import build_data
from llmtrain.recipe import load_recipe
from tests.data_support import english_documents, write_jsonl

FILES = 8


def write_corpus_and_recipe(tmp_path, tokenizer_dir, output_dir):
    corpus = tmp_path / "corpus"
    if not corpus.is_dir():
        for number in range(FILES):
            docs = english_documents(150, seed=100 + number, words=(150, 300))
            write_jsonl(corpus / f"web-{number}.jsonl", docs)
        write_jsonl(corpus / "books.jsonl", english_documents(100, seed=7))
    recipe = tmp_path / f"{output_dir}.yaml"
    recipe.write_text(
        f"""
name: resume
output_dir: {tmp_path / output_dir}
data:
  tokenizer: {tokenizer_dir}
  seq_len: 32
  num_proc: 2
  shard_text_mb: 0.1
  validation: {{fraction: 0.05}}
  sources:
    - {{name: web, paths: ["{corpus}/web-*.jsonl"], weight: 0.8}}
    - {{name: books, paths: [{corpus / "books.jsonl"}], weight: 0.2}}
""",
        encoding="utf-8",
    )
    return recipe


def shard_digests(build_dir):
    manifest = json.loads((build_dir / "manifest.json").read_text())
    return [(s["path"], s["tokens"], s["sha256"]) for s in manifest["shards"]], manifest


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    ("step_records", "done_before_kill"),
    [("scan--web--*.json", 3), ("shard--*.json", 2)],
    ids=["while-scanning", "while-tokenizing"],
)
def test_killed_build_completes_on_rerun(
    tmp_path, tiny_tokenizer_dir, caplog, step_records, done_before_kill
):
    # the reference: never interrupted, one process
    reference = write_corpus_and_recipe(tmp_path, tiny_tokenizer_dir, "reference")
    expected, expected_manifest = shard_digests(
        build_data(load_recipe(reference, ["data.num_proc=1"]))
    )
    assert len(expected) > 3  # several shards: the kill lands between steps

    recipe = write_corpus_and_recipe(tmp_path, tiny_tokenizer_dir, "killed")
    build_dir = tmp_path / "killed" / "data"
    steps = build_dir / "work" / "steps"
    process = subprocess.Popen(
        [sys.executable, "-m", "llmtrain", "data", str(recipe)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its pool workers die with it
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if steps.is_dir() and len(list(steps.glob(step_records))) >= done_before_kill:
            break
        if process.poll() is not None:
            pytest.fail(f"the build ended before it could be killed:\n{process.stderr.read()}")
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (build_dir / "manifest.json").exists()
    scanned_before = len(list(steps.glob("scan--*.json")))
    written_before = len(list(steps.glob("shard--*.json")))
    assert len(list(steps.glob(step_records))) >= done_before_kill

    caplog.clear()
    with caplog.at_level("INFO", logger="llmtrain.data"):
        build_data(load_recipe(recipe, ["data.num_proc=1"]))  # processes do not change output
    rescanned = [r for r in caplog.messages if r.startswith("scan ")]
    assert len(rescanned) == FILES + 1 - scanned_before  # only the unfinished files
    rewritten = [r for r in caplog.messages if r.startswith("tokenize ") and "shards/" in r]
    got, manifest = shard_digests(build_dir)
    if step_records.startswith("shard"):  # killed while tokenizing: only unwritten shards
        assert scanned_before == FILES + 1 and not rescanned
        assert len(rewritten) == len(got) - written_before > 0
    assert got == expected
    assert manifest["sources"] == expected_manifest["sources"]
    assert not [p for p in build_dir.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]

    # and a finished build run again does nothing
    result = subprocess.run(
        [sys.executable, "-m", "llmtrain", "data", str(recipe)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "is complete with these settings; nothing to do" in result.stderr


@pytest.mark.multiprocess
def test_one_shard_tokenized_by_several_workers_is_the_same(
    tmp_path, tiny_tokenizer_dir, monkeypatch, caplog
):
    from llmtrain.data_pipeline import executor, tokenize
    from llmtrain.recipe import validate_recipe
    from tests.data_support import data_recipe, decode_shards

    docs = english_documents(60, seed=31)
    corpus = write_jsonl(tmp_path / "web.jsonl", docs)
    builds = []
    for name, num_proc, job_documents in (("one", 1, 4096), ("two", 2, 7)):
        monkeypatch.setattr(tokenize, "JOB_DOCUMENTS", job_documents)  # 9 jobs for the shard
        monkeypatch.setattr(executor, "JOB_DOCUMENTS", job_documents)
        raw = data_recipe(tmp_path, tiny_tokenizer_dir, [{"name": "web", "paths": [str(corpus)]}])
        raw["output_dir"] = str(tmp_path / name)
        raw["data"].update(num_proc=num_proc, validation={"fraction": 0})
        caplog.clear()
        with caplog.at_level("INFO", logger="llmtrain.data"):
            builds.append(build_data(validate_recipe(raw)))
        assert f"tokens/s, {num_proc} processes)" in caplog.text
    (one, _), (two, manifest) = (shard_digests(b) for b in builds)
    assert len(manifest["shards"]) == 1 and one == two
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    assert decode_shards(builds[1], tokenizer) == {"web": docs}
