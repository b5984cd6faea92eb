"""float8 training (`pretrain.float8: true`): torchao's float8 linear layers, Hopper or newer.

`torchao.float8.convert_to_float8_training` swaps the model's `nn.Linear` layers for
`Float8Linear`: the forward and backward matmuls run in float8 (e4m3 inputs and weights, e5m2
gradients) with dynamic tensorwise scales, on the GPU's float8 tensor cores (compute
capability 9.0+: H100, H200, B200). Weights, gradients and optimizer states stay as they were
(fp32 under bf16 autocast), so memory is that of bf16 training; only the block matmuls get
faster. Layers are converted unless they are the output head (its logits feed the loss, as
torchtitan leaves it) or a dimension is not a multiple of 16 (float8 matmul's requirement).

Refused before anything runs: on a machine without a CUDA GPU, on a GPU below compute
capability 9.0, without torchao, or with a precision other than bf16. The GPU path cannot be
run on the CPU machine the tests use: scripts/gpu_check.sh checks it on a GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from llmtrain.errors import StageInputError

HOPPER_OR_NEWER = ("H100", "H200", "GH200", "H800", "H20", "B200", "B100", "GB200", "B300")
"""GPU names (as `plan --gpu` takes them) with float8 tensor cores (compute capability 9.0+)."""


def float8_refusal(*, cuda: bool, capability: tuple[int, int] | None, precision: str) -> str | None:
    """Why float8 training cannot run on this device and precision, or None when it can."""
    if not cuda:
        return (
            "pretrain.float8: float8 training needs a CUDA GPU with float8 tensor cores "
            "(compute capability 9.0 or newer: H100, H200, B200) and this machine has no CUDA "
            "GPU; set float8: false"
        )
    if capability is not None and capability < (9, 0):
        major, minor = capability
        return (
            f"pretrain.float8: float8 training needs compute capability 9.0 or newer (H100, "
            f"H200, B200); this GPU has {major}.{minor}; set float8: false"
        )
    if precision != "bf16":
        return (
            f"pretrain.float8: float8 training runs under bf16 autocast; set pretrain.precision "
            f"bf16 (it is {precision}) or float8: false"
        )
    return None


def check_float8(precision: str) -> None:
    """Refuse float8 here (see float8_refusal), or without torchao."""
    cuda = torch.cuda.is_available()
    capability = torch.cuda.get_device_capability() if cuda else None
    reason = float8_refusal(cuda=cuda, capability=capability, precision=precision)
    if reason is not None:
        raise StageInputError(reason)
    try:
        import torchao.float8  # noqa: F401
    except ImportError as exc:
        raise StageInputError(
            "pretrain.float8: the torchao package is not installed (pip install torchao); or "
            "set float8: false"
        ) from exc


def float8_module_filter(model: torch.nn.Module) -> Any:
    """torchao's module_filter_fn: every Linear but the output head and odd shapes."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    def convert(module: torch.nn.Module, fqn: str) -> bool:
        if not isinstance(module, torch.nn.Linear) or module is head:
            return False
        return module.in_features % 16 == 0 and module.out_features % 16 == 0

    return convert


def apply_float8(model: torch.nn.Module, precision: str) -> None:
    """Check, then convert the model's Linear layers to torchao's Float8Linear in place."""
    check_float8(precision)
    from torchao.float8 import convert_to_float8_training

    convert_to_float8_training(model, module_filter_fn=float8_module_filter(model))


def plan_line(gpu: str, precision: str) -> str:
    """What `llmtrain plan` says about float8 on the planned GPU."""
    if not any(name.lower() in gpu.lower() for name in HOPPER_OR_NEWER):
        return (
            f"float8      refused on {gpu}: float8 training needs compute capability 9.0+ "
            f"({', '.join(HOPPER_OR_NEWER[:3])}, ...)"
        )
    if precision != "bf16":
        return f"float8      refused: it runs under bf16 autocast and the recipe has {precision}"
    return (
        "float8      block Linear matmuls in float8 (torchao, tensorwise scales): up to 2x "
        "their bf16 throughput; FLOPs and memory as bf16 (weights, gradients and optimizer "
        "states unchanged); time and MFU above are at the bf16 peak"
    )
