"""PII replacement, URL lists and benchmark decontamination of the data build: documents per
CPU second, beside datatrove's PIIFormatter and URLFilter on the same documents, and the
whole build with everything on.

    python scripts/bench/data_pii_urls.py [--max-mb 3] [--datatrove-extras DIR]

Corpus: the standard library's module docstrings (`stdlib_corpus.iter_documents("docs")`,
--max-mb of text), which hold real look-alikes (version numbers, dotted names, addresses in
the ipaddress and socket docs, a few e-mail addresses); one document in ten gets a planted
e-mail address, public IPv4 address and phone number. Each document gets a URL on one of
2,000 domains (https://siteN.exampleK.com/...); the block list holds 200 of them plus 100,000
other domains. (datatrove matches a list entry against the URL's registered domain and its
full host name only, ours against every parent domain too; on these URLs both agree.)

1. PII, one process, CPU seconds of the process: ours (`pii.PiiReplacer`, e-mail + IP, as
   datatrove does, and with phone numbers) and datatrove's PIIFormatter (e-mail + IP, its
   placeholders set to ours), with the documents where the two outputs differ counted and
   the first few shown.
2. The URL block list: ours (`scan.url_filtered`) and datatrove's URLFilter
   (use_integrated_lists off, the same domains as extra_domains, no banned words); documents
   dropped by each. URLFilter needs three packages outside the `bench` extra: give a
   `pip install --target DIR pyahocorasick fasteners tldextract` as --datatrove-extras (its
   row is left out without them).
3. The whole build (`llmtrain data`, one worker process, CPU seconds of this process and its
   children), on the documents as a jsonl source with the URL field: the default steps, and
   everything on (PII, the block list, language ID, an lm-eval task and an eval file as
   decontamination sources), adding them a few at a time. The tokenizer is a 512-token BPE
   trained on the spot. Loading the lm-eval task (lm-eval's import, cold, and the index of
   the task directory) is a fixed cost, printed on its own; the build rows pay only the index
   (lm-eval is imported by then).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import platform
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts" / "bench"))

from data_quality import cpu_rate  # noqa: E402


def planted(texts: list[str]) -> list[str]:
    out = []
    for i, text in enumerate(texts):
        if i % 10 == 0:
            text += (
                f"\n\nContact jane.doe{i}@example.org or +44 20 7946 {i % 10000:04d}; "
                f"the server is at 8.8.{i % 256}.{1 + i % 200}."
            )
        out.append(text)
    return out


def urls_and_lists(count: int, work: Path) -> tuple[list[str], Path]:
    rng = np.random.default_rng(0)
    domains = [f"site{n}.example{n % 7}.com" for n in range(2000)]
    urls = [f"https://{domains[d]}/page/{i}" for i, d in enumerate(rng.integers(2000, size=count))]
    blocked = [domains[n] for n in range(0, 2000, 10)]
    filler = [f"filler{n}.blocked{n % 13}.net" for n in range(100_000)]
    block_list = work / "block.txt"
    block_list.write_text("# bench\n" + "\n".join(blocked + filler) + "\n", encoding="utf-8")
    return urls, block_list


def pii(texts: list[str]) -> dict:
    from datatrove.pipeline.formatters import PIIFormatter

    from llmtrain.data_pipeline.config import PiiSection
    from llmtrain.data_pipeline.pii import PiiReplacer

    rows = {}
    outputs = {}
    for name, phone in (("ours, e-mail + IP", False), ("ours, e-mail + IP + phone", True)):
        replacer = PiiReplacer(PiiSection(enabled=True, phone=phone))
        counts: collections.Counter[str] = collections.Counter()
        rate, out = cpu_rate(lambda b, r=replacer, c=counts: [r.replace(t, c) for t in b], texts)
        rows[name] = {"docs_per_cpu_s": rate, "replaced": dict(counts)}
        outputs[name] = out
    formatter = PIIFormatter(email_replacement="<EMAIL>", ip_replacement="<IP>")
    rate, theirs = cpu_rate(lambda b: [formatter.format(t) for t in b], texts)
    ours = outputs["ours, e-mail + IP"]
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    rows["datatrove PIIFormatter (e-mail + IP)"] = {
        "docs_per_cpu_s": rate,
        "documents_differing_from_ours": len(differ),
    }
    for i in differ[:3]:
        diff = [(a, b) for a, b in zip(ours[i].split(), theirs[i].split(), strict=False) if a != b]
        print(f"PII: document {i} differs (ours, datatrove): {diff[:3]}")
    return rows


def url_filter(texts: list[str], urls: list[str], block_list: Path) -> dict:
    from datatrove.data import Document
    from datatrove.pipeline.filters import URLFilter

    from llmtrain.data_pipeline.config import UrlFilterSection
    from llmtrain.data_pipeline.scan import url_filtered
    from llmtrain.data_pipeline.urls import UrlFilter, read_domains

    ours = UrlFilter(UrlFilterSection(block_lists=[block_list]))
    pairs = list(zip(texts, urls, strict=True))

    def run(batch):
        counts: collections.Counter[str] = collections.Counter()
        kept = url_filtered(
            [t for t, _ in batch], [u for _, u in batch], ours, counts, lambda *a: None
        )
        return len(kept)

    rate, kept = cpu_rate(run, pairs)
    rows = {"ours (scan.url_filtered)": {"docs_per_cpu_s": rate, "dropped": len(pairs) - kept}}
    try:
        import ahocorasick  # noqa: F401
        import fasteners  # noqa: F401
        import tldextract  # noqa: F401
    except ImportError as exc:
        print(f"URL lists: datatrove's URLFilter left out ({exc}; see --datatrove-extras)")
        return rows
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)  # its suffix list: offline here
    step = URLFilter(
        extra_domains=read_domains(block_list),
        use_integrated_lists=False,
        banned_words=[],
        banned_subwords=[],
        soft_banned_words=[],
    )
    documents = [Document(text=t, id=str(i), metadata={"url": u}) for i, (t, u) in enumerate(pairs)]
    step.filter(documents[0])
    rate, decisions = cpu_rate(lambda b: [step.filter(d) for d in b], documents)
    dropped = sum(1 for d in decisions if d is not True)
    rows["datatrove URLFilter (extra_domains)"] = {"docs_per_cpu_s": rate, "dropped": dropped}
    return rows


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def whole_build(texts: list[str], urls: list[str], block_list: Path, work: Path) -> dict:
    from llmtrain.data_pipeline.build import build_data
    from llmtrain.data_pipeline.eval_tasks import task_items
    from llmtrain.recipe import validate_recipe
    from tests.conftest import build_tiny_tokenizer
    from tests.test_data_quality import write_eval_task

    tokenizer = build_tiny_tokenizer(work / "tokenizer")
    corpus = work / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for text, url in zip(texts, urls, strict=True):
            f.write(json.dumps({"text": text, "url": url}) + "\n")
    eval_rows = [{"question": t[:400], "answer": t[400:800]} for t in texts[::50]]
    tasks = write_eval_task(work / "tasks", "bench_qa", eval_rows)
    evals = work / "eval.jsonl"
    evals.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[25::50]))
    everything = {
        "pii": {"enabled": True},
        "url_filter": {"block_lists": [str(block_list)]},
        "filters": {"language": {"enabled": True, "languages": ["en"]}},
        "decontamination": {
            "eval_files": [str(evals)],
            "tasks": ["bench_qa"],
            "include_path": str(tasks),
        },
    }
    text_steps = {
        "pii": {"enabled": True},
        "url_filter": {"block_lists": [str(block_list)]},
        "decontamination": {"eval_files": [str(evals)]},
    }
    with_task = {**text_steps, "decontamination": everything["decontamination"]}
    started = cpu_seconds()
    task_items(["bench_qa"], tasks)  # lm-eval's import and the task directory's index
    print(f"build: loading the lm-eval task: {cpu_seconds() - started:.2f} CPU s (cold)")
    rows = {}
    for name, extra in (
        ("warm-up (lazy imports, first pool), not reported", {}),
        ("default steps", {}),
        ("+ PII, block list, eval file", text_steps),
        ("+ lm-eval task", with_task),
        ("+ language ID (everything on)", everything),
    ):
        raw = {
            "name": "bench",
            "output_dir": str(work / f"build-{len(rows)}"),
            "seed": 0,
            "data": {
                "tokenizer": str(tokenizer),
                "num_proc": 1,
                "sources": [{"name": "docs", "paths": [str(corpus)], "url_field": "url"}],
                **extra,
                "filters": {"length": {"min_words": 5}, **extra.get("filters", {})},
            },
        }
        started = cpu_seconds()
        out = build_data(validate_recipe(raw))
        seconds = cpu_seconds() - started
        entry = json.loads((out / "manifest.json").read_text())["sources"][0]
        rows[name] = {
            "docs_per_cpu_s": len(texts) / seconds,
            "kept": entry["documents"],
            "dropped": entry["dropped"],
            "decontaminated": entry["decontaminated"],
            "pii": entry.get("pii"),
        }
    del rows["warm-up (lazy imports, first pool), not reported"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-mb", type=float, default=3.0)
    parser.add_argument("--datatrove-extras", metavar="DIR", help="pip --target dir (see doc)")
    args = parser.parse_args()
    if args.datatrove_extras:
        sys.path.append(args.datatrove_extras)  # after the environment's own packages
    from llmtrain.data_pipeline.clean import clean_text
    from llmtrain.data_pipeline.config import CleanSection
    from llmtrain.data_pipeline.stdlib_corpus import iter_documents

    print(
        f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    raw = list(iter_documents("docs", max_bytes=int(args.max_mb * 1e6)))
    texts = planted([clean_text(t, CleanSection()) for t in raw])
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        urls, block_list = urls_and_lists(len(texts), work)
        results = {
            "pii": pii(texts),
            "url_filter": url_filter(texts, urls, block_list),
            "build": whole_build(texts, urls, block_list, work),
        }
    results["documents"] = len(texts)
    print(json.dumps(results, indent=2))
    for section in ("pii", "url_filter", "build"):
        rows = results[section]
        base = next(iter(rows.values()))["docs_per_cpu_s"]
        for name, row in rows.items():
            print(
                f"{section}: {name}: {row['docs_per_cpu_s']:.0f} docs/CPU-s "
                f"({row['docs_per_cpu_s'] / base:.2f}x the first row)"
            )
        theirs = [row for name, row in rows.items() if name.startswith("datatrove")]
        if theirs:
            ratio = base / theirs[0]["docs_per_cpu_s"]
            print(f"{section}: ours (first row) / datatrove: {ratio:.2f}x per CPU second")


if __name__ == "__main__":
    main()
