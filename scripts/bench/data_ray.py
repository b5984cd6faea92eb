"""The data build on Ray against the local executor, on the same corpus and machine.

    python scripts/bench/data_ray.py [--mb 100] [--dedup-docs 250000] [--workdir DIR]
                                     [--skip-builds] [--skip-memory]

1. Throughput: `llmtrain data` on a corpus of Python's standard library and site-packages
   (`data_pipeline.py`'s corpus: docstrings with every filter on, source files with the
   Gopher filters off), three ways, each in its own process: the local executor (num_proc =
   cores), Ray on one node (the build starts a Ray with every core) and Ray on two nodes (a
   `ray.cluster_utils.Cluster` of two nodes on 127.0.0.1 sharing the cores). Wall time, CPU
   seconds of every process of the build (the driver, pool or Ray workers and Ray's own
   daemons, sampled from /proc), documents per CPU second; the Ray builds' shards are checked
   to be the local build's, byte for byte.
2. Dedup memory: the dedup step alone over synthetic scan outputs (random signatures and
   digests with planted exact and near copies: what the scan step writes) of two sizes: the
   local executor (one process) against Ray with P partitions. The step runs twice (the
   first warms the workers up: imports, as the scan step does in a build); the figures are
   the peak private memory (RssAnon) of the largest process during the second (sampled every
   20 ms), the largest rise of a process's private memory over its value just before, and
   the largest RSS (which also counts the pages of Ray's shared-memory object store a process
   has mapped; the node holds those once, within object_store_memory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts" / "bench"))

from data_pipeline import train_tokenizer, write_corpus, write_recipe  # noqa: E402

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every Ray address stays on 127.0.0.1
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": os.urandom(16).hex(),
}
TICK = os.sysconf("SC_CLK_TCK")


class ProcessTree:
    """Samples CPU seconds and RSS of this process and all its descendants from /proc."""

    def __init__(self, interval: float):
        self.interval = interval
        self.cpu: dict[int, float] = {}
        self.rss: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.peak_rss: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.peak_names: dict[int, str] = {}  # what the process was at its peak
        self.peak_of: dict[tuple[int, str], int] = {}  # (pid, name or Ray task): peak
        self.first: dict[int, int] = {}  # private memory when first seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def pids(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
        out, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def sample(self) -> None:
        for pid in self.pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                status = Path(f"/proc/{pid}/status").read_text()
                name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()[:60]
            except (OSError, IndexError):
                continue
            memory = {
                line.split(":")[0]: int(line.split()[1]) * 1024
                for line in status.splitlines()
                if line.startswith(("VmRSS:", "RssAnon:"))
            }
            fields = stat.rsplit(")", 1)[1].split()
            self.cpu[pid] = (int(fields[11]) + int(fields[12])) / TICK
            # private memory (RssAnon): RSS also counts the pages of Ray's shared-memory object
            # store a process has touched, which the node holds once
            rss, private = memory.get("VmRSS", 0), memory.get("RssAnon", 0)
            self.rss[pid] = private
            if private > self.peak.get(pid, -1):  # the task a Ray worker runs names it then
                self.peak[pid] = private
                self.peak_names[pid] = name
            self.first.setdefault(pid, private)
            kind = (pid, name)  # a Ray worker runs maps and reducers in turn
            self.peak_of[kind] = max(self.peak_of.get(kind, 0), private)
            self.peak_rss[pid] = max(self.peak_rss.get(pid, 0), rss)
            self.names[pid] = name

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> ProcessTree:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------
# 1. throughput


def two_node_cluster():
    from ray.cluster_utils import Cluster

    node = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "object_store_memory": 200 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    return cluster


def child_build(recipe: str, mode: str) -> None:
    from llmtrain.data_pipeline.build import build_data
    from llmtrain.recipe import load_recipe
    from llmtrain.runtime import setup_logging

    setup_logging()
    cluster = None
    overrides = []
    if mode == "ray-1-node":
        overrides = ["data.executor=ray", "data.ray.object_store_mb=200"]
    elif mode == "ray-2-nodes":
        cluster = two_node_cluster()
        overrides = ["data.executor=ray", f'data.ray.address="{cluster.address}"']
    recipe_obj = load_recipe(recipe, overrides)
    with ProcessTree(0.2) as tree:
        start = time.perf_counter()
        out = build_data(recipe_obj)
        seconds = time.perf_counter() - start
    if cluster is not None:
        cluster.shutdown()
    manifest = json.loads((out / "manifest.json").read_text())
    print(
        "RESULT "
        + json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": sum(tree.cpu.values()),
                "documents": sum(s["documents_read"] for s in manifest["sources"]),
                "shards": [(s["path"], s["sha256"]) for s in manifest["shards"]],
            }
        )
    )


# ---------------------------------------------------------------------------------------------
# 2. dedup memory


def write_scan_outputs(out: Path, documents: int, files: int, seed: int = 0) -> None:
    """Scan directories as the scan step writes them, with random signatures and digests;
    one document in 20 an exact copy and one in 20 a near copy (one band differs) of an
    earlier one."""
    import numpy as np

    rng = np.random.default_rng(seed)
    num_perm = 14 * 8
    per_file = documents // files
    for number in range(files):
        directory = out / "work" / "scan" / "web" / f"{number:05d}"
        directory.mkdir(parents=True, exist_ok=True)
        signatures = rng.integers(0, 2**32, (per_file, num_perm), dtype=np.uint32)
        digests = rng.integers(0, 256, (per_file, 16), dtype=np.uint8)
        copies = rng.choice(per_file, per_file // 10, replace=False)
        originals = rng.integers(0, per_file, copies.size)
        exact, near = copies[: copies.size // 2], copies[copies.size // 2 :]
        digests[exact] = digests[originals[: exact.size]]
        signatures[near, 8:] = signatures[originals[exact.size :], 8:]
        signatures.astype("<u4").tofile(directory / "signatures.u32")
        digests.tofile(directory / "exact.bin")
        np.ones(per_file, dtype=bool).tofile(directory / "shingled.bin")
        np.full(per_file, -1, dtype="<i2").tofile(directory / "contamination.bin")
        np.arange(per_file + 1, dtype="<u8").tofile(directory / "offsets.u64")
        (directory / "texts.bin").write_bytes(b"x" * per_file)


def child_dedup(directory: str, mode: str, partitions: int) -> None:
    from llmtrain.data_pipeline.config import DedupSection, RaySection
    from llmtrain.data_pipeline.executor import LocalExecutor
    from llmtrain.data_pipeline.scan import ScanOutput

    scan = Path(directory) / "work" / "scan" / "web"
    files = [("web", ScanOutput(d)) for d in sorted(scan.iterdir())]
    if mode == "local":
        executor = LocalExecutor(1)
    else:
        from llmtrain.data_pipeline.ray_executor import RayExecutor

        executor = RayExecutor(RaySection(partitions=partitions, object_store_mb=2048), 2)
    with executor:
        # a first pass warms the workers up (imports, as the scan step does in a build), so
        # that the second pass's rise is what the step itself holds
        executor.dedup(files, DedupSection())
        time.sleep(1.0)
        tree = ProcessTree(0.02)
        tree.sample()
        before = dict(tree.rss)
        with tree:
            start = time.perf_counter()
            status, stats = executor.dedup(files, DedupSection())
            seconds = time.perf_counter() - start
    largest = max(tree.peak, key=tree.peak.get)
    rises = {p: tree.peak[p] - before.get(p, 0) for p in tree.peak}
    grower = max(rises, key=rises.get)
    # what each kind of task holds: the largest rise of a worker's private memory over its
    # size before the step, while it ran that task (the driver: the bench's own process)
    by_task: dict[str, float] = {}
    for (pid, name), peak in tree.peak_of.items():
        kind = name.removeprefix("ray::") if name.startswith("ray::") else "driver"
        if pid == os.getpid() or name.startswith("ray::"):
            rise = (peak - before.get(pid, tree.first[pid])) / 2**20
            by_task[kind] = max(by_task.get(kind, 0.0), rise)
    print(
        "RESULT "
        + json.dumps(
            {
                "seconds": seconds,
                "peak_mb": tree.peak[largest] / 2**20,
                "peak_rss_mb": max(tree.peak_rss.values()) / 2**20,
                "largest": tree.peak_names[largest],
                "rise_mb": rises[grower] / 2**20,
                "rise_of": tree.peak_names[grower],
                "rise_by_task": {k: round(v) for k, v in sorted(by_task.items())},
                "removed": int((status != 0).sum()),
                "stats": stats["near"]["clusters"],
            }
        )
    )


# ---------------------------------------------------------------------------------------------


def run_child(*args: str) -> dict:
    env = {**os.environ, **RAY_ENV, "TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        sys.exit(result.stderr[-5000:])
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=100.0, help="corpus size for throughput")
    parser.add_argument(
        "--dedup-docs", type=int, default=250_000, help="smaller dedup corpus (the other: 4x)"
    )
    parser.add_argument("--partitions", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--skip-builds", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-local-memory", action="store_true", help="dedup on Ray only")
    parser.add_argument("--child-build", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-dedup", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_build:
        child_build(*args.child_build)
        return
    if args.child_dedup:
        directory, mode, partitions = args.child_dedup
        child_dedup(directory, mode, int(partitions))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-data-ray-"))
    cores = len(os.sched_getaffinity(0))
    print(
        f"machine: {cores} cores, {platform.processor() or platform.machine()}, "
        f"python {platform.python_version()}; work in {work}",
        flush=True,
    )
    if not args.skip_builds:
        corpus = work / f"corpus-{args.mb:g}mb"
        if not corpus.is_dir():
            print(f"{corpus.name}: {write_corpus(corpus, args.mb)}", flush=True)
        megabytes = sum(p.stat().st_size for p in corpus.glob("*.jsonl")) / 2**20
        tokenizer = work / "bpe-32k"
        if not tokenizer.is_dir():
            sample = work / "tokenizer-sample"
            sample.mkdir(exist_ok=True)
            for name in ("docs-000.jsonl", "source-000.jsonl"):
                if not (sample / name).exists():
                    (sample / name).symlink_to(corpus / name)
            train_tokenizer(sample, tokenizer)
        print(f"\nbuilds of {megabytes:.1f} MB of jsonl ({cores} cores):", flush=True)
        reference = None
        local_rate = None
        for mode in ("local", "ray-1-node", "ray-2-nodes"):
            out = work / f"build-{mode}"
            recipe = write_recipe(work / f"{mode}.yaml", corpus, tokenizer, out, cores, True)
            subprocess.run(["rm", "-rf", str(out)], check=True)
            result = run_child("--child-build", str(recipe), mode)
            rate = result["documents"] / result["cpu_seconds"]
            local_rate = local_rate or rate
            reference = reference or result["shards"]
            same = "same shards" if result["shards"] == reference else "SHARDS DIFFER"
            print(
                f"  {mode:12s} {result['seconds']:6.1f} s wall  {result['cpu_seconds']:6.1f} CPU s"
                f"  {result['documents']} documents  {rate:6.0f} documents per CPU s "
                f"({rate / local_rate:.2f}x local)  {same}",
                flush=True,
            )
    if not args.skip_memory:
        print("\ndedup step alone, synthetic scan outputs (14 x 8 signatures):", flush=True)
        for documents in (args.dedup_docs, 4 * args.dedup_docs):
            directory = work / f"scan-{documents}"
            if not directory.is_dir():
                write_scan_outputs(directory, documents, files=8)
            local = [] if args.skip_local_memory else [("local", 1)]
            for mode, partitions in [*local, *(("ray", p) for p in args.partitions)]:
                result = run_child("--child-dedup", str(directory), mode, str(partitions))
                label = "local" if mode == "local" else f"ray P={partitions}"
                print(
                    f"  {documents:8d} documents  {label:10s} {result['seconds']:6.1f} s  "
                    f"largest process: private peak {result['peak_mb']:5.0f} MB "
                    f"({result['largest']}), largest private rise {result['rise_mb']:5.0f} MB "
                    f"({result['rise_of']}), "
                    f"RSS peak {result['peak_rss_mb']:5.0f} MB  removed {result['removed']}\n"
                    f"      private rise by task (MB): {result['rise_by_task']}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
