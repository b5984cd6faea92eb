"""AdamW with decay only on weight matrices, and the learning-rate schedules.

Schedules (the multiplier of the peak lr at step s, 0-based; warmup is linear from lr/warmup):

    cosine    warmup, then cosine from 1 to min_lr_ratio at the last step
    linear    warmup, then linear from 1 to min_lr_ratio at the last step
    wsd       warmup, hold 1 (stable), then linear to min_lr_ratio over the last decay_steps
    constant  warmup, then 1

The multiplier is a pure function of the step, so restoring the step restores the schedule.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def param_groups(
    model: nn.Module, weight_decay: float, lr: float | None = None
) -> list[dict[str, Any]]:
    """Two groups: weight matrices (decayed) and norms, biases and embeddings (not decayed).

    The one decay rule of every stage (pretraining, PPO, and the TRL-backed methods through
    `no_decay_parameter_names`). Embeddings are found by module type, so a tied output head
    (the same tensor) is not decayed either; an untied one is a Linear and is. `lr` sets the
    groups' own learning rate (PPO's value model trains at value_lr).
    """
    decay_names = set(decayed_parameter_names(model))
    decay, no_decay = [], []
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (decay if name in decay_names else no_decay).append(param)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if lr is not None:
        for group in groups:
            group["lr"] = lr
    return groups


def decayed_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters weight decay applies to: matrices that are not embeddings."""
    embedding_params = {
        id(param)
        for module in model.modules()
        if isinstance(module, nn.Embedding)
        for param in module.parameters(recurse=False)
    }
    return [
        name
        for name, param in model.named_parameters()
        if param.ndim >= 2 and id(param) not in embedding_params
    ]


def fused_available(device: torch.device) -> bool:
    """torch's fused AdamW runs on CUDA and (since torch 2.4) on the CPU."""
    return device.type in ("cuda", "cpu")


def build_optimizer(
    groups: list[dict[str, Any]],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    device: torch.device,
    cpu_adam: bool,
) -> torch.optim.Optimizer:
    """AdamW over `groups`: torch's (fused where the device has the kernel), or DeepSpeed's CPU
    Adam in AdamW mode (C++/SIMD, JIT-built on first use) when ZeRO-Offload keeps the optimizer
    states on the CPU."""
    if cpu_adam:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, eps=eps, adamw_mode=True)
    return torch.optim.AdamW(
        groups, lr=lr, betas=betas, eps=eps, fused=fused_available(device) or None
    )


def lr_multiplier(
    step: int,
    *,
    schedule: str,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float,
    decay_steps: int,
) -> float:
    """The share of the peak learning rate used at optimizer step `step` (0-based)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    last = max(total_steps - 1, 1)
    if schedule == "wsd":
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return 1.0
        progress = min((step - decay_start + 1) / decay_steps, 1.0)
        return 1.0 - (1.0 - min_lr_ratio) * progress
    span = max(last - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if schedule == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    if schedule == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, section: Any
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over `optimizer` following the recipe's pretrain section."""

    def multiplier(step: int) -> float:
        return lr_multiplier(
            step,
            schedule=section.schedule,
            total_steps=section.steps,
            warmup_steps=section.resolved_warmup_steps,
            min_lr_ratio=section.min_lr_ratio,
            decay_steps=section.resolved_decay_steps,
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
