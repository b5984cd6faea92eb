"""`llmtrain report DIR`: one Markdown page that shows what each stage of a pipeline did.

DIR is a recipe's output_dir. The report reads what the stages wrote (tokenizer/report.json,
data/report.md, <stage>/metrics.jsonl, eval/results.md) and writes DIR/report/report.md with a
PNG of the curves of every training stage. Stages that have not run are left out. A directory
is taken as the stage kind of its name, else the kind its `llmtrain run` marker records
(stage instances), in the registry's order; the kind's `curves` are drawn first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llmtrain.atomic import atomic_write_text
from llmtrain.errors import StageInputError
from llmtrain.pipeline import MARKER
from llmtrain.rundir import read_metrics
from llmtrain.stages import Stage, registry

SKIPPED = {"step", "epoch", "time", "elapsed"}


def build_report(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise StageInputError(f"report: {root} does not exist; pass a recipe's output_dir")
    out_dir = root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [f"# Pipeline report: {root.name}\n"]
    for name, kind in _stage_dirs(root):
        produces = kind.produces if kind else None
        if produces == "tokenizer":
            sections.append(_tokenizer_section(root / name))
        elif produces == "data":
            sections.append(_data_section(root / name, name))
        elif produces == "eval":
            sections.append(_eval_section(root / name))
        else:
            sections.append(_training_section(root / name, name, kind, out_dir))
    body = "\n".join(s for s in sections if s)
    if body.count("\n## ") == 0:
        raise StageInputError(f"report: nothing to report in {root}: no stage has run there yet")
    path = out_dir / "report.md"
    atomic_write_text(path, body)
    return path


def _stage_dirs(root: Path) -> list[tuple[str, Stage | None]]:
    """(directory name, its stage kind or None), kinds in registry order, then by name."""
    kinds = registry()
    found = []
    for path in root.iterdir():
        if not path.is_dir() or path.name == "report":
            continue
        kind = kinds.get(path.name)
        marker = path / MARKER
        if kind is None and marker.is_file():
            kind = kinds.get(json.loads(marker.read_text()).get("kind", ""))
        found.append((path.name, kind))
    order = list(kinds)
    found.sort(key=lambda item: (order.index(item[1].name) if item[1] else len(order), item[0]))
    return found


def _tokenizer_section(path: Path) -> str:
    report = path / "report.json"
    if not report.is_file():
        return ""
    data = json.loads(report.read_text())
    rows = [
        (key, value) for key, value in _flatten(data).items() if not isinstance(value, list | dict)
    ]
    keep = [
        r
        for r in rows
        if any(
            k in r[0]
            for k in (
                "vocab",
                "algorithm",
                "backend",
                "bytes_per_token",
                "tokens_per_word",
                "unk",
                "round_trip",
                "seconds",
            )
        )
    ]
    lines = ["## Tokenizer\n", "| setting | value |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in (keep or rows)[:20]]
    return "\n".join(lines) + "\n"


def _data_section(path: Path, name: str) -> str:
    report = path / "report.md"
    if not report.is_file():
        return ""
    text = report.read_text().strip()
    # demote the data report's own headings under ours
    text = "\n".join("##" + line if line.startswith("#") else line for line in text.splitlines())
    title = "Data mixture" if name == "data" else f"Data mixture: {name}"
    return f"## {title}\n\n{text}\n"


def _training_section(path: Path, stage: str, kind: Stage | None, out_dir: Path) -> str:
    metrics_path = path / "metrics.jsonl"
    if not metrics_path.is_file():
        return ""
    records = read_metrics(metrics_path)
    if not records:
        return ""
    series = _numeric_series(records)
    order = [k for k in (kind.curves if kind else ()) if k in series]
    order += sorted(k for k in series if k not in order)
    lines = [f"## {stage}\n", f"{len(records)} logged steps, last step {records[-1]['step']}.\n"]
    plotted = [k for k in order if len(series[k]) >= 2][:12]
    if plotted:
        image = out_dir / f"{stage}.png"
        _plot(series, plotted, stage, image)
        lines.append(f"![{stage} curves]({image.name})\n")
    lines += ["| metric | first | last | min | max |", "|---|---|---|---|---|"]
    for key in order:
        values = [v for _, v in series[key]]
        lines.append(
            f"| {key} | {_fmt(values[0])} | {_fmt(values[-1])} | {_fmt(min(values))} | {_fmt(max(values))} |"
        )
    final = path / "final"
    lines.append(
        f"\nfinal model: `{final}`" if final.is_dir() else "\nno final model yet (interrupted?)"
    )
    return "\n".join(lines) + "\n"


def _eval_section(path: Path) -> str:
    table = path / "results.md"
    if not table.is_file():
        return ""
    return f"## Evaluation\n\n{table.read_text().strip()}\n"


def _numeric_series(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key in SKIPPED or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            series.setdefault(key, []).append((record["step"], float(value)))
    return series


def _plot(series: dict, keys: list[str], stage: str, image: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        steps, values = zip(*series[key])
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(stage)
    fig.tight_layout()
    tmp = image.with_name(f".{image.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(image)


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)
