"""A tokenizer's fingerprint: what a data build records and pretraining checks.

Two tokenizers with the same fingerprint map every string to the same ids: it hashes the
model (vocab, merges), normalizer, pre-tokenizer and added tokens, not file layout or padding
settings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of what decides a fast tokenizer's ids (`tokenizer` is a PreTrainedTokenizerFast)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    relevant = {
        "model": spec.get("model"),
        "normalizer": spec.get("normalizer"),
        "pre_tokenizer": spec.get("pre_tokenizer"),
        "added_tokens": sorted(
            (t["id"], t["content"], t.get("special", False)) for t in spec.get("added_tokens", [])
        ),
    }
    canonical = json.dumps(relevant, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def fingerprint_dir(tokenizer_dir: str | Path) -> str:
    """The fingerprint of the tokenizer saved in a directory (loaded with AutoTokenizer)."""
    from transformers import AutoTokenizer

    return tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
