"""FSDP2 (`pretrain.fsdp`), the second sharding engine: torch's `fully_shard`, used directly.

    pretrain:
      fsdp: {reshard_after_forward: true, cpu_offload: false}

Applied as torchtitan applies it: each transformer block (the model's no-split module classes,
the layers transformers keeps whole when it spreads a model over devices) becomes one FSDP unit,
then the root, which holds what is left (embeddings, final norm, output head; a block holding a
weight tied to something outside it stays in the root's unit). Every parameter becomes a DTensor
sharded by rows over the processes; a unit's parameters are all-gathered for its forward and
again for its backward (`reshard_after_forward: false` keeps them from forward to backward), and
its gradients are reduce-scattered after every micro-batch's backward, so each process keeps
1/N of the weights, gradients and AdamW moments (ZeRO-3's split). bf16: parameters are gathered
and computed in bf16, gradients reduced in fp32, master weights and AdamW stay fp32 (torchtitan's
MixedPrecisionPolicy). fp16 is refused (it needs a loss scaler for sharded gradients).

The engine takes the loop's calls as the other two (train/engine.py). Checkpoints are
torch.distributed.checkpoint (DCP) directories, `checkpoints/step-N/fsdp/`: every rank writes
its shards of the model and optimizer states (`__R_0.distcp`), rank 0 the index (`.metadata`);
the scheduler, every rank's RNG and data position stay the loop's files. final/ is the full
state dict gathered on rank 0 (safetensors, as every final/).

Muon is refused under FSDP: it orthogonalises whole weight matrices, and FSDP hands the
optimizer row shards of them.
"""

from __future__ import annotations

import contextlib
import math
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from llmtrain.compat import no_split_module_classes
from llmtrain.errors import RecipeError, RunDirError

CHECKPOINT_DIR = "fsdp"
"""The DCP directory inside checkpoints/step-N/."""


def check_fsdp(section: Any, where: str = "pretrain") -> None:
    """What FSDP does not run with, refused before anything is built."""
    if section.precision == "fp16":
        raise RecipeError(
            f"{where}.fsdp runs bf16 or fp32: fp16 would need a loss scaler for the sharded "
            f"gradients, which llmtrain does not build; set {where}.precision: bf16"
        )
    if getattr(section, "optimizer", "adamw") == "muon":
        raise RecipeError(
            f"{where}.optimizer muon does not run under FSDP: FSDP hands the optimizer row "
            "shards of each weight matrix and Muon orthogonalises whole matrices; remove "
            f"{where}.fsdp (DDP) or use optimizer: adamw"
        )


def block_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that become FSDP units of their own: instances of the model's no-split
    classes (transformer blocks) that hold no weight tied to a module outside them, outermost
    first."""
    classes = no_split_module_classes(model)
    occurrences: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        occurrences[id(param)] = occurrences.get(id(param), 0) + 1
    blocks: list[torch.nn.Module] = []
    for module in model.modules():
        if module is model or type(module).__name__ not in classes:
            continue
        if any(module is inside or _contains(inside, module) for inside in blocks):
            continue
        inner: dict[int, int] = {}
        for _, param in module.named_parameters(remove_duplicate=False):
            inner[id(param)] = inner.get(id(param), 0) + 1
        if any(occurrences[key] != count for key, count in inner.items()):
            continue  # a tied weight: it must stay with the root's unit
        blocks.append(module)
    return blocks


def _contains(outer: torch.nn.Module, module: torch.nn.Module) -> bool:
    return any(sub is module for sub in outer.modules())


def shard_model(model: torch.nn.Module, section: Any, *, device: torch.device) -> None:
    """fully_shard every block, then the root (in place); `section` is the stage's (precision,
    compile, fsdp)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    global _group_of_one
    if not dist.is_initialized():  # one process without torchrun: a group of one
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        _group_of_one = True
    fsdp = section.fsdp
    options: dict[str, Any] = {"reshard_after_forward": fsdp.reshard_after_forward}
    if section.precision == "bf16":
        options["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32
        )
    if fsdp.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    else:
        model.to(device)
    for block in block_modules(model):
        if getattr(section, "compile", False):
            block.compile()  # per block, before sharding (torchtitan's order)
        fully_shard(block, **options)
    # the root's parameters are used again by the backward right after the forward (the head)
    fully_shard(model, **{**options, "reshard_after_forward": False})


_group_of_one = False
"""Whether shard_model started the process group (one process, no torchrun)."""


def release_group_of_one() -> None:
    """End the process group shard_model started, so another run in this process starts clean."""
    global _group_of_one
    if _group_of_one:
        import torch.distributed as dist

        dist.destroy_process_group()
        _group_of_one = False


def sharded_groups(
    groups: list[dict[str, Any]], names: dict[int, str], model: torch.nn.Module
) -> list[dict[str, Any]]:
    """The optimizer groups of `model` after fully_shard replaced its parameters: `names` maps
    the id of each parameter before sharding to its name."""
    params = dict(model.named_parameters())
    return [
        {**group, "params": [params[names[id(p)]] for p in group["params"]]} for group in groups
    ]


class FSDPEngine:
    """FSDP2 over a model already sharded by shard_model (see the module doc)."""

    name = "fsdp"

    def __init__(self, model: torch.nn.Module, optimizer: Any, grad_clip: float | None):
        self.model = self.module = model
        self.optimizer = optimizer
        self.grad_clip = grad_clip
        self.parameters = [p for p in model.parameters() if p.requires_grad]

    @property
    def base_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        # every micro-batch's gradients are reduce-scattered and accumulate sharded
        return contextlib.nullcontext()

    def forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        return self.model(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, skip: bool) -> tuple[bool, float | None]:
        """Clip (the norm over every shard: a collective), step and zero the gradients; `skip`
        or a non-finite norm drops this step's gradients instead."""
        max_norm = self.grad_clip if self.grad_clip is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, max_norm)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if skip or not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return False, grad_norm
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True, grad_norm

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def _state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optimizer_state}

    def save(self, directory: Path, is_main: bool) -> None:
        """Every rank writes its shards (collective)."""
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(), checkpoint_id=str(directory / CHECKPOINT_DIR))

    def load(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        path = directory / CHECKPOINT_DIR
        if not (path / ".metadata").is_file():
            raise RunDirError(
                f"{directory}: no {CHECKPOINT_DIR}/.metadata inside; not an FSDP checkpoint"
            )
        state = self._state()
        with safe_dcp_metadata():
            dcp.load(state, checkpoint_id=str(path))
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
        )

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Every weight gathered on rank 0 in CPU memory, for final/ (collective; None off
        rank 0)."""
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return state if dist.get_rank() == 0 else None


# ---------------------------------------------------------------------------------------------
# DCP's index file is a pickle: read it with an unpickler that builds only DCP's record classes


SAFE_METADATA_MODULES = ("torch.distributed.checkpoint.", "torch.distributed.tensor.")
SAFE_METADATA_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a layout by name ("torch.strided")
    ("pathlib", "PosixPath"),
    ("collections", "OrderedDict"),
}


class DCPMetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(SAFE_METADATA_MODULES) or (module, name) in SAFE_METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"the checkpoint's DCP .metadata names {module}.{name}, which a DCP index never "
            "holds; refused"
        )


@contextlib.contextmanager
def safe_dcp_metadata():
    """DCP's FileSystemReader unpickles `.metadata` in full; within this context it can build
    only DCP's own record classes and a few torch values (as checkpoint.weights_only_torch_load
    does for DeepSpeed's files)."""
    from unittest import mock

    from torch.distributed.checkpoint import filesystem

    def load(file: Any) -> Any:
        return DCPMetadataUnpickler(file).load()

    restricted = SimpleNamespace(
        load=load, dump=pickle.dump, HIGHEST_PROTOCOL=pickle.HIGHEST_PROTOCOL
    )
    with mock.patch.object(filesystem, "pickle", restricted):
        yield
