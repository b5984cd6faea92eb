"""Document masking (`pretrain.document_masking: true`): a packed window's tokens attend only
within their own document, and positions restart at each document.

The loader gives each window the positions of its tokens in their documents (from the data
build's .idx offsets: 0 at each document's first token and at the window's first token).

- clm: the objective passes them to the model as `position_ids` and no attention mask;
  transformers then detects the packed documents from the restarting positions (masking_utils.
  find_packed_sequence_indices) and builds a block-diagonal causal mask for sdpa, eager and
  flex attention, while flash_attention_2 runs its variable-length kernel on the same
  position_ids.
- mlm (BERT, ModernBERT): the encoders build no mask from position_ids, so the objective also
  passes a block-diagonal bidirectional `attention_mask` made by transformers' own
  create_bidirectional_mask with a same-document condition (in the format of the model's
  attention kernel; ModernBERT gets one for its global and one for its sliding-window layers).

A document's logits are therefore those it has alone (tests/test_pretrain_features.py).

span (T5) is refused: T5ForConditionalGeneration hands the encoder's attention mask to the
decoder's cross-attention too, so a per-document mask cannot be given to both (the encoder's
is inputs x inputs, the cross-attention's targets x inputs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from llmtrain.errors import RecipeError
from llmtrain.train.objectives import ModelInputs


def check_document_masking(objective: str) -> None:
    """Refuse document masking for an objective it does not support."""
    if objective == "span":
        raise RecipeError(
            "pretrain.document_masking: not supported for the span objective (T5): its forward "
            "gives the encoder's attention mask to the decoder's cross-attention as well, so one "
            "per-document mask cannot serve both; set document_masking: false"
        )


def document_ids(positions: torch.Tensor) -> torch.Tensor:
    """Each token's document number within its row (a new one wherever the position is 0)."""
    return torch.cumsum(positions == 0, dim=1)


def same_document(documents: torch.Tensor) -> Callable:
    """A transformers mask function: query and key in the same document."""

    def inner(batch_idx: Any, head_idx: Any, q_idx: Any, kv_idx: Any) -> Any:
        return documents[batch_idx, q_idx] == documents[batch_idx, kv_idx]

    return inner


def bidirectional_document_mask(positions: torch.Tensor, config: Any) -> Any:
    """The attention mask of an encoder over packed documents: every token sees its own
    document, both ways (a dict per layer type for models with sliding-window layers)."""
    from transformers.masking_utils import (
        create_bidirectional_mask,
        create_bidirectional_sliding_window_mask,
    )

    documents = document_ids(positions)
    shape = (*positions.shape, 1)  # only batch, length and dtype are read
    kwargs = {
        "config": config,
        "inputs_embeds": torch.empty(shape, dtype=torch.float32),
        "attention_mask": None,
        "and_mask_function": same_document(documents),
    }
    full = create_bidirectional_mask(**kwargs)
    if "sliding_attention" not in (getattr(config, "layer_types", None) or ()):
        return full
    return {
        "full_attention": full,
        "sliding_attention": create_bidirectional_sliding_window_mask(**kwargs),
    }


class DocumentMasking:
    """An objective (clm or mlm) over PackedWindows: its inputs plus per-document
    `position_ids` (and, for mlm, the block-diagonal attention mask)."""

    def __init__(self, objective: Any, model_config: Any):
        self.objective = objective
        self.name = objective.name
        self.model_config = model_config

    def prepare(self, windows: Any, generator: Any) -> ModelInputs:
        inputs = self.objective.prepare(windows.tokens, generator)
        positions = windows.positions[:, :-1]
        inputs.inputs["position_ids"] = positions
        if self.name == "mlm":
            inputs.inputs["attention_mask"] = bidirectional_document_mask(
                positions, self.model_config
            )
        return inputs
