"""A two-node Ray cluster on loopback for the Ray data build tests, started once per session.

Every node and every driver stays on 127.0.0.1: Ray replaces a loopback address with the
machine's network address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its single-machine
setting; `ray.cluster_utils.Cluster` still adds nodes). Token auth is on with a token made
here, so that a `~/.ray/auth_token` left by an earlier `ray.init()` cannot split the nodes
and drivers into token and no-token (Ray 2.59-2.60). The environment is set before Ray is
imported, and restored when the session ends.
"""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NODE = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "object_store_memory": 100 * 2**20}


@pytest.fixture(scope="session")
def ray_cluster():
    """(cluster, environment) of a head and one worker node, each with one CPU."""
    environment = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in environment.items():
            patch.setenv(key, value)
        pytest.importorskip("ray")
        import ray
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
        try:
            cluster.add_node(**NODE)
            cluster.wait_for_nodes()
            yield cluster, environment
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()


def kill_once_hook() -> None:
    """A Ray worker setup hook (`worker_process_setup_hook`): for each `module:function` of
    LLMTRAIN_TEST_KILL, the first call of the function anywhere in the cluster kills its worker
    process (SIGKILL) instead of returning; a marker file beside LLMTRAIN_TEST_KILL_DIR records
    that it happened."""
    import importlib

    marker_dir = Path(os.environ["LLMTRAIN_TEST_KILL_DIR"])
    for target in os.environ["LLMTRAIN_TEST_KILL"].split(","):
        module_name, name = target.split(":")
        module = importlib.import_module(module_name)
        original = getattr(module, name)

        def dying(*args, _original=original, _marker=marker_dir / target, **kwargs):
            try:
                os.close(os.open(_marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:  # killed once already: work as usual
                return _original(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        setattr(module, name, dying)


def stall_on_node_hook() -> None:
    """A Ray worker setup hook: on the node whose id is LLMTRAIN_TEST_STALL_NODE, a call of
    `scan.process_chunk` creates the file LLMTRAIN_TEST_STALL_MARKER and waits (up to 60 s) for
    the test to take the node away; elsewhere it works as usual."""
    import time

    import ray

    from llmtrain.data_pipeline import scan

    original = scan.process_chunk

    def stalling(*args, **kwargs):
        if ray.get_runtime_context().get_node_id() == os.environ["LLMTRAIN_TEST_STALL_NODE"]:
            Path(os.environ["LLMTRAIN_TEST_STALL_MARKER"]).touch()
            time.sleep(60)
        return original(*args, **kwargs)

    scan.process_chunk = stalling
