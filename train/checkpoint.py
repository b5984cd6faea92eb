"""Checkpoint files of a pretraining run, and the per-rank state that makes resume exact.

checkpoints/step-N/
    trainer_state.json    step, tokens, world size, scheduler, non-finite streak (rank 0)
    rng-rank{R}.pt        Python, numpy and torch RNG states of rank R
    data-rank{R}.json     the data loader position of rank R
    model.safetensors     model weights (DDP / one process; rank 0)
    optimizer.pt          optimizer state (DDP / one process; rank 0)
    deepspeed/            DeepSpeed's own layout under ZeRO (every rank writes its shards)
    fsdp/                 a torch.distributed.checkpoint directory under FSDP2 (train/fsdp.py)

A checkpoint is written under `checkpoints/.step-N.tmp` by every rank, then, after a barrier,
renamed by rank 0: a reader (or a resumed run) only ever sees complete checkpoints. Nothing is
unpickled: tensors load with `torch.load(weights_only=True)` (DeepSpeed's files too, with its
four plain state classes allow-listed), the rest is JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from safetensors import SafetensorError

from llmtrain.atomic import atomic_write_json
from llmtrain.errors import RunDirError

STATE_FILE = "trainer_state.json"
DEEPSPEED_TAG = "deepspeed"


def temporary_dir(final: Path) -> Path:
    """The name every rank writes a checkpoint under before rank 0 renames it to `final`."""
    return final.with_name(f".{final.name}.tmp")


def capture_rng() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (loadable with weights_only)."""
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_rank_state(directory: Path, rank: int, data_state: dict[str, Any]) -> None:
    """What every rank keeps for itself: its RNG and its data position."""
    torch.save(capture_rng(), directory / f"rng-rank{rank}.pt")
    with open(directory / f"data-rank{rank}.json", "w", encoding="utf-8") as f:
        json.dump(data_state, f)


def read_rank_state(directory: Path, rank: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(rng state, data state) of `rank`."""
    rng = torch.load(directory / f"rng-rank{rank}.pt", weights_only=True)
    with open(directory / f"data-rank{rank}.json", encoding="utf-8") as f:
        data = json.load(f)
    return rng, data


def write_trainer_state(directory: Path, state: dict[str, Any]) -> None:
    atomic_write_json(directory / STATE_FILE, state)


def read_trainer_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    if not path.is_file():
        raise RunDirError(
            f"{directory} is not a pretraining checkpoint (no {STATE_FILE}); pass the "
            "checkpoints/step-N directory of a `llmtrain pretrain` run"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_compatible(state: dict[str, Any], *, world_size: int, engine: str, where: Path) -> None:
    """Refuse to resume a checkpoint written by another number of processes or engine."""
    if state["world_size"] != world_size:
        raise RunDirError(
            f"{where} was written by {state['world_size']} processes and this launch has "
            f"{world_size}; resume with {state['world_size']} processes (resharding a "
            "checkpoint to another world size is not supported)"
        )
    if state["engine"] != engine:
        raise RunDirError(
            f"{where} was written with {state['engine']} and this run uses {engine}; resume "
            "with the same engine settings (the stage's deepspeed or fsdp section)"
        )


def save_model_and_optimizer(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict
) -> None:
    """Plain (DDP / single process) weights as safetensors and optimizer state as tensors."""
    from safetensors.torch import save_model

    save_model(model, str(directory / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), **extra}, directory / "optimizer.pt")


def load_model_and_optimizer(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict:
    """Restore what save_model_and_optimizer wrote; returns the extra entries."""
    from safetensors.torch import load_model

    load_model(model, str(directory / "model.safetensors"), strict=True)
    saved = torch.load(directory / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(saved.pop("optimizer"))
    return saved


@contextlib.contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """Make DeepSpeed's checkpoint loading use torch.load(weights_only=True).

    DeepSpeed 0.19 loads its files with weights_only=False (full unpickling). Its checkpoints
    hold tensors, plain containers and four small state classes; those are allow-listed and
    anything else is refused.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    allowed = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    with torch.serialization.safe_globals(allowed), mock.patch.object(torch, "load", load):
        yield


def unreadable_checkpoint(directory: Path, exc: BaseException) -> RunDirError:
    """The one message for a checkpoint that cannot be loaded: a truncated or damaged file, or
    weights of another model shape (the first size mismatch is named)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if "size mismatch" in line), None)
    detail = detail or (lines[0] if lines else type(exc).__name__)
    return RunDirError(
        f"--resume: cannot load the checkpoint {directory} ({detail}); it is truncated or "
        "damaged, or was written for another model shape; resume from another checkpoint "
        "(--resume PATH) or start again with --overwrite"
    )


LOAD_ERRORS = (
    OSError,
    RuntimeError,
    ValueError,
    KeyError,
    EOFError,
    pickle.UnpicklingError,
    SafetensorError,
)
"""What reading a truncated, damaged or mismatched checkpoint raises."""


def remove_stale(path: Path) -> None:
    """Delete a temporary checkpoint left by a run killed while writing it."""
    if path.exists():
        shutil.rmtree(path)


def publish(tmp: Path, final: Path) -> None:
    """Rename a complete temporary checkpoint into place (rank 0, after every rank wrote)."""
    if final.exists():  # the same step written again by a resumed run: replace it
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
