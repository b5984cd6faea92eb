"""`manifest.json` of a data build: what it holds, and reading it back with every check.

    {
      "format_version": 1,
      "tokenizer": {"path", "fingerprint", "vocab_size", "eos_id", "bos_id", "adds_bos"},
      "dtype": "uint16" | "uint32", "seq_len": 2048, "seed": 1234, "target_tokens": ...,
      "splits": {"train": {"tokens", "documents"}, "validation": {...}},
      "sources": [{"name", "weight", "tokens", "epochs", "documents_read", "dropped", ...}],
      "dedup": {...}, "decontamination": {...},
      "shards": [{"path", "index", "split", "source", "tokens", "documents", "sha256"}]
    }

Paths of shards are relative to the build directory, so a build can be moved or copied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmtrain.confine import inside
from llmtrain.errors import StageInputError

from .shards import INDEX_DTYPE, dtype_from_name, file_sha256

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "validation")

_REQUIRED = ("format_version", "tokenizer", "dtype", "seq_len", "sources", "shards")


def _incomplete(build_dir: Path, what: str) -> StageInputError:
    return StageInputError(
        f"the data build at {build_dir} is incomplete: {what}; run `llmtrain data` with its "
        "recipe again to finish it (or with --overwrite to rebuild it)"
    )


def read_manifest(build_dir: str | Path) -> dict[str, Any]:
    """The manifest of a finished data build, checked against the shard files on disk.

    Raises StageInputError naming `llmtrain data` when the build is missing or incomplete
    (a shard missing or of the wrong size). Shard checksums are not recomputed here; see
    `verify_shards`.
    """
    build_dir = Path(build_dir)
    path = build_dir / MANIFEST
    if not path.is_file():
        raise StageInputError(
            f"no data build at {build_dir} ({MANIFEST} missing); run `llmtrain data RECIPE` first"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _incomplete(build_dir, f"{MANIFEST} cannot be read ({exc})") from exc
    if not isinstance(manifest, dict):
        raise _incomplete(build_dir, f"{MANIFEST} is not a JSON object")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise _incomplete(build_dir, f"{MANIFEST} lacks {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise StageInputError(
            f"the data build at {build_dir} has format_version {manifest['format_version']}, "
            f"this llmtrain reads {FORMAT_VERSION}; rebuild it with `llmtrain data --overwrite`"
        )
    itemsize = dtype_from_name(manifest["dtype"]).itemsize
    for shard in manifest["shards"]:
        for key, size in (
            ("path", shard["tokens"] * itemsize),
            ("index", (shard["documents"] + 1) * INDEX_DTYPE.itemsize),
        ):
            file = inside(build_dir, shard[key], f"{path}: shards")
            if not file.is_file():
                raise _incomplete(build_dir, f"shard file {shard[key]} is missing")
            if file.stat().st_size != size:
                raise _incomplete(
                    build_dir,
                    f"shard file {shard[key]} holds {file.stat().st_size} bytes, the manifest "
                    f"says {size}",
                )
    return manifest


def verify_shards(build_dir: str | Path, manifest: dict[str, Any] | None = None) -> list[str]:
    """Shards whose sha256 differs from the manifest's (reads every shard once)."""
    build_dir = Path(build_dir)
    manifest = manifest or read_manifest(build_dir)
    return [
        shard["path"]
        for shard in manifest["shards"]
        if file_sha256(build_dir / shard["path"]) != shard["sha256"]
    ]


def shards_of(manifest: dict[str, Any], split: str, source: str | None = None) -> list[dict]:
    """The shards of one split (and source), in manifest order."""
    return [
        shard
        for shard in manifest["shards"]
        if shard["split"] == split and (source is None or shard["source"] == source)
    ]


def _tokens(value: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def render_report(manifest: dict[str, Any]) -> str:
    """report.md: the mixture table (as in the GPT-3 paper) and what each step removed."""
    sources = manifest["sources"]
    lines = [
        "# Data build",
        "",
        f"Tokenizer `{manifest['tokenizer']['path']}` (vocabulary "
        f"{manifest['tokenizer']['vocab_size']}, {manifest['dtype']} shards), sequences of "
        f"{manifest['seq_len']} tokens, seed {manifest['seed']}, target "
        f"{_tokens(manifest['target_tokens'])} tokens.",
        "",
        "## Mixture",
        "",
        "| source | tokens | weight in mix | epochs at target |",
        "|---|---:|---:|---:|",
    ]
    for s in sources:
        lines.append(
            f"| {s['name']} | {_tokens(s['tokens'])} | {100 * s['weight']:.1f}% | "
            f"{s['epochs']:.2f} |"
        )
    train, validation = manifest["splits"]["train"], manifest["splits"]["validation"]
    lines += [
        f"| **total** | {_tokens(train['tokens'])} | 100% | |",
        "",
        f"Train: {train['documents']:,} documents, {train['tokens']:,} tokens. Validation: "
        f"{validation['documents']:,} documents, {validation['tokens']:,} tokens.",
        "",
        "## Documents",
        "",
        "| source | read | unreadable | dropped by filters | exact duplicates | near duplicates "
        "| decontaminated | kept |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sources:
        dropped = ", ".join(f"{k} {v:,}" for k, v in s["dropped"].items()) or "0"
        lines.append(
            f"| {s['name']} | {s['documents_read']:,} | {s['read_errors_skipped']:,} | "
            f"{dropped} | {s['exact_duplicates']:,} | {s['near_duplicates']:,} | "
            f"{sum(s['decontaminated'].values()):,} | {s['documents']:,} |"
        )
    details = [(s["name"], k, v) for s in sources for k, v in s["dropped_detail"].items()]
    if details:
        lines += ["", "Filter checks that dropped documents:", ""]
        lines += [f"- {name}: {check} {count:,}" for name, check, count in details]
    contaminated = [
        (s["name"], path, count) for s in sources for path, count in s["decontaminated"].items()
    ]
    if contaminated:
        lines += ["", "Documents dropped for overlapping an eval file or lm-eval task:", ""]
        lines += [f"- {name}: `{path}` {count:,}" for name, path, count in contaminated]
    lines += _text_step_report(sources)
    lines += _model_filter_report(sources)
    near = manifest["dedup"].get("near")
    if near:
        lines += [
            "",
            "## Near-duplicate clusters",
            "",
            f"{near['clusters']:,} clusters holding {near['documents_in_clusters']:,} documents "
            f"(largest {near['largest_cluster']:,}); {near['removed']:,} removed. Candidate "
            f"pairs {near['candidate_pairs']:,}, confirmed {near['confirmed_pairs']:,}.",
            "",
            "| cluster size | clusters |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v:,} |" for k, v in near["size_histogram"].items()]
    return "\n".join(lines) + "\n"


def _text_step_report(sources: list[dict[str, Any]]) -> list[str]:
    """PII replacements and the URL lists' counts, per source."""
    lines: list[str] = []
    pii = [s for s in sources if "pii" in s]
    if pii:
        lines += [
            "",
            "## PII",
            "",
            "| source | e-mail addresses | IP addresses | phone numbers | documents changed |",
            "|---|---:|---:|---:|---:|",
        ]
        for s in pii:
            p = s["pii"]
            lines.append(
                f"| {s['name']} | {p['email']:,} | {p['ip']:,} | {p['phone']:,} | "
                f"{p['documents']:,} |"
            )
    urls = [s for s in sources if "url_filter" in s]
    if urls:
        lines += [
            "",
            "## URL lists",
            "",
            "| source | checked | without a URL | not on an allow list | blocked (per list) |",
            "|---|---:|---:|---:|---|",
        ]
        for s in urls:
            u = s["url_filter"]
            missing = f"{u['missing_url']:,} ({'kept' if u['missing_url_kept'] else 'dropped'})"
            blocked = ", ".join(f"`{k}` {v:,}" for k, v in u["blocked"].items()) or "-"
            lines.append(
                f"| {s['name']} | {u['checked']:,} | {missing} | {u['not_allowed']:,} | {blocked} |"
            )
    return lines


def _model_filter_report(sources: list[dict[str, Any]]) -> list[str]:
    """The language filter's detected languages and the quality classifier's scores."""
    lines: list[str] = []
    languages = [s for s in sources if "languages" in s]
    if languages:
        lines += [
            "",
            "## Languages",
            "",
            "Detected languages of the documents the language filter saw (the most frequent ten):",
            "",
        ]
        for s in languages:
            top = list(s["languages"].items())[:10]
            lines.append(f"- {s['name']}: " + ", ".join(f"{k} {v:,}" for k, v in top))
    quality = [s for s in sources if "quality" in s]
    if quality:
        lines += [
            "",
            "## Quality classifier",
            "",
            "| source | rule | scored | dropped | p10 | p25 | p50 | p75 | p90 |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in quality:
            q = s["quality"]
            rule = (
                f"score >= {q['threshold']}"
                if q["threshold"] is not None
                else f"top {100 * q['top_fraction']:g}%"
            )
            cells = [str(q["quantiles"].get(f"p{p}", "")) for p in (10, 25, 50, 75, 90)]
            lines.append(
                f"| {s['name']} | {rule} | {q['scored']:,} | {q['dropped']:,} | "
                + " | ".join(cells)
                + " |"
            )
        lines += ["", "Score histogram (documents per score bin):", ""]
        bins = list(quality[0]["quality"]["histogram"])
        lines += ["| source | " + " | ".join(bins) + " |", "|---|" + "---:|" * len(bins)]
        for s in quality:
            counts = s["quality"]["histogram"].values()
            lines.append(f"| {s['name']} | " + " | ".join(f"{c:,}" for c in counts) + " |")
    return lines
