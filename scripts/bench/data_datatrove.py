"""The data build on Ray (one node) and on the local pool against the equivalent datatrove
pipeline, on the same corpus and machine: CPU seconds per document.

    python scripts/bench/data_datatrove.py [--mb 64] [--workdir DIR]

Corpus: the docstrings half of `data_pipeline.py`'s corpus (prose from Python's standard
library and site-packages; `--mb` is the size of the whole corpus, half of it docstrings), one
source, every filter on in both pipelines. Each pipeline runs in its own process, with two
workers (the machine's cores); CPU seconds are those of every process of the pipeline (driver,
workers, Ray's daemons, datatrove's forkserver and pool), sampled from /proc as in
`data_ray.py`.

    ours        `llmtrain data`: read, clean (NFC, control characters, whitespace), length +
                Gopher quality + Gopher repetition filters, exact dedup, MinHash near dedup
                (word 5-grams, 14 bands x 8 rows), tokenize with a 32k BPE, pack; once with
                `data.executor: local` (num_proc 2) and once with `ray` (a Ray the build starts)
    datatrove   0.10: JsonlReader -> GopherRepetitionFilter -> GopherQualityFilter ->
                JsonlWriter (uncompressed); MinhashDedupSignature (5-grams, 14 buckets x 8
                hashes) -> MinhashDedupBuckets -> MinhashDedupCluster; JsonlReader ->
                MinhashDedupFilter -> DocumentTokenizer (the same tokenizer.json), each stage on
                a LocalPipelineExecutor with two workers

datatrove's English word tokenizer is NLTK's `word_tokenize`, which first splits sentences
with the punkt model, a download this machine cannot make; the bench gives datatrove NLTK's
word tokenizer without the sentence split (`preserve_line=True`, no data needed). That is less
work than datatrove does by default, and ours does more than datatrove here (cleaning, the
length filter, exact dedup): both favour datatrove.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts" / "bench"))

from data_ray import RAY_ENV, ProcessTree  # noqa: E402
from datatrove.utils.word_tokenizers import WordTokenizer, strip_strings  # noqa: E402

from data_pipeline import train_tokenizer, write_corpus  # noqa: E402

WORKERS = 2


class TreebankWords(WordTokenizer):
    """NLTK's word tokenizer without punkt's sentence split (its data is a download)."""

    def word_tokenize(self, text: str) -> list[str]:
        from nltk.tokenize import word_tokenize

        return strip_strings(word_tokenize(text, preserve_line=True))

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


def xxhash64_of_text(text: str) -> int:
    """datatrove's shingle hash (xxh64), given bytes: datatrove 0.10 passes the str, which
    xxhash 4 refuses."""
    import xxhash

    return xxhash.xxh64_intdigest(text.encode("utf-8"))


def write_recipe(path: Path, corpus: Path, tokenizer: Path, out: Path) -> Path:
    path.write_text(
        f"""
name: bench
output_dir: {out}
data:
  tokenizer: {tokenizer}
  seq_len: 2048
  num_proc: {WORKERS}
  max_epochs: null
  sources:
    - name: docs
      paths: ["{corpus}/docs-*.jsonl"]
""",
        encoding="utf-8",
    )
    return path


def child_ours(recipe: str, executor: str) -> None:
    from llmtrain.data_pipeline.build import build_data
    from llmtrain.recipe import load_recipe
    from llmtrain.runtime import setup_logging

    setup_logging()
    overrides = [f"data.executor={executor}"]
    if executor == "ray":
        overrides.append("data.ray.object_store_mb=200")
    recipe_obj = load_recipe(recipe, overrides)
    with ProcessTree(0.1) as tree:
        start = time.perf_counter()
        out = build_data(recipe_obj)
        seconds = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text())
    (source,) = manifest["sources"]
    report(tree, seconds, source["documents_read"], source["documents"])


def child_datatrove(corpus: str, tokenizer_json: str, work: str) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter

    words = TreebankWords("en")
    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    signatures = MinhashDedupSignature(
        str(Path(work) / "signatures"), config=config, language=words
    )
    signatures._hash_func = xxhash64_of_text
    w = Path(work)
    tasks = len(list(Path(corpus).glob("docs-*.jsonl")))
    stages = [
        (
            [
                JsonlReader(corpus, glob_pattern="docs-*.jsonl"),
                GopherRepetitionFilter(language=words),
                GopherQualityFilter(language=words),
                JsonlWriter(str(w / "filtered"), compression=None),
            ],
            tasks,
        ),
        (
            [
                JsonlReader(str(w / "filtered")),
                signatures,
            ],
            tasks,
        ),
        ([MinhashDedupBuckets(str(w / "signatures"), str(w / "buckets"), config=config)], 14),
        ([MinhashDedupCluster(str(w / "buckets"), str(w / "remove"), config=config)], 1),
        (
            [
                JsonlReader(str(w / "filtered")),
                MinhashDedupFilter(str(w / "remove")),
                DocumentTokenizer(
                    str(w / "tokens"),
                    tokenizer_name_or_path=tokenizer_json,
                    eos_token="<|endoftext|>",
                    local_working_dir=str(w / "tokenize-tmp"),
                ),
            ],
            tasks,
        ),
    ]
    with ProcessTree(0.1) as tree:
        start = time.perf_counter()
        previous = None
        for number, (pipeline, count) in enumerate(stages):
            executor = LocalPipelineExecutor(
                pipeline,
                tasks=count,
                workers=min(WORKERS, count),
                logging_dir=str(w / f"logs-{number}"),
                depends=previous,
            )
            executor.run()
            previous = executor
        seconds = time.perf_counter() - start
    read = sum(1 for p in Path(corpus).glob("docs-*.jsonl") for _ in open(p, "rb"))
    kept = 0  # documents the MinHash filter let through, over the tokenize stage's tasks
    for stats in sorted((w / "logs-4" / "stats").glob("*.json")):
        for step in json.loads(stats.read_text()):
            if "MinHash stage 4" in step["name"]:
                kept += step["stats"].get("forwarded", 0)
    report(tree, seconds, read, kept)


def report(tree: ProcessTree, seconds: float, read: int, kept: int) -> None:
    print(
        "RESULT "
        + json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": sum(tree.cpu.values()),
                "documents": read,
                "kept": kept,
            }
        )
    )


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
    parser.add_argument("--mb", type=float, default=64.0, help="whole corpus (half: docstrings)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--only", nargs="+", choices=["ours-local", "ours-ray", "datatrove"])
    parser.add_argument("--child-ours", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-datatrove", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_ours:
        child_ours(*args.child_ours)
        return
    if args.child_datatrove:
        child_datatrove(*args.child_datatrove)
        return

    import datatrove

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-datatrove-"))
    print(
        f"machine: {len(os.sched_getaffinity(0))} cores, "
        f"{platform.processor() or platform.machine()}, python {platform.python_version()}, "
        f"datatrove {datatrove.__version__ if hasattr(datatrove, '__version__') else '0.10'}; "
        f"work in {work}",
        flush=True,
    )
    corpus = work / f"corpus-{args.mb:g}mb"
    if not corpus.is_dir():
        print(f"{corpus.name}: {write_corpus(corpus, args.mb)}", flush=True)
    megabytes = sum(p.stat().st_size for p in corpus.glob("docs-*.jsonl")) / 2**20
    tokenizer = work / "bpe-32k"
    if not tokenizer.is_dir():
        train_tokenizer(corpus, tokenizer)
    print(f"\n{megabytes:.1f} MB of docstrings (jsonl), {WORKERS} workers each:", flush=True)
    rates = {}
    for name in args.only or ("ours-local", "ours-ray", "datatrove"):
        out = work / name
        subprocess.run(["rm", "-rf", str(out)], check=True)
        if name == "datatrove":
            result = run_child(
                "--child-datatrove", str(corpus), str(tokenizer / "tokenizer.json"), str(out)
            )
        else:
            recipe = write_recipe(work / f"{name}.yaml", corpus, tokenizer, out)
            result = run_child("--child-ours", str(recipe), name.removeprefix("ours-"))
        rates[name] = result["cpu_seconds"] / result["documents"]
        print(
            f"  {name:10s} {result['seconds']:6.1f} s wall  {result['cpu_seconds']:6.1f} CPU s  "
            f"{result['documents']} documents read, {result['kept']} kept  "
            f"{1e3 * rates[name]:6.2f} CPU ms per document",
            flush=True,
        )
    for name in ("ours-local", "ours-ray"):
        if name not in rates or "datatrove" not in rates:
            continue
        print(f"  datatrove / {name}: {rates['datatrove'] / rates[name]:.2f}x the CPU per document")


if __name__ == "__main__":
    main()
