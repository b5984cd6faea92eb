"""A stand-in Slurm for the tests of the Slurm launch scripts (scripts/launch/*.sbatch)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.conftest import REPO


def slurm_stand_ins(bin_dir: Path, nodes: list[str], **more: str) -> dict[str, str]:
    """A stand-in Slurm in bin_dir (scontrol lists `nodes`, srun runs its command here, every
    node's address is 127.0.0.1) and the environment of a job on those nodes."""
    fakes = {
        "scontrol": '[[ "$*" == "show hostnames job-nodes" ]] && printf "%s\\n" ' + " ".join(nodes),
        "srun": 'while [[ "$1" == -* ]]; do [[ "$1" == -w ]] && shift; shift; done; exec "$@"',
        "hostname": '[[ "$1" == --ip-address ]] && echo 127.0.0.1',
        **more,
    }
    bin_dir.mkdir()
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    keep = ("HOME", "LANG", "OMP_WAIT_POLICY")
    env = {k: v for k, v in os.environ.items() if k in keep}
    return env | {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "SLURM_JOB_NODELIST": "job-nodes",
        "SLURM_JOB_ID": "4242",
        "SLURM_CPUS_PER_TASK": "1",
        "SLURM_SUBMIT_DIR": str(REPO),
    }
