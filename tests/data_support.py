"""Helpers shared by the data pipeline tests: synthetic builds and small recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmtrain.data_pipeline.manifest import FORMAT_VERSION
from llmtrain.data_pipeline.shards import ShardWriter, dtype_name


def write_synthetic_build(
    out: Path,
    sources: dict[str, tuple[list[list[np.ndarray]], float]],
    validation: dict[str, list[list[np.ndarray]]] | None = None,
    *,
    seq_len: int = 8,
    dtype: np.dtype = np.dtype("<u2"),
) -> Path:
    """A data build written directly: per source, its train shards (each a list of documents,
    each an array of token ids) and its weight; optional validation shards."""
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    entries = []
    for name, (train, weight) in sources.items():
        per_split = {"train": train, "validation": (validation or {}).get(name, [])}
        totals = {}
        for split, split_shards in per_split.items():
            totals[split] = {"tokens": 0, "documents": 0}
            for number, documents in enumerate(split_shards):
                relative = f"shards/{name}/{split}-{number:05d}.bin"
                (out / relative).parent.mkdir(parents=True, exist_ok=True)
                with ShardWriter(out / relative, dtype) as writer:
                    for document in documents:
                        writer.add(document)
                shards.append(
                    {
                        "path": relative,
                        "index": relative[: -len(".bin")] + ".idx",
                        "split": split,
                        "source": name,
                        "tokens": writer.tokens,
                        "documents": writer.documents,
                        "sha256": writer.sha256,
                    }
                )
                totals[split]["tokens"] += writer.tokens
                totals[split]["documents"] += writer.documents
        entries.append(
            {"name": name, "weight": weight, "tokens": totals["train"]["tokens"], **totals}
        )
    total_weight = sum(e["weight"] for e in entries)
    for entry in entries:
        entry["weight"] /= total_weight
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer": {
            "path": "",
            "fingerprint": "",
            "vocab_size": 65536,
            "eos_id": 0,
            "bos_id": None,
            "adds_bos": False,
        },
        "dtype": dtype_name(dtype),
        "seq_len": seq_len,
        "seed": 0,
        "target_tokens": sum(e["tokens"] for e in entries),
        "sources": entries,
        "shards": shards,
    }
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return out


def arange_documents(start: int, count: int, length: int) -> list[np.ndarray]:
    """`count` documents of `length` consecutive ids from `start` (each id appears once)."""
    return [np.arange(start + i * length, start + (i + 1) * length) for i in range(count)]


WORDS = (
    "river stone garden window letter market winter summer castle forest village bridge "
    "doctor teacher engine signal harbor planet silver golden kitchen painter dancer story "
    "morning evening question answer number pattern history science music theater museum "
    "ocean mountain valley desert island journey travel station machine library corner "
    "shadow thunder feather candle mirror pocket ticket yellow purple orange careful simple "
    "gentle quiet bright narrow ancient modern wooden crystal frozen hidden famous honest "
    "clever brave lonely busy lucky sudden distant tender mighty humble walks builds finds "
    "keeps opens paints reads writes carries follows watches gathers remembers explains"
).split()
STOP = ["the", "of", "and", "to", "with", "that", "have", "be"]


def english_document(rng: np.random.Generator, words: int) -> str:
    """Plausible English prose: sentences of random content words and stop words."""
    out: list[str] = []
    sentences = []
    while len(out) < words:
        length = int(rng.integers(8, 14))
        sentence = [
            STOP[int(rng.integers(len(STOP)))]
            if i % 3 == 1
            else WORDS[int(rng.integers(len(WORDS)))]
            for i in range(length)
        ]
        out.extend(sentence)
        sentences.append(" ".join(sentence).capitalize() + ".")
    return " ".join(sentences)


def english_documents(count: int, seed: int, words: tuple[int, int] = (60, 120)) -> list[str]:
    rng = np.random.default_rng(seed)
    return [english_document(rng, int(rng.integers(*words))) for _ in range(count)]


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({field: text}, ensure_ascii=False) + "\n")
    return path


def data_recipe(tmp_path: Path, tokenizer_dir: Path, sources: list[dict], **data) -> dict:
    """A raw recipe with a `data:` section (sources as given, one process, tiny sequences)."""
    section = {
        "tokenizer": str(tokenizer_dir),
        "seq_len": 16,
        "num_proc": 1,
        "sources": sources,
        **data,
    }
    return {"name": "data-test", "output_dir": str(tmp_path / "out"), "seed": 3, "data": section}


def decode_shards(build_dir: Path, tokenizer, split: str | None = None) -> dict[str, list[str]]:
    """Per source, the documents of its shards decoded back to text (separators removed)."""
    from llmtrain.data_pipeline.manifest import read_manifest
    from llmtrain.data_pipeline.shards import dtype_from_name, read_offsets

    manifest = read_manifest(build_dir)
    dtype = dtype_from_name(manifest["dtype"])
    out: dict[str, list[str]] = {}
    for shard in manifest["shards"]:
        if split is not None and shard["split"] != split:
            continue
        tokens = np.fromfile(build_dir / shard["path"], dtype=dtype)
        offsets = read_offsets(build_dir / shard["index"])
        for start, end in zip(offsets[:-1], offsets[1:], strict=True):
            ids = tokens[start:end].tolist()
            assert ids[-1] == tokenizer.eos_token_id
            out.setdefault(shard["source"], []).append(tokenizer.decode(ids[:-1]))
    return out
