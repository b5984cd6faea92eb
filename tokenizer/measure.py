"""How well a tokenizer compresses and reproduces a set of documents.

Text is encoded as the data build encodes it: no special tokens added, and strings that spell a
special token ("<|endoftext|>" inside a document) encoded as text. Words are whitespace-separated.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

BATCH = 256


def measure(backend: Any, texts: Iterable[str], unk_id: int | None = None) -> dict:
    """bytes/token, chars/token, tokens/word, unknown-token rate and exact round-trip over
    `texts`, with `backend` a `tokenizers.Tokenizer`."""
    totals = {"documents": 0, "bytes": 0, "chars": 0, "words": 0, "tokens": 0, "unknown": 0}
    failures = 0
    first_failure: dict | None = None
    saved = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        for batch in _batches(texts):
            encodings = backend.encode_batch(batch, add_special_tokens=False)
            ids = [e.ids for e in encodings]
            decoded = backend.decode_batch(ids, skip_special_tokens=False)
            for text, token_ids, back in zip(batch, ids, decoded, strict=True):
                totals["documents"] += 1
                totals["bytes"] += len(text.encode("utf-8"))
                totals["chars"] += len(text)
                totals["words"] += len(text.split())
                totals["tokens"] += len(token_ids)
                if unk_id is not None:
                    totals["unknown"] += token_ids.count(unk_id)
                if back != text:
                    failures += 1
                    if first_failure is None:
                        first_failure = _difference(text, back)
    finally:
        backend.encode_special_tokens = saved
    tokens = totals["tokens"]
    return {
        **totals,
        "bytes_per_token": totals["bytes"] / tokens if tokens else None,
        "chars_per_token": totals["chars"] / tokens if tokens else None,
        "tokens_per_word": tokens / totals["words"] if totals["words"] else None,
        "unknown_rate": totals["unknown"] / tokens if tokens and unk_id is not None else None,
        "round_trip_exact": failures == 0,
        "round_trip_failures": failures,
        "round_trip_first_failure": first_failure,
    }


def _batches(texts: Iterable[str]):
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _difference(text: str, back: str, context: int = 20) -> dict:
    """Where a decoded text first differs from the original, with a little context."""
    at = next(
        (i for i, (a, b) in enumerate(zip(text, back, strict=False)) if a != b),
        min(len(text), len(back)),
    )
    start = max(0, at - context)
    return {
        "char": at,
        "original": text[start : at + context],
        "decoded": back[start : at + context],
    }


def agreement(backend: Any, processor: Any, texts: Iterable[str]) -> dict:
    """How many documents the converted tokenizer encodes with exactly SentencePiece's ids."""
    same = total = 0
    saved = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        for batch in _batches(texts):
            ours = backend.encode_batch(batch, add_special_tokens=False)
            theirs = processor.encode(batch)
            for a, b in zip(ours, theirs, strict=True):
                total += 1
                same += a.ids == b
    finally:
        backend.encode_special_tokens = saved
    return {"documents": total, "identical": same, "rate": same / total if total else None}
