"""Helpers shared by the pretraining tests: small data builds and recipes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.conftest import REPO


def build_data(out_dir: Path, tokenizer_dir: Path, seq_len: int, max_bytes: int = 300_000) -> Path:
    """A data build (`llmtrain data`) of Python's standard library docs, tokenized with
    `tokenizer_dir`; 5% of documents for validation. Returns the build directory."""
    from llmtrain.data_pipeline.build import build_data as run_data_build
    from llmtrain.data_pipeline.stdlib_corpus import iter_documents, write_jsonl
    from llmtrain.recipe import validate_recipe

    corpus = out_dir / "stdlib_docs.jsonl"
    write_jsonl(corpus, iter_documents("docs", max_bytes=max_bytes))
    recipe = validate_recipe(
        {
            "name": "pretrain-test-data",
            "output_dir": str(out_dir),
            "seed": 5,
            "data": {
                "tokenizer": str(tokenizer_dir),
                "seq_len": seq_len,
                "num_proc": 1,
                "sources": [{"name": "stdlib-docs", "paths": [str(corpus)]}],
                "filters": {"length": {"min_words": 5}},
                "dedup": {"near": {"enabled": False}},
                "validation": {"fraction": 0.05},
            },
        }
    )
    return run_data_build(recipe)


def add_mlm_and_span_tokens(tokenizer_dir: Path, out_dir: Path, sentinels: int = 40) -> Path:
    """The tiny tokenizer plus [MASK] and <extra_id_N> sentinels (for mlm and span)."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tokenizer.add_special_tokens({"mask_token": "[MASK]"})
    extra = [AddedToken(f"<extra_id_{i}>", special=True) for i in range(sentinels)]
    tokenizer.add_tokens(extra, special_tokens=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def write_pretrain_recipe(
    path: Path, *, output_dir: Path, data: Path, model: str, pretrain: str, extra: str = ""
) -> Path:
    """A recipe with the given `model:` and `pretrain:` bodies (YAML, indented by the caller)."""
    text = f"""\
name: test-pretrain
output_dir: {output_dir}
seed: 11
model:
{textwrap.indent(textwrap.dedent(model).strip(), "  ")}
pretrain:
  data: {data}
{textwrap.indent(textwrap.dedent(pretrain).strip(), "  ")}
{textwrap.dedent(extra).strip()}
"""
    path.write_text(text, encoding="utf-8")
    return path


def read_records(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def curve(records: list[dict], *keys: str) -> list[tuple]:
    """(step, key values...) for the records that hold the first key."""
    return [(r["step"], *(r.get(k) for k in keys)) for r in records if keys[0] in r]


LAUNCHER = REPO / "scripts" / "launch" / "torchrun_multinode.sh"
