"""Process-level helpers shared by every stage: rank/world, seeding, device, logging, cores.

torch is imported inside the functions that need it, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a torchrun launch (rank 0 of 1 when not launched)."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def dist_env() -> DistEnv:
    """Read torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE)."""

    def read(name: str, default: int) -> int:
        value = os.environ.get(name)
        return int(value) if value not in (None, "") else default

    world_size = read("WORLD_SIZE", 1)
    return DistEnv(
        rank=read("RANK", 0),
        local_rank=read("LOCAL_RANK", 0),
        world_size=world_size,
        local_world_size=read("LOCAL_WORLD_SIZE", world_size),
    )


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) from the recipe's seed."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    import torch

    torch.manual_seed(seed)


def pick_device(local_rank: int = 0) -> str:
    """'cuda:<local_rank>' when a GPU is present, else 'cpu'."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{local_rank}"
    return "cpu"


def setup_logging(*, debug: bool = False, rank: int | None = None) -> None:
    """Rank 0 logs at INFO (DEBUG with --debug); other ranks only warnings and errors."""
    if rank is None:
        rank = dist_env().rank
    level = (logging.DEBUG if debug else logging.INFO) if rank == 0 else logging.WARNING
    prefix = f"[rank {rank}] " if dist_env().is_distributed else ""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("urllib3", "filelock", "fsspec", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def available_cpus() -> int:
    """The cores this process may run on (a Slurm or container CPU limit, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
