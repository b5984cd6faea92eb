"""Document masking (`pretrain.document_masking: true`): a packed window's tokens attend only
within their own document, and positions restart at each document.

The loader gives each window the positions of its tokens in their documents (from the data
build's .idx offsets: 0 at each document's first token and at the window's first token). The
objective passes them to the model as `position_ids` and no attention mask; transformers then
detects the packed documents from the restarting positions (masking_utils.
find_packed_sequence_indices) and builds a block-diagonal causal mask for sdpa, eager and flex
attention, while flash_attention_2 runs its variable-length kernel on the same position_ids.
A document's logits are therefore those it has alone (tests/test_pretrain_features.py).

Only causal LM (clm) is supported: the encoders' bidirectional mask (mlm) and T5's span
corruption (span) do not derive packing from position_ids, so they are refused.
"""

from __future__ import annotations

from typing import Any

from llmtrain.errors import RecipeError
from llmtrain.train.objectives import ModelInputs


def check_document_masking(objective: str) -> None:
    """Refuse document masking for an objective it does not support."""
    if objective != "clm":
        raise RecipeError(
            f"pretrain.document_masking: supported for the clm objective (decoder models) only, "
            f"not {objective} (the encoder and encoder-decoder models build their attention "
            "mask without the per-document positions); set document_masking: false"
        )


class DocumentMasking:
    """The clm objective over PackedWindows: its inputs plus per-document `position_ids`."""

    def __init__(self, objective: Any):
        self.objective = objective
        self.name = objective.name

    def prepare(self, windows: Any, generator: Any) -> ModelInputs:
        inputs = self.objective.prepare(windows.tokens, generator)
        inputs.inputs["position_ids"] = windows.positions[:, :-1]
        return inputs
