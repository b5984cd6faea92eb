"""The Ray executor (`data.executor: ray`): the build's heavy steps as Ray tasks.

    scan       one task per part of an input file (`data.ray.scan_part_mb`; a file that cannot
               be read from an offset is one part): read, clean, filter, hash, decontamination
               matches, written to the part's scan directory (`scan.scan_file`, as the local
               executor); a task per file of several parts then concatenates them into the
               file's scan directory (`scan.join_parts`), which Ray starts when they are done
    dedup      a partitioned shuffle (`ray_dedup`): P reducer tasks each hold 1/P of the
               digests and band keys; only duplicate ids and candidate pairs come back
    tokenize   one task per shard: tokenize its documents and write it (`tokenize.write_shard`)

The driver (`llmtrain data`) keeps the step records, so a killed driver resumes as the local
build does. Every node must see the build directory and the inputs at the same paths (a
shared filesystem); a task that cannot is an error naming the node and the path. A task
whose worker or node dies is run again by Ray (`max_retries`); its half-written output is
under a temporary name and is replaced.

`data.ray.address`: `auto` or HOST:PORT joins a running cluster; null starts a Ray on this
machine for the build and stops it at the end.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from llmtrain.errors import InputDataError, LLMTrainError, RecipeError

from . import ray_dedup
from .config import DedupSection, RaySection
from .executor import StepProgress
from .ray_dedup import MAX_RETRIES
from .scan import (
    ScanContext,
    ScanJob,
    ScanOutput,
    ScanPart,
    file_parts,
    init_worker,
    join_parts,
    scan_file,
)
from .tokenize import ShardTask, TokenizerInfo, init_encoder, write_shard

log = logging.getLogger("llmtrain.data")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RecipeError(
            "data.executor is 'ray' but Ray is not installed; install it with "
            "`pip install llmtrain[ray]`, or set data.executor: local (or --executor local)"
        ) from None
    return ray


# ---------------------------------------------------------------------------------------------
# Task bodies (run in Ray workers). The context a task needs is sent once, as an object, and
# set up once per worker process.

_READY: dict[str, str] = {}  # what this worker process has set up: kind -> object id


def _set_up(kind: str, box: list, setup: Any) -> None:
    """Run `setup(*value)` of the object in `box` unless this process already did."""
    ray = import_ray()
    ref = box[0]
    if _READY.get(kind) != ref.hex():
        setup(*ray.get(ref))
        _READY[kind] = ref.hex()


def _check_visible(build_dir: Path, *paths: Path) -> None:
    """Fail clearly on a node that does not see the shared build directory or an input."""
    missing = [p for p in paths if not p.exists()]
    if not (build_dir / "build.json").is_file():
        missing.insert(0, build_dir / "build.json")
    if missing:
        ray = import_ray()
        node = ray.util.get_node_ip_address()
        raise InputDataError(
            f"Ray node {node} cannot see {missing[0]}; the build directory and the inputs "
            "must be on a filesystem every node mounts at the same path (NFS, Lustre, ...)"
        )


def _scan_task(
    build_dir: str, job: ScanJob, part: ScanPart | None, num_perm: int, context_box: list
) -> dict:
    _check_visible(Path(build_dir), job.path)
    _set_up("scan", context_box, init_worker)
    return scan_file(job, num_perm, part=part)


def _join_task(build_dir: str, job: ScanJob, *records: dict) -> dict:
    _check_visible(Path(build_dir))
    return join_parts(job, list(records))


def _shard_task(build_dir: str, task: ShardTask, encoder_box: list) -> dict:
    _check_visible(Path(build_dir))
    _set_up("encoder", encoder_box, lambda info, backend: init_encoder(info, backend, True))
    return write_shard(build_dir, task)


# ---------------------------------------------------------------------------------------------


class RayExecutor:
    name = "ray"

    def __init__(self, settings: RaySection, num_proc: int):
        self.ray = import_ray()
        self.settings = settings
        self.num_proc = num_proc
        self.started = False
        self.workers = "Ray"

    def __enter__(self) -> RayExecutor:
        ray = self.ray
        if ray.is_initialized():  # the caller's connection (e.g. a notebook): leave it open
            pass
        elif self.settings.address is None:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            memory = self.settings.object_store_mb
            ray.init(
                address="local",
                num_cpus=self.settings.num_cpus or self.num_proc,
                object_store_memory=memory * 2**20 if memory else None,
                include_dashboard=False,
                configure_logging=False,
            )
            self.started = True
        else:
            try:
                ray.init(address=self.settings.address, configure_logging=False)
            except ConnectionError as exc:
                raise RecipeError(
                    f"data.ray.address: no Ray cluster at {self.settings.address!r} ({exc}); "
                    "start one (`ray start --head`, see scripts/launch/slurm_data.sbatch), or "
                    "set data.ray.address: null to start a Ray for this build"
                ) from None
            self.started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        nodes = sum(1 for node in ray.nodes() if node["Alive"])
        self.partitions = self.settings.partitions or min(2 * cpus, 512)
        self.workers = f"Ray, {nodes} nodes, {cpus} CPUs"
        log.info("Ray: %d nodes, %d CPUs, %d dedup partitions", nodes, cpus, self.partitions)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False

    def _options(self) -> dict:
        return {"num_cpus": 1, "max_retries": MAX_RETRIES}

    def _get(self, ref: Any) -> Any:
        """The value of a finished task; our own errors are raised as themselves."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, LLMTrainError):
                raise exc.cause from None
            raise

    def run(self, step: str, tasks: dict, fetch: bool = True, consume: Any | None = None) -> dict:
        """Wait for `tasks` ({ref: (documents, message)}), reporting each as it finishes;
        {ref: value} (values fetched only with `fetch`; with `consume`, each value is passed
        to it as it comes instead of being kept)."""
        progress = StepProgress(step, len(tasks))
        results: dict = {}
        pending = list(tasks)
        try:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                ref = done[0]
                if consume is not None:
                    consume(self._get(ref))
                    results[ref] = None
                else:
                    results[ref] = self._get(ref) if fetch else None
                documents, message = tasks[ref]
                progress.update(documents, f"{step}: {message}")
        finally:
            progress.close()
        return results

    def scan(self, jobs: list[ScanJob], context: ScanContext) -> Any:
        """Records of the files' scans, as each finishes: a task per part of a file (a file
        of several parts then has a task that joins them, started by Ray once they are done).
        Progress of the parts (done / total, documents per second) when a file has several;
        the driver reports the files."""
        ray = self.ray
        scan = ray.remote(_scan_task).options(**self._options())
        join = ray.remote(_join_task).options(**self._options())
        box = [ray.put((context,))]
        build_dir = str(jobs[0].directory.parents[3])
        num_perm = context.minhasher.num_perm
        part_bytes = max(1, int(self.settings.scan_part_mb * 2**20))
        parts: dict = {}  # task of a part -> what it scans, for progress
        files: dict = {}  # the task whose end is the file's (its join, or its only part) -> job
        for job in jobs:
            pieces = file_parts(job, part_bytes)
            if pieces is None:
                ref = scan.remote(build_dir, job, None, num_perm, box)
                parts[ref] = f"{job.path}"
                files[ref] = job
                continue
            refs = [scan.remote(build_dir, job, p, num_perm, box) for p in pieces]
            for ref, piece in zip(refs, pieces, strict=True):
                parts[ref] = f"{job.path} part {piece.number + 1}/{len(pieces)}"
            files[join.remote(build_dir, job, *refs)] = job
        progress = StepProgress("scan parts", len(parts)) if len(parts) > len(files) else None
        pending = [*parts, *(ref for ref in files if ref not in parts)]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ref = done[0]
                result = self._get(ref)
                if ref in parts and progress is not None:
                    progress.update(
                        result["read"],
                        f"scan part: {parts[ref]}: {result['read']} documents read, "
                        f"{result['kept']} kept",
                    )
                if ref in files:
                    yield files[ref], result
        finally:
            if progress is not None:
                progress.close()

    def dedup(
        self, files: list[tuple[str, ScanOutput]], settings: DedupSection
    ) -> tuple[np.ndarray, dict]:
        return ray_dedup.deduplicate(self.ray, files, settings, self.partitions, self.run)

    def write_shards(
        self, build_dir: Path, tasks: list[ShardTask], info: TokenizerInfo, backend_json: str
    ) -> Any:
        """(task number, manifest entry) of each shard, as each is written (one task each)."""
        ray = self.ray
        remote = ray.remote(_shard_task).options(**self._options())
        box = [ray.put((info, backend_json))]
        refs = {remote.remote(str(build_dir), task, box): n for n, task in enumerate(tasks)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield refs[done[0]], self._get(done[0])
