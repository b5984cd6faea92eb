"""The mixture: per-source weights and a token target give each source's effective epochs.

A source holding T_s training tokens, with normalised weight w_s, contributes w_s x target
tokens to training, i.e. w_s x target / T_s passes over its text: above 1 a small source is
repeated (a fresh window order each epoch), below 1 a large one is subsampled (training ends
before the loader has drawn all its windows). The loader's blend realises the weights; this
module computes and checks the plan, and picks each source's validation documents.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from llmtrain.errors import RecipeError

from .config import DataSection, ValidationSection


@dataclass
class SourcePlan:
    name: str
    weight: float  # normalised
    tokens: int  # training tokens
    epochs: float  # at the target
    max_epochs: float | None


def plan_mixture(
    section: DataSection, train_tokens: dict[str, int]
) -> tuple[float, list[SourcePlan]]:
    """(target tokens, per-source plan); RecipeError when a source would need too many epochs."""
    total_weight = sum(s.weight for s in section.sources)
    target = float(section.target_tokens or sum(train_tokens.values()))
    plans = []
    for index, source in enumerate(section.sources):
        weight = source.weight / total_weight
        tokens = train_tokens[source.name]
        epochs = weight * target / tokens
        limit = section.max_epochs_of(source)
        if limit is not None and epochs > limit:
            raise RecipeError(
                f"data.sources[{index}] ({source.name}): the target of {target:,.0f} tokens x "
                f"weight {weight:.3f} needs {weight * target:,.0f} tokens from this source, "
                f"{epochs:.2f} epochs of its {tokens:,} training tokens, above max_epochs "
                f"{limit:g}; lower its weight or data.target_tokens, raise max_epochs, or add "
                "text to the source (then run `llmtrain data` again: finished steps are reused)"
            )
        plans.append(SourcePlan(source.name, weight, tokens, epochs, limit))
    return target, plans


def source_key(seed: int, name: str) -> list[int]:
    """Seed material of one source: the recipe seed and a stable hash of the source name."""
    return [seed, zlib.crc32(name.encode("utf-8"))]


def validation_documents(documents: int, settings: ValidationSection, key: list[int]) -> np.ndarray:
    """Sorted indices (among a source's kept documents) held out for validation."""
    if documents < 2 or settings.fraction == 0:
        return np.zeros(0, dtype=np.int64)
    count = max(round(settings.fraction * documents), settings.min_documents)
    count = min(count, documents - 1)  # never the whole source
    rng = np.random.default_rng(key)
    return np.sort(rng.choice(documents, size=count, replace=False)).astype(np.int64)


def shard_ranges(text_bytes: np.ndarray, limit_bytes: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) runs of documents with about `limit_bytes` of text each: a
    document goes to the shard where its first byte falls."""
    if len(text_bytes) == 0:
        return []
    starts = np.cumsum(text_bytes, dtype=np.int64) - np.asarray(text_bytes, dtype=np.int64)
    shard = starts // max(1, int(limit_bytes))
    edges = np.flatnonzero(np.diff(shard)) + 1
    bounds = [0, *edges.tolist(), len(text_bytes)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))
