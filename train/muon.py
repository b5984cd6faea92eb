"""Muon for the hidden weight matrices, AdamW for the rest (`pretrain.optimizer: muon`).

As nanochat and torchtitan do: torch's own `torch.optim.Muon` (momentum, then Newton-Schulz
orthogonalisation of the update) takes the 2-D weight matrices inside the blocks; AdamW takes
the embeddings, the output head (tied or not), norms and biases, and tensors of other shapes
(MoE experts stored as 3-D tensors). Which matrices are "hidden" follows optim.py's decay rule
(`decayed_parameter_names`: matrices that are not embeddings) less the output head.

`MuonAdamW` holds both optimizers as one `torch.optim.Optimizer`: its param_groups are the
two optimizers' own group dicts (so one LambdaLR scales both, each group from its own peak:
`pretrain.muon_lr` for the Muon group, `pretrain.lr` for the AdamW groups), step() steps both,
and its state dict holds both, so a checkpoint resumes exactly.

DeepSpeed ZeRO hands its optimizer flat 1-D partitions of the parameters, which Muon cannot
orthogonalise: refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llmtrain.errors import RecipeError
from llmtrain.train.optim import decayed_parameter_names


def hidden_matrix_names(model: nn.Module) -> list[str]:
    """Names of the 2-D weight matrices Muon updates: decayed matrices (not embeddings) that
    are not the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    params = dict(model.named_parameters())
    return [
        name
        for name in decayed_parameter_names(model)
        if params[name].ndim == 2 and id(params[name]) not in head_ids
    ]


def plan_line(model: nn.Module, zero_stage: int, fsdp: bool = False) -> str:
    """What `llmtrain plan` says about optimizer: muon for this (meta-device) model."""
    if fsdp:
        return (
            "optimizer   muon: refused under FSDP2 (row shards of each matrix); the recipe runs "
            "only with DDP"
        )
    if zero_stage:
        return (
            f"optimizer   muon: refused under DeepSpeed ZeRO-{zero_stage} (flat 1-D partitions); "
            "the recipe runs only with DDP (zero_stage 0)"
        )
    names = set(hidden_matrix_names(model))
    hidden = sum(p.numel() for name, p in model.named_parameters() if name in names)
    return (
        f"optimizer   muon on {hidden:,} hidden-matrix parameters (one 4-byte momentum each "
        f"instead of AdamW's two moments: {4 * hidden / 2**30:.2f} GiB less per GPU than the "
        "ZeRO 0 row), AdamW on the rest"
    )


def check_muon(ds_config: dict[str, Any] | None, where: str = "pretrain") -> None:
    if ds_config is not None:
        raise RecipeError(
            f"{where}.optimizer muon does not run under DeepSpeed ZeRO: ZeRO gives the optimizer "
            "flat 1-D partitions of the parameters and Muon orthogonalises whole weight "
            f"matrices; remove {where}.deepspeed (DDP) or use optimizer: adamw"
        )


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon over `muon_groups` and torch.optim.AdamW over `adamw_groups`, as one
    optimizer (see the module doc)."""

    def __init__(
        self,
        muon_groups: list[dict[str, Any]],
        adamw_groups: list[dict[str, Any]],
        *,
        muon_lr: float,
        momentum: float,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        fused: bool | None,
    ):
        self.muon = torch.optim.Muon(muon_groups, lr=muon_lr, momentum=momentum)
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, fused=fused)
        super().__init__([*self.adamw.param_groups, *self.muon.param_groups], defaults={})
        self._share_groups()

    def _share_groups(self) -> None:
        """Our param_groups are the two optimizers' own dicts (a learning rate set on ours is
        theirs), AdamW's first: the first group's lr is the one logged (pretrain.lr's)."""
        self.param_groups = [*self.adamw.param_groups, *self.muon.param_groups]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise RecipeError(
                "the checkpoint's optimizer state is not Muon's (pretrain.optimizer muon); "
                "resume with the optimizer it was saved with"
            )
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._share_groups()  # loading replaced their group dicts


def build_muon(
    model: nn.Module, groups: list[dict[str, Any]], section: Any, fused: bool | None
) -> MuonAdamW:
    """Muon over the hidden matrices of `groups` (optim.param_groups) at section.muon_lr with
    the decay group's weight_decay; AdamW over everything else as `groups` say."""
    names = set(hidden_matrix_names(model))
    hidden = {id(p) for name, p in model.named_parameters() if name in names}
    muon_params: list[torch.Tensor] = []
    muon_decay = 0.0
    adamw_groups = []
    for group in groups:
        mine = [p for p in group["params"] if id(p) in hidden]
        if mine:
            muon_params.extend(mine)
            muon_decay = group["weight_decay"]
        rest = [p for p in group["params"] if id(p) not in hidden]
        if rest:
            adamw_groups.append({**group, "params": rest})
    if not muon_params:
        raise RecipeError(
            "pretrain.optimizer muon: the model has no hidden 2-D weight matrices for Muon; "
            "use optimizer: adamw"
        )
    return MuonAdamW(
        [{"params": muon_params, "weight_decay": muon_decay, "lr": section.muon_lr}],
        adamw_groups,
        muon_lr=section.muon_lr,
        momentum=section.muon_momentum,
        lr=section.lr,
        betas=(section.beta1, section.beta2),
        eps=section.eps,
        fused=fused,
    )
