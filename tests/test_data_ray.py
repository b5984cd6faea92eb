"""`llmtrain data` on Ray (data.executor: ray) on a two-node cluster on loopback: the same
shards and manifest as the local executor, byte for byte, with files scanned in parts; a
worker killed mid-scan, mid-join and mid-dedup, a third node taken away mid-scan, and a killed
driver change nothing; without Ray the error names the extra."""

from __future__ import annotations

import builtins
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmtrain.data_pipeline.build import build_data
from llmtrain.errors import InputDataError, RecipeError
from llmtrain.recipe import load_recipe, validate_recipe
from tests.data_support import data_recipe, english_documents, write_jsonl
from tests.ray_support import NODE, REPO
from tests.ray_support import ray_cluster as _session_cluster
from tests.slurm_support import slurm_stand_ins
from tests.test_data_build import near_copy
from tests.test_data_quality import (
    FRENCH,
    GERMAN,
    SPAM,
    eval_task_rows,
    prose,
    write_eval_task,
)

ray_cluster = _session_cluster  # the session's two-node cluster (tests/ray_support.py)


def write_corpus(tmp: Path) -> tuple[list[dict], Path]:
    """Four sources over several files of three formats, with planted exact and near copies
    (within a source and across sources), documents that quote the eval file, a broken line
    (skipped), documents in German and French (for the language filter), spam (for the
    quality classifier), and pages with URLs (one blocked domain, one page without a URL),
    PII and a quote of an lm-eval task's answer (tmp/tasks, write_eval_task). The Ray builds
    scan the files in parts of 10 KB (SCAN_PART_MB), so most files are several parts (jsonl:
    lines; parquet: row groups; text: paragraphs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    web_files = []
    spam = prose(SPAM, 6, seed=300)
    base = [english_documents(40, seed=10 + n, words=(80, 200)) for n in range(4)]
    eval_text = english_documents(3, seed=99, words=(30, 40))
    for number, docs in enumerate(base):
        docs = list(docs)
        if number > 0:
            docs.append(base[0][number].upper())  # exact copy of a file-0 document
            docs.append(near_copy(base[0][number + 5], 1, seed=number))  # near copy
        fresh = english_documents(1, seed=200 + number)[0]
        docs.append(fresh + " " + eval_text[number % 3])  # contaminated
        docs.insert(3, prose(GERMAN if number % 2 else FRENCH, 1, seed=number)[0])
        docs.append(spam[number])
        web_files.append(write_jsonl(tmp / "corpus" / f"web-{number}.jsonl", docs))
    lines = web_files[2].read_text(encoding="utf-8").splitlines(keepends=True)
    web_files[2].write_text("".join([*lines[:30], "{broken\n", *lines[30:]]), encoding="utf-8")
    books = english_documents(30, seed=50)
    books += [base[1][2].lower(), near_copy(base[2][3], 2, seed=7), near_copy(books[4], 1, seed=8)]
    books += [*spam[4:], prose(GERMAN, 1, seed=9)[0]]
    books_file = write_jsonl(tmp / "corpus" / "books.jsonl", books)
    more_books = english_documents(40, seed=51, words=(60, 120)) + [base[3][9]]
    pq.write_table(
        pa.Table.from_pylist([{"text": t} for t in more_books]),
        tmp / "corpus" / "books.parquet",
        row_group_size=6,
    )
    notes = english_documents(30, seed=60, words=(40, 90)) + [near_copy(books[7], 1, seed=9)]
    notes_file = tmp / "corpus" / "notes.txt"
    notes_file.write_text("".join(n.replace(". ", ".\n", 2) + "\n\n" for n in notes))
    evals = write_jsonl(tmp / "corpus" / "eval.jsonl", eval_text)
    rows = eval_task_rows(seed=98)
    write_eval_task(tmp / "tasks", "planted_qa", rows)
    pages = english_documents(24, seed=80)
    pages[2] += " Write to jane@example.org or +44 20 7946 0958, server 8.8.8.8, Python 3.11.4."
    pages[20] += " Call (555) 123-4567."
    pages[9] += " " + rows[0]["answer"]
    urls = [f"https://site{n % 5}.good.org/page/{n}" for n in range(len(pages))]
    urls[5], urls[17], urls[11] = "http://spam.example/a", "https://ads.spam.example/b", ""
    (tmp / "corpus" / "block.txt").write_text("# planted\nspam.example\n")
    with open(tmp / "corpus" / "pages.jsonl", "w", encoding="utf-8") as f:
        for text, url in zip(pages, urls, strict=True):
            f.write(json.dumps({"text": text, "url": url}) + "\n")
    sources = [
        {"name": "web", "paths": [str(tmp / "corpus" / "web-*.jsonl")], "on_error": "skip"},
        {  # the quality rule per source: top fraction (in the dedup step) or a threshold
            "name": "books",
            "paths": [str(books_file), str(tmp / "corpus" / "books.parquet")],
            "weight": 0.5,
            "filters": {"quality": {"top_fraction": None, "threshold": 0.5}},
        },
        {"name": "notes", "paths": [str(notes_file)], "text_mode": "paragraph", "weight": 0.3},
        {"name": "pages", "paths": [str(tmp / "corpus" / "pages.jsonl")], "url_field": "url"},
    ]
    return sources, evals


def train_quality_model(tmp: Path) -> Path:
    """A small classifier of English prose against spam."""
    from llmtrain.data_pipeline.quality import train_classifier

    positive = english_documents(150, seed=400)
    negative = prose(SPAM, 150, seed=500)
    raw = data_recipe(
        tmp,
        tmp,
        [{"name": "web", "paths": [str(write_jsonl(tmp / "pos.jsonl", positive))]}],
        filters={"quality": {"model": str(tmp / "classifier")}},
        classifier={
            "positive": [str(tmp / "pos.jsonl")],
            "negative": [str(write_jsonl(tmp / "neg.jsonl", negative))],
            "dim": 8,
            "bucket": 5000,
            "epoch": 25,
            "lr": 0.5,
        },
    )
    train_classifier(validate_recipe(raw))
    return tmp / "classifier"


def recipe_of(tmp: Path, tokenizer_dir: Path, out: str, **data) -> dict:
    sources, evals = write_corpus(tmp)
    raw = data_recipe(
        tmp,
        tokenizer_dir,
        sources,
        validation={"fraction": 0.05},
        shard_text_mb=0.05,
        decontamination={
            "eval_files": [str(evals)],
            "tasks": ["planted_qa"],
            "include_path": str(tmp / "tasks"),
            "ngram": 13,
            "min_words": 8,
        },
        pii={"enabled": True},
        url_filter={"block_lists": [str(tmp / "corpus" / "block.txt")]},
        filters={
            "language": {"enabled": True, "languages": ["en"]},
            "quality": {"enabled": True, "model": str(tmp / "classifier"), "top_fraction": 0.9},
        },
        **data,
    )
    raw["output_dir"] = str(tmp / out)
    return raw


def build_files(out: Path) -> dict[str, bytes]:
    """Every file of a finished build but the step records and the lock, by relative path."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and "work" not in p.parts and p.name not in (".lock", "build.json")
    }


@pytest.fixture(scope="module")
def local_build(tiny_tokenizer_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray-data")
    train_quality_model(tmp)
    out = build_data(validate_recipe(recipe_of(tmp, tiny_tokenizer_dir, "local")))
    return tmp, out


SCAN_PART_MB = 0.01


def ray_settings(cluster, **extra) -> dict:
    ray = {"address": cluster.address, "scan_part_mb": SCAN_PART_MB, **extra}
    return {"executor": "ray", "ray": ray}


@pytest.mark.multiprocess
@pytest.mark.slow
def test_ray_build_is_the_local_build_byte_for_byte(
    local_build,
    tiny_tokenizer_dir,
    ray_cluster,
    caplog,
):
    cluster, _ = ray_cluster
    tmp, local = local_build
    manifest = json.loads((local / "manifest.json").read_text())
    web, books, notes, pages = manifest["sources"]
    # the planted copies are found, so equal builds mean equal dedup
    assert (web["exact_duplicates"], books["exact_duplicates"]) == (3, 2)
    assert (web["near_duplicates"], books["near_duplicates"], notes["near_duplicates"]) == (3, 2, 1)
    assert sum(web["decontaminated"].values()) == 4
    assert web["read_errors_skipped"] == 1
    # language ID and the quality classifier: the planted German, French and spam
    assert web["dropped_detail"]["language.other_language"] == 4
    assert web["languages"] == {"en": web["documents_read"] - 4, "de": 2, "fr": 2}
    assert books["dropped_detail"]["language.other_language"] == 1
    assert books["dropped_detail"]["quality.below_threshold"] == 2  # the spam
    assert (
        web["quality"]["top_fraction"] == 0.9
        and web["quality"]["scored"] == web["documents_read"] - 4
    )
    kept_before = web["documents"] + web["quality"]["dropped"]
    assert web["quality"]["dropped"] == kept_before - math.ceil(0.9 * kept_before)
    # PII, the URL list and the lm-eval task
    block_list = str(tmp / "corpus" / "block.txt")
    assert pages["url_filter"]["blocked"] == {block_list: 2}
    assert (pages["url_filter"]["missing_url"], pages["url_filter"]["checked"]) == (1, 24)
    assert pages["dropped_detail"] == {"url.blocked": 2, "url.missing_url": 1}
    assert pages["pii"] == {"email": 1, "ip": 1, "phone": 2, "documents": 2}
    assert web["pii"] == {"email": 0, "ip": 0, "phone": 0, "documents": 0}
    assert pages["decontaminated"] == {"planted_qa": 1}
    assert len(manifest["shards"]) > 4
    raw = recipe_of(tmp, tiny_tokenizer_dir, "ray", **ray_settings(cluster, partitions=3))
    with caplog.at_level("INFO", logger="llmtrain.data"):
        out = build_data(validate_recipe(raw))
    assert build_files(out) == build_files(local)
    assert "Ray: 2 nodes, 2 CPUs, 3 dedup partitions" in caplog.text
    assert "[dedup near reduce: 3/3 tasks done" in caplog.text
    assert "[scan: 8/8 files done" in caplog.text
    # each file of more than SCAN_PART_MB is scanned in parts, each part a task, each logged
    logged = re.findall(r"scan part: (\S+) part (\d+)/(\d+): ", caplog.text)
    parts = {path: int(total) for path, _, total in logged}
    assert sorted((path, int(number)) for path, number, _ in logged) == sorted(
        (path, number) for path, total in parts.items() for number in range(1, total + 1)
    )
    assert len(parts) == 8 and min(parts.values()) >= 2
    assert f"[scan parts: {sum(parts.values())}/{sum(parts.values())} tasks done" in caplog.text
    # the executor is not part of the build's identity: the local build is complete for Ray
    raw["output_dir"] = str(local.parent)
    caplog.clear()
    with caplog.at_level("INFO", logger="llmtrain.data"):
        build_data(validate_recipe(raw))
    assert "is complete with these settings; nothing to do" in caplog.text


@pytest.mark.multiprocess
@pytest.mark.slow
def test_workers_killed_mid_scan_and_mid_dedup_change_nothing(
    local_build, tiny_tokenizer_dir, ray_cluster, tmp_path, monkeypatch
):
    import ray

    from llmtrain.data_pipeline import ray_dedup

    monkeypatch.setattr(ray_dedup, "MAP_DOCUMENTS", 50)  # maps over parts of files, too
    monkeypatch.setattr(ray_dedup, "PART_BYTES", 0)
    cluster, _ = ray_cluster
    tmp, local = local_build
    kills = [  # a part of a file mid-scan, the join of a file's parts, a near reducer
        "llmtrain.data_pipeline.scan:process_chunk",
        "llmtrain.data_pipeline.ray_executor:join_parts",
        "llmtrain.data_pipeline.ray_dedup:confirm_pairs",
    ]
    ray.init(
        address=cluster.address,
        runtime_env={
            "worker_process_setup_hook": "tests.ray_support.kill_once_hook",
            "env_vars": {
                "PYTHONPATH": str(REPO),
                "LLMTRAIN_TEST_KILL": ",".join(kills),
                "LLMTRAIN_TEST_KILL_DIR": str(tmp_path),
            },
        },
    )
    try:
        raw = recipe_of(tmp, tiny_tokenizer_dir, "killed", **ray_settings(cluster, partitions=2))
        out = build_data(validate_recipe(raw))  # on the connection opened above
    finally:
        ray.shutdown()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kills)  # each killed once
    assert build_files(out) == build_files(local)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_killed_driver_resumes_without_redoing_finished_steps(
    local_build,
    tiny_tokenizer_dir,
    ray_cluster,
    caplog,
):
    cluster, environment = ray_cluster
    tmp, local = local_build
    raw = recipe_of(tmp, tiny_tokenizer_dir, "driver")
    recipe = tmp / "driver.yaml"
    recipe.write_text(json.dumps(raw), encoding="utf-8")  # JSON is YAML
    steps = tmp / "driver" / "data" / "work" / "steps"
    command = [sys.executable, "-m", "llmtrain", "data", str(recipe), "--executor", "ray"]
    process = subprocess.Popen(
        [*command, "--ray-address", cluster.address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **environment},
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (steps.is_dir() and len(list(steps.glob("scan--*.json"))) >= 2):
        if process.poll() is not None:
            pytest.fail(f"the build ended before it could be killed:\n{process.stderr.read()}")
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # the driver only: Ray's processes are the cluster's
    process.wait()
    scanned_before = len(list(steps.glob("scan--*.json")))
    assert scanned_before < 8 and not (steps.parent.parent / "manifest.json").exists()

    caplog.clear()
    with caplog.at_level("INFO", logger="llmtrain.data"):
        out = build_data(load_recipe(recipe, executor_overrides(cluster.address)))
    rescanned = [m for m in caplog.messages if m.startswith("scan ")]
    assert len(rescanned) == 8 - scanned_before  # only the files not scanned before
    assert build_files(out) == build_files(local)


def executor_overrides(address: str) -> list[str]:
    from llmtrain.cli import build_parser
    from llmtrain.data_pipeline.cli import run_overrides as overrides_of

    args = build_parser().parse_args(
        ["data", "r.yaml", "--executor", "ray", "--ray-address", address]
    )
    return overrides_of(args)


def test_executor_flags_become_recipe_keys():
    from llmtrain.cli import build_parser
    from llmtrain.data_pipeline.cli import run_overrides as overrides_of

    for command in (["data", "r.yaml"], ["run", "r.yaml"]):
        args = build_parser().parse_args([*command, "--executor", "ray", "--ray-address", "none"])
        assert overrides_of(args) == ["data.executor=ray", "data.ray.address=null"]
    assert executor_overrides("10.0.0.1:6379") == [
        "data.executor=ray",
        'data.ray.address="10.0.0.1:6379"',
    ]


def test_ray_executor_without_ray_names_the_extra(
    local_build, tiny_tokenizer_dir, monkeypatch, tmp_path
):
    tmp, _ = local_build
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    raw = recipe_of(tmp, tiny_tokenizer_dir, "no-ray", executor="ray")
    with pytest.raises(RecipeError) as error:
        build_data(validate_recipe(raw))
    assert str(error.value) == (
        "data.executor is 'ray' but Ray is not installed; install it with "
        "`pip install llmtrain[ray]`, or set data.executor: local (or --executor local)"
    )


@pytest.mark.multiprocess
def test_a_node_that_cannot_see_the_build_names_itself_and_the_path(ray_cluster, tmp_path):
    import ray

    from llmtrain.data_pipeline.config import RaySection
    from llmtrain.data_pipeline.ray_executor import RayExecutor, _check_visible

    cluster, _ = ray_cluster
    with RayExecutor(RaySection(address=cluster.address), 1) as executor:
        ref = ray.remote(_check_visible).remote(tmp_path, tmp_path / "web.jsonl")
        with pytest.raises(InputDataError) as error:
            executor._get(ref)
    assert str(error.value) == (
        f"Ray node 127.0.0.1 cannot see {tmp_path / 'build.json'}; the build directory and "
        "the inputs must be on a filesystem every node mounts at the same path (NFS, Lustre, "
        "...)"
    )


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_node_lost_mid_scan_changes_nothing(
    local_build, tiny_tokenizer_dir, ray_cluster, tmp_path, caplog
):
    """A third node joins; once one of its workers is scanning a part, the node is taken away
    (its processes killed): Ray runs its tasks again on the other two and the build is the
    same. Runs last: the session cluster is back to its two nodes after it."""
    import threading

    import ray

    cluster, _ = ray_cluster
    tmp, local = local_build
    node = cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    marker = tmp_path / "stalled"
    removed = threading.Event()

    def take_the_node_away() -> None:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if marker.exists():
            cluster.remove_node(node, allow_graceful=False)
            removed.set()

    ray.init(
        address=cluster.address,
        runtime_env={
            "worker_process_setup_hook": "tests.ray_support.stall_on_node_hook",
            "env_vars": {
                "PYTHONPATH": str(REPO),
                "LLMTRAIN_TEST_STALL_NODE": node.node_id,
                "LLMTRAIN_TEST_STALL_MARKER": str(marker),
            },
        },
    )
    remover = threading.Thread(target=take_the_node_away, daemon=True)
    remover.start()
    try:
        raw = recipe_of(tmp, tiny_tokenizer_dir, "node-lost", **ray_settings(cluster))
        with caplog.at_level("INFO", logger="llmtrain.data"):
            out = build_data(validate_recipe(raw))
    finally:
        ray.shutdown()
        remover.join()
    assert removed.is_set()
    assert "Ray: 3 nodes, 3 CPUs" in caplog.text
    assert build_files(out) == build_files(local)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_pairs_reported_by_several_reducers_are_merged_as_they_come(monkeypatch):
    """The driver's merge of the near reducers' results gives each distinct pair once, with its
    verdict, whatever the order and however often it is repeated."""
    import numpy as np

    from llmtrain.data_pipeline import ray_dedup
    from llmtrain.data_pipeline.ray_dedup import DistinctPairs

    monkeypatch.setattr(ray_dedup, "MERGE_ROWS", 0)
    rng = np.random.default_rng(0)
    pairs = np.unique(np.sort(rng.integers(0, 5000, (3000, 2)), axis=1), axis=0)
    verdicts = rng.random(len(pairs)) < 0.5
    merged = DistinctPairs()
    for _ in range(12):  # 12 reducers, each reporting a random half of the pairs
        chosen = rng.permutation(len(pairs))[: len(pairs) // 2]
        merged.add((pairs[chosen], verdicts[chosen].astype(np.uint8)))
        assert len(merged.pairs) + merged.rows <= 2 * len(pairs)  # never all the repeats
    got_pairs, got_verdicts = merged.result()
    seen = np.unique(got_pairs, axis=0)
    assert np.array_equal(got_pairs, seen)
    index = {tuple(p): v for p, v in zip(pairs.tolist(), verdicts, strict=True)}
    assert [index[tuple(p)] for p in got_pairs.tolist()] == got_verdicts.tolist()
    assert len(got_pairs) > 0.99 * len(pairs)


SLURM_SCRIPT = REPO / "scripts" / "launch" / "slurm_data.sbatch"


@pytest.mark.multiprocess
@pytest.mark.slow
def test_slurm_script_builds_on_the_ray_head_it_starts(local_build, tiny_tokenizer_dir):
    """scripts/launch/slurm_data.sbatch on a one-node stand-in allocation, with the real `ray`:
    it starts a Ray head with `ray start`, waits for it, builds the local build's bytes there,
    and stops the head it started. (A second Ray node on this machine would need Ray's
    multi-node mode, which moves every address off 127.0.0.1; the two-node command lines are
    the next test's.)"""
    import socket
    import tempfile

    tmp, local = local_build
    recipe = tmp / "slurm.yaml"
    recipe.write_text(json.dumps(recipe_of(tmp, tiny_tokenizer_dir, "slurm")), encoding="utf-8")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = slurm_stand_ins(tmp / "slurm-bin", ["node01"])
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keep 127.0.0.1 (see tests/ray_support.py)
        RAY_PORT=str(port),
        RAY_TMPDIR=tempfile.mkdtemp(prefix="rs", dir="/tmp"),  # Ray's socket paths are short
    )
    job = subprocess.Popen(
        ["bash", str(SLURM_SCRIPT), str(recipe)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,  # the job and the Ray head it starts: one process group
    )
    try:
        stdout, stderr = job.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGTERM)  # `ray start --block` stops its node on SIGTERM
        job.communicate()
        raise
    result = subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Ray head on node01 (127.0.0.1:{port}), 0 worker nodes, 1 CPUs each" in result.stdout
    assert f"Ray at 127.0.0.1:{port}: 1 nodes up" in result.stdout
    assert "Ray: 1 nodes, 1 CPUs" in result.stderr
    assert build_files(tmp / "slurm" / "data") == build_files(local)
    with socket.socket() as probe:  # the head's GCS is gone with the job
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_slurm_script_starts_a_head_and_a_worker_per_node_then_the_build(tmp_path):
    """The same script on three stand-in nodes with stand-in `ray` and Python that print their
    command lines: a head on the first node, a worker on each other one with its own address,
    a wait for all three nodes, then the build against the head, in the job's own token auth."""
    env = slurm_stand_ins(
        tmp_path / "bin",
        ["node01", "node02", "node03"],
        # a node: says how it was started, then runs until the job ends it
        ray='echo "ray $* auth=$RAY_AUTH_MODE token=${#RAY_AUTH_TOKEN}" | tee -a nodes; '
        "exec sleep 60",
        # ray_wait_nodes.py ADDRESS N returns once N nodes have started
        python='echo "python $*"; [[ "$1" == *ray_wait_nodes.py ]] || exit 0; '
        "for _ in $(seq 100); do (( $(cat nodes 2>/dev/null | wc -l) >= $3 )) && exit 0; "
        "sleep 0.1; done; exit 1",
    )
    env["PYTHON"] = "python"
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(SLURM_SCRIPT), "web.yaml", "--overwrite"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30  # the nodes were stopped, not waited for
    lines = sorted(result.stdout.splitlines()[1:])  # the nodes start in the background
    wait = f"python {SLURM_SCRIPT.parent}/ray_wait_nodes.py 127.0.0.1:6379"
    head = "--num-cpus=1 --temp-dir=/tmp/ray-4242 --block auth=token token=32"
    assert result.stdout.splitlines()[0] == (
        "Ray head on node01 (127.0.0.1:6379), 2 worker nodes, 1 CPUs each"
    )
    assert lines == sorted(
        [
            "python -m llmtrain data web.yaml --overwrite --executor ray --ray-address "
            "127.0.0.1:6379",
            f"{wait} 1",
            f"{wait} 3",
            "ray start --head --node-ip-address=127.0.0.1 --port=6379 --num-cpus=1 "
            "--include-dashboard=false --temp-dir=/tmp/ray-4242 --block auth=token token=32",
            *[
                "ray start --address=127.0.0.1:6379 --node-ip-address=127.0.0.1 " + head
                for _ in range(2)
            ],
        ]
    )
    usage = subprocess.run(["bash", str(SLURM_SCRIPT)], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: sbatch ")
