import random

import torch

from llmtrain.runtime import dist_env, pick_device, seed_everything


def test_dist_env_reads_torchrun_variables(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert dist_env().world_size == 1 and dist_env().is_main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    env = dist_env()
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (3, 1, 4, 2)
    assert not env.is_main and env.is_distributed


def test_seed_everything_reproduces_python_numpy_and_torch():
    import numpy as np

    def draw():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    seed_everything(11)
    first = draw()
    seed_everything(11)
    assert draw() == first
    seed_everything(12)
    assert draw() != first


def test_pick_device_on_this_machine():
    assert pick_device() == ("cuda:0" if torch.cuda.is_available() else "cpu")


def test_setup_logging_rank_0_informs_other_ranks_only_warn(monkeypatch):
    import logging

    from llmtrain.runtime import setup_logging

    monkeypatch.setenv("WORLD_SIZE", "2")
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        setup_logging(rank=0)
        assert root.level == logging.INFO
        assert "[rank 0] " in root.handlers[0].formatter._fmt
        setup_logging(rank=1)
        assert root.level == logging.WARNING
        setup_logging(rank=0, debug=True)
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
