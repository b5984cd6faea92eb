"""Perplexity and bits per byte of a causal LM on text files or on token windows.

Each token is predicted once: the token stream is cut into windows of seq_len + 1 tokens that
overlap by one. Bits per byte (total NLL in bits over the UTF-8 bytes of the text) compares
models with different tokenizers; perplexity is per token of the model's own tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any


def score_windows(model: Any, windows: Iterable[Any]) -> tuple[float, int]:
    """(total NLL in nats, tokens predicted) over batches of windows [B, seq_len + 1]."""
    import torch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in windows:
            batch = batch.to(device)
            logits = model(input_ids=batch[:, :-1]).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += batch[:, 1:].numel()
    return total, count


def _stream_windows(tokens: list[int], seq_len: int, batch_size: int) -> Iterator[Any]:
    import torch

    starts = list(range(0, max(len(tokens) - 1, 0), seq_len))
    for first in range(0, len(starts), batch_size):
        chunk = [tokens[s : s + seq_len + 1] for s in starts[first : first + batch_size]]
        chunk = [c for c in chunk if len(c) > 1]
        # windows of one batch share a length; a short last window goes alone
        full = [c for c in chunk if len(c) == seq_len + 1]
        if full:
            yield torch.tensor(full, dtype=torch.long)
        for short in (c for c in chunk if len(c) != seq_len + 1):
            yield torch.tensor([short], dtype=torch.long)


def perplexity_on_texts(
    model: Any,
    tokenizer: Any,
    texts: Iterable[str],
    *,
    seq_len: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
) -> dict[str, float]:
    """Loss, perplexity and bits per byte over documents joined by EOS."""
    tokens: list[int] = []
    text_bytes = 0
    eos = tokenizer.eos_token_id
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        tokens.extend(ids)
        if eos is not None:
            tokens.append(eos)
        text_bytes += len(text.encode("utf-8"))
        if max_tokens is not None and len(tokens) >= max_tokens:
            break
    nll, count = score_windows(model, _stream_windows(tokens, seq_len, batch_size))
    return summarize(nll, count, text_bytes)


def summarize(nll: float, tokens: int, text_bytes: int | None) -> dict[str, float]:
    loss = nll / tokens if tokens else float("nan")
    perplexity = math.exp(min(loss, 700.0)) if tokens else float("nan")
    result = {"loss": loss, "perplexity": perplexity, "tokens": tokens}
    if text_bytes:
        result["bits_per_byte"] = nll / math.log(2) / text_bytes
    return result
