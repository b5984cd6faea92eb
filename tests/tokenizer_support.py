"""Helpers shared by the tokenizer stage's tests: a small mixed corpus and in-process training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MULTILINGUAL = [
    "Tokenizers should round-trip every string: naïve café, Straße, façade.",
    "分词器必须能够无损地还原每一个字符串，包括中文标点。",
    "トークナイザーは日本語も扱います。",
    "Эмодзи тоже: 😀🎉👩‍💻 and flags 🇫🇷🇯🇵.",
    "def f(x):\n\tif x:\n\t\treturn  x  +  1\n        # eight spaces\n    pass\n",
]


def write_corpus(path: Path, max_bytes: int = 200_000) -> Path:
    """stdlib docs and source, arithmetic problems and a few lines in other scripts."""
    from llmtrain.data_pipeline.arithmetic import make_problems, pretraining_text
    from llmtrain.data_pipeline.stdlib_corpus import iter_documents

    texts = list(iter_documents("docs", max_bytes=max_bytes // 2))
    texts += list(iter_documents("source", max_bytes=max_bytes // 2))
    texts.append(pretraining_text(make_problems(200, seed=0)))
    texts += MULTILINGUAL * 5
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return path


def tokenizer_recipe(tmp_path: Path, corpus: Path | list, seed: int = 0, **section: Any):
    """A validated recipe whose `tokenizer` trains on `corpus` (a path or a sources list)."""
    from llmtrain.recipe import validate_recipe

    sources = corpus if isinstance(corpus, list) else [{"paths": [str(corpus)]}]
    raw = {
        "name": "tok-test",
        "output_dir": str(tmp_path / "run"),
        "seed": seed,
        "tokenizer": {"sources": sources, "vocab_size": 512, "heldout_fraction": 0.1, **section},
    }
    return validate_recipe(raw)


def train(tmp_path: Path, corpus: Path | list, seed: int = 0, overwrite: bool = False, **section):
    """Train in this process; return (tokenizer directory, report.json as a dict)."""
    from llmtrain.tokenizer.train import run_tokenizer

    recipe = tokenizer_recipe(tmp_path, corpus, seed=seed, **section)
    out = run_tokenizer(recipe, overwrite=overwrite)
    return out, json.loads((out / "report.json").read_text(encoding="utf-8"))


def load(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
