"""Language ID and the quality classifier of the data build: accuracy and documents per CPU
second, beside datatrove where it can run here.

    python scripts/bench/data_quality.py [--per-language 25] [--datatrove DIR]

1. A multilingual set from the translated man pages on this machine
   (/usr/share/man/<lang>/man*/*.gz, 25 languages on a Debian image with manpages-l10n) and
   English ones (/usr/share/man/man1): roff requests and escapes stripped, the first 2000
   characters of each page, at most --per-language pages per language, labelled with the
   directory's language (pt_BR -> pt, zh_CN/zh_TW -> zh). The labels are noisy: translated
   pages keep untranslated paragraphs, option lists and names in English.
2. Language ID, one process, CPU seconds of the process: our step (`scan.language_filter`:
   lingua's confidence values, low-accuracy mode as by default and high-accuracy mode) and the
   plain lingua call (`detect_language_of`, no score). datatrove's LanguageFilter downloads
   fastText's lid.176 from the network at first use, so it cannot run here (checked when
   --datatrove is given).
3. The quality classifier: trained (`quality.train_classifier`) on the Python language
   reference (positives) against its shuffled words and spam (negatives); then the scoring
   step on stdlib module docstrings: ours (`scan.quality_filter`, one batched predict) and,
   with --datatrove, datatrove's FastTextClassifierFilter (a predict per document) on the
   same model file and documents; their keep decisions are compared.
4. The scan step (`scan.process_chunk`: clean, filters, hashes) over the docstrings with the
   language filter and the classifier off and on.

--datatrove DIR: a `pip install --target DIR datatrove loguru humanize fasteners
fasttext-numpy2-wheel` (datatrove requires that fastText distribution; kept out of the
project's environment, whose `fasttext` module is fasttext-wheel's).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

MAN = Path("/usr/share/man")
LABELS = {"pt_BR": "pt", "zh_CN": "zh", "zh_TW": "zh"}
_ESCAPES = re.compile(r"\\f(\(..|\[[^]]*\]|.)|\\\(..|\\\[[^]]*\]|\\s[-+]?\d+|\\[-&e|^ ]|\\.")


def man_text(path: Path, limit: int = 2000) -> str:
    raw = gzip.open(path, "rb").read().decode("utf-8", errors="replace")
    lines = [line for line in raw.splitlines() if not line.startswith((".", "'"))]
    text = _ESCAPES.sub("", " ".join(lines))
    return " ".join(text.split())[:limit]


def multilingual_set(per_language: int) -> list[tuple[str, str]]:
    """(label, text) pairs from the man pages on this machine."""
    pages: dict[str, list[Path]] = {"en": sorted((MAN / "man1").glob("*.gz"))}
    for directory in sorted(
        p for p in MAN.iterdir() if p.is_dir() and not p.name.startswith("man")
    ):
        label = LABELS.get(directory.name, directory.name)
        pages.setdefault(label, []).extend(sorted(directory.glob("man*/*.gz")))
    out = []
    for label, paths in sorted(pages.items()):
        rng = np.random.default_rng(0)
        chosen = 0
        for index in rng.permutation(len(paths)):
            text = man_text(paths[index])
            if len(text) >= 300:
                out.append((label, text))
                chosen += 1
                if chosen == per_language:
                    break
    return out


def cpu_rate(function, items: list) -> tuple[float, object]:
    started = time.process_time()
    result = function(items)
    return len(items) / max(time.process_time() - started, 1e-9), result


def language_id(samples: list[tuple[str, str]]) -> dict:
    from lingua import LanguageDetectorBuilder

    from llmtrain.data_pipeline.config import FiltersSection
    from llmtrain.data_pipeline.scan import language_filter

    labels = [label for label, _ in samples]
    texts = [text for _, text in samples]
    rows = {}
    for name, low in (("ours, low accuracy (default)", True), ("ours, high accuracy", False)):
        filters = FiltersSection.model_validate(
            {"language": {"enabled": True, "languages": ["en"], "low_accuracy": low}}
        )
        language_filter(texts[:2], filters, lambda *a: None)  # models loaded outside the timing
        rate, (_, found, _, _) = cpu_rate(
            lambda t, f=filters: language_filter(t, f, lambda *a: None), texts
        )
        found = [code.decode() for code in found]
        rows[name] = {
            "docs_per_cpu_s": rate,
            "accuracy": _accuracy(labels, found),
            "top_confusions": _confusions(labels, found),
        }
    detector = LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()

    def plain(batch):
        return [detector.detect_language_of(t) for t in batch]

    plain(texts[:2])
    rate, found = cpu_rate(plain, texts)
    codes = [f.iso_code_639_1.name.lower() if f else "und" for f in found]
    rows["plain lingua detect_language_of (low accuracy)"] = {
        "docs_per_cpu_s": rate,
        "accuracy": _accuracy(labels, codes),
    }
    return rows


def _confusions(labels: list[str], found: list[str]) -> dict[str, int]:
    """The most frequent (label -> detected) errors."""
    pairs = collections.Counter(f"{a}->{b}" for a, b in zip(labels, found, strict=True) if a != b)
    return dict(pairs.most_common(6))


def _accuracy(labels: list[str], found: list[str]) -> float:
    return float(np.mean([a == b for a, b in zip(labels, found, strict=True)]))


def train_model(work: Path) -> Path:
    from llmtrain.data_pipeline.stdlib_corpus import reference_documents
    from llmtrain.recipe import validate_recipe
    from tests.data_support import write_jsonl
    from tests.test_data_quality import SPAM, prose, shuffled

    rng = np.random.default_rng(0)
    positive = reference_documents()
    negative = [shuffled(d, rng) for d in positive[1::2]] + prose(SPAM, 150, seed=1)
    raw = {
        "name": "bench",
        "output_dir": str(work),
        "seed": 0,
        "data": {
            "sources": [{"name": "x", "paths": [str(write_jsonl(work / "pos.jsonl", positive))]}],
            "filters": {"quality": {"model": str(work / "classifier")}},
            "classifier": {
                "positive": [str(work / "pos.jsonl")],
                "negative": [str(write_jsonl(work / "neg.jsonl", negative))],
                "epoch": 25,
                "lr": 0.5,
            },
        },
    }
    from llmtrain.data_pipeline.quality import train_classifier

    info = train_classifier(validate_recipe(raw))
    print(f"classifier: held-out {info['held_out']}")
    return work / "classifier"


def classifier(model: Path, texts: list[str], datatrove: bool) -> dict:
    from llmtrain.data_pipeline.config import FiltersSection
    from llmtrain.data_pipeline.scan import quality_filter

    filters = FiltersSection.model_validate(
        {"quality": {"enabled": True, "model": str(model), "threshold": 0.5}}
    )
    quality_filter(texts[:2], filters, lambda *a: None)
    rate, (kept, _, _) = cpu_rate(lambda t: quality_filter(t, filters, lambda *a: None), texts)
    rows = {"ours (scan.quality_filter, batched)": {"docs_per_cpu_s": rate, "kept": len(kept)}}
    if datatrove:
        from datatrove.data import Document
        from datatrove.pipeline.filters import FastTextClassifierFilter

        step = FastTextClassifierFilter(
            str(model / "model.bin"), keep_labels=("positive", 0.5), newline_replacement=" "
        )
        documents = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
        step.filter(documents[0])

        def theirs(batch):
            return [step.filter(d) for d in batch]

        rate, decisions = cpu_rate(theirs, documents)
        theirs_kept = {i for i, keep in enumerate(decisions) if keep is True}
        rows["datatrove FastTextClassifierFilter"] = {
            "docs_per_cpu_s": rate,
            "kept": len(theirs_kept),
            "same_decisions": theirs_kept == set(kept),
        }
    return rows


def scan_step(model: Path, texts: list[str]) -> dict:
    from llmtrain.data_pipeline.config import DataSection
    from llmtrain.data_pipeline.scan import init_worker, make_context, process_chunk

    rows = {}
    for name, extra in (
        ("scan, heuristic filters only", {}),
        (
            "scan + language ID + classifier",
            {
                "language": {"enabled": True, "languages": ["en"]},
                "quality": {"enabled": True, "model": str(model), "threshold": 0.5},
            },
        ),
    ):
        section = DataSection.model_validate(
            {
                "sources": [{"name": "docs", "paths": ["x"]}],
                "filters": {"gopher_quality": {"enabled": False}, **extra},
            }
        )
        init_worker(make_context(section, None))
        process_chunk("docs", texts[:2])

        def run(batch):
            return [process_chunk("docs", batch[i : i + 1000]) for i in range(0, len(batch), 1000)]

        rate, results = cpu_rate(run, texts)
        rows[name] = {"docs_per_cpu_s": rate, "kept": sum(len(r.texts) for r in results)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-language", type=int, default=25)
    parser.add_argument("--datatrove", metavar="DIR", help="a pip --target dir with datatrove")
    args = parser.parse_args()
    if args.datatrove:
        sys.path.insert(0, args.datatrove)
    from llmtrain.data_pipeline.stdlib_corpus import iter_documents

    print(
        f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    samples = multilingual_set(args.per_language)
    languages = sorted({label for label, _ in samples})
    print(f"multilingual set: {len(samples)} man pages, {len(languages)} languages: {languages}")
    results: dict = {"language_id": language_id(samples)}
    if args.datatrove:
        from datatrove.data import Document
        from datatrove.pipeline.filters import LanguageFilter

        try:
            LanguageFilter(languages=["en"]).filter(Document(text=samples[0][1], id="0"))
            results["datatrove_language_filter"] = "ran"
        except Exception as exc:  # its model is downloaded at first use
            results["datatrove_language_filter"] = f"cannot run offline: {type(exc).__name__}"
    docs = list(iter_documents("docs", max_bytes=3_000_000))
    with tempfile.TemporaryDirectory() as work:
        model = train_model(Path(work))
        results["classifier"] = classifier(model, docs, bool(args.datatrove))
        results["scan"] = scan_step(model, docs)
    results["documents"] = {"multilingual": len(samples), "docstrings": len(docs)}
    print(json.dumps(results, indent=2))
    for section in ("language_id", "classifier", "scan"):
        rows = results[section]
        base = next(iter(rows.values()))["docs_per_cpu_s"]
        for name, row in rows.items():
            extra = f", accuracy {row['accuracy']:.3f}" if "accuracy" in row else ""
            print(
                f"{section}: {name}: {row['docs_per_cpu_s']:.0f} docs/CPU-s "
                f"({row['docs_per_cpu_s'] / base:.2f}x the first row){extra}"
            )


if __name__ == "__main__":
    main()
