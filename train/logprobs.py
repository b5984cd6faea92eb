"""Per-token log-probabilities (and entropy) of a causal LM without its [batch, length, vocab]
logits: the one way the RL methods score tokens (PPO's policy and reference, online DPO; GRPO,
RLOO, GSPO and the reference-free methods get the same from TRL's trainers).

It is TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`, kernel
`trl.kernels.ChunkedLogProbFunction`): the backbone's last hidden states go through the output
head in tiles of 4096 tokens x 32768 vocabulary entries, folded into an online logsumexp, so
at most one tile of logits exists; the backward recomputes each tile and accumulates the
gradients in fp32. Final-logit soft-capping and logit scales (Gemma 2, Cohere, Granite) are
applied as the model's own forward applies them, and under DeepSpeed ZeRO-3 the head's
weight is gathered for the kernel (transformers' ZeRO-3 flag must be set:
`deepspeed_zero3_flag`). docs/benchmarks.md#rl-log-probabilities has the memory it saves.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch

IGNORE = -100

_FUSED: weakref.WeakKeyDictionary[Any, tuple[float, bool]] = weakref.WeakKeyDictionary()
"""Models patched by fuse_lm_head, with the (temperature, entropy) they were patched for."""


def fuse_lm_head(model: Any, *, temperature: float = 1.0, entropy: bool = False) -> None:
    """Give `model` (a transformers causal LM, or a PEFT model around one) the fused head:
    `model(..., labels=labels, fused_lm_head=True)` returns per-token log-probabilities at
    `temperature` (and entropies with `entropy`) instead of logits. Its plain forward, and so
    generation, are unchanged. Patching again with the same settings does nothing."""
    from accelerate.utils import is_peft_model
    from trl.trainer.utils import add_fused_lm_head

    target = model.get_base_model() if is_peft_model(model) else model
    settings = (float(temperature), entropy)
    if target in _FUSED:
        if _FUSED[target] != settings:
            raise RuntimeError(
                f"the model's fused head was set up for (temperature, entropy) {_FUSED[target]}, "
                f"not {settings}"
            )
        return
    outputs = ("log_probs", "entropy") if entropy else ("log_probs",)
    add_fused_lm_head(target, temperature=temperature, outputs=outputs)
    _FUSED[target] = settings


def token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    scored: torch.Tensor,
    *,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probabilities, entropies or None), both [batch, length - 1] in fp32: entry j is
    about token j + 1 given the tokens before it, 0 where `scored` (bool, [batch, length]) is
    False at token j + 1. `model` went through fuse_lm_head; gradients flow when enabled."""
    labels = input_ids.masked_fill(~scored.bool(), IGNORE)
    kwargs = {"position_ids": position_ids} if position_ids is not None else {}
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        fused_lm_head=True,
        use_cache=False,
        **kwargs,
    )
    return out.log_probs, out.entropy


def response_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """token_logprobs of the response of left-padded prompt + response rows: [batch, R] for
    the last R = response_mask.shape[1] tokens (0 where response_mask is 0)."""
    width = input_ids.shape[1] - response_mask.shape[1]
    scored = torch.cat([torch.zeros_like(input_ids[:, :width]), response_mask.long()], dim=1)
    logprobs, entropy = token_logprobs(
        model, input_ids, attention_mask, scored.bool(), position_ids=position_ids
    )
    logprobs = logprobs[:, width - 1 :]
    return logprobs, None if entropy is None else entropy[:, width - 1 :]


@contextlib.contextmanager
def deepspeed_zero3_flag(ds_config: dict[str, Any] | None) -> Iterator[None]:
    """Tell transformers (and so TRL's fused head, which gathers the head's sharded weight for
    its kernel in forward and backward) that this process runs ZeRO-3, for the block; nothing
    without a ZeRO-3 config. Accelerate sets the same flag for the TRL-backed trainers."""
    if ds_config is None or ds_config.get("zero_optimization", {}).get("stage") != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    flag = HfDeepSpeedConfig(ds_config)  # held: transformers keeps only a weak reference
    try:
        yield
    finally:
        del flag
        unset_hf_deepspeed_config()
