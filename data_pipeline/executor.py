"""Where the build's work runs: `data.executor: local` (a process pool on this machine, the
default) or `ray` (tasks on a Ray cluster, `ray_executor.RayExecutor`).

The build driver (`build.DataBuild`) decides what to do (step records, fingerprints, the
plan of shards, the manifest); an executor does the three heavy steps and hands back results
the driver records:

    scan(jobs, context)       -> (job, record) per scanned file, as each is done
    dedup(files, settings)    -> (status of every document, statistics)
    write_shards(...)         -> (task number, manifest entry) per written shard

Both executors call the same per-unit work functions (`scan.scan_file`, `scan.process_chunk`,
the functions of `dedup`, `tokenize.encode_documents`), so their outputs are the same.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import DataSection, DedupSection
from .dedup import Corpus, deduplicate
from .scan import ScanContext, ScanJob, ScanOutput, init_worker, scan_file
from .shards import ShardWriter
from .tokenize import (
    JOB_DOCUMENTS,
    ShardTask,
    TokenizerInfo,
    encode_documents,
    encoding_jobs,
    init_encoder,
    shard_entry,
)

log = logging.getLogger("llmtrain.data")


def make_executor(section: DataSection, num_proc: int) -> Any:
    """The executor the recipe asks for (Ray is imported only for `ray`)."""
    if section.executor == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(section.ray, num_proc)
    return LocalExecutor(num_proc)


class StepProgress:
    """Progress of one step on the driver: tasks done / total and documents per second, on a
    bar when the output is a terminal, and in the log."""

    def __init__(self, step: str, total: int, unit: str = "tasks"):
        self.step, self.total, self.unit = step, total, unit
        self.count = 0
        self.documents = 0
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, desc=step, unit=f" {unit}", disable=None, leave=False)

    def update(self, documents: int, message: str) -> None:
        """One more task done, which handled `documents`; logs `message` with the totals."""
        self.count += 1
        self.documents += documents
        self.bar.update(1)
        seconds = time.perf_counter() - self.started
        log.info(
            "%s [%s: %d/%d %s done, %.0f documents/s]",
            message,
            self.step,
            self.count,
            self.total,
            self.unit,
            self.documents / max(seconds, 1e-9),
        )

    def close(self) -> None:
        self.bar.close()


class LocalExecutor:
    """A pool of `num_proc` processes on this machine (none for one: work runs in the driver).

    Scan: files one after the other, the chunks of each file in the pool. Dedup: in the
    driver, over the whole corpus. Tokenize: jobs of a few thousand documents in the pool,
    shards written by the driver in order."""

    name = "local"

    def __init__(self, num_proc: int):
        self.num_proc = num_proc
        self.workers = f"{num_proc} processes"  # what the last step ran on, for the log

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def scan(self, jobs: list[ScanJob], context: ScanContext) -> Iterator[tuple[ScanJob, dict]]:
        num_perm = context.minhasher.num_perm
        with _pool(self.num_proc, init_worker, (context,)) as pool:
            if pool is None:
                init_worker(context)
            for job in jobs:
                progress = tqdm(
                    desc=f"scan {job.source.name} {job.path.name}",
                    unit=" docs",
                    disable=None,
                    leave=False,
                )
                with progress:
                    record = scan_file(job, num_perm, pool, 2 * self.num_proc, progress.update)
                yield job, record

    def dedup(
        self, files: list[tuple[str, ScanOutput]], settings: DedupSection
    ) -> tuple[Any, dict]:
        return deduplicate(Corpus(files), settings)

    def write_shards(
        self, build_dir: Path, tasks: list[ShardTask], info: TokenizerInfo, backend_json: str
    ) -> Iterator[tuple[int, dict]]:
        """Tokenize the shards' documents in the pool, job by job (a job is a few thousand
        documents, so even one shard keeps every worker busy), and write each shard here, in
        order: the output does not depend on the number of processes."""
        directory = str(build_dir)
        documents = sum(b - a for task in tasks for _, runs in task.pieces for a, b in runs)
        processes = min(self.num_proc, max(len(tasks), -(-documents // JOB_DOCUMENTS)))
        self.workers = f"{processes} processes"

        def jobs() -> Iterator[tuple[tuple[int, bool], tuple]]:
            cache: dict[str, Any] = {}
            for number, task in enumerate(tasks):
                pieces = encoding_jobs(directory, task, cache)
                for position, (scan_dir, indices) in enumerate(pieces):
                    yield (number, position == len(pieces) - 1), (directory, scan_dir, indices)

        writer: ShardWriter | None = None
        with _pool(processes, init_encoder, (info, backend_json, True)) as pool:
            if pool is None:
                init_encoder(info, backend_json, worker=False)
            try:
                results = ordered_map(encode_documents, jobs(), pool, 2 * processes)
                for (number, last), (flat, lengths) in results:
                    task = tasks[number]
                    if writer is None:
                        (build_dir / task.path).parent.mkdir(parents=True, exist_ok=True)
                        writer = ShardWriter(build_dir / task.path, info.dtype).__enter__()
                    writer.add_many(flat, lengths)
                    if not last:
                        continue
                    writer.__exit__(None, None, None)
                    entry = shard_entry(task, writer)
                    writer = None
                    yield number, entry
            except BaseException as exc:
                if writer is not None:  # remove the half-written shard
                    with contextlib.suppress(Exception):
                        writer.__exit__(type(exc), exc, exc.__traceback__)
                raise


def ordered_map(
    function: Any, items: Iterator[tuple[Any, tuple]], pool: Any | None, in_flight: int
) -> Iterator[tuple[Any, Any]]:
    """(key, function(*arguments)) for each (key, arguments) of `items`, in order; in the pool
    when given, with at most `in_flight` calls submitted and not yet returned."""
    if pool is None:
        for key, arguments in items:
            yield key, function(*arguments)
        return
    pending: collections.deque = collections.deque()
    for key, arguments in items:
        pending.append((key, pool.apply_async(function, arguments)))
        if len(pending) >= in_flight:
            done_key, result = pending.popleft()
            yield done_key, result.get()
    while pending:
        done_key, result = pending.popleft()
        yield done_key, result.get()


@contextlib.contextmanager
def _pool(processes: int, initializer: Any, initargs: tuple) -> Iterator[Any]:
    """A pool of `processes` workers (spawned: no inherited threads), or None for one."""
    if processes <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(processes, initializer=initializer, initargs=initargs)
    try:
        yield pool
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
