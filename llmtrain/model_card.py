"""README.md of every final/: a Hugging Face model card, so that `huggingface-cli upload`
gives a usable page.

Everything comes from the run directory: its config.yaml (the resolved recipe), the stage's
name (the directory's), the data it read and, when present, <output_dir>/eval/<stage>.json.

    ---
    base_model: runs/demo/pretrain/final      # the stage's input model (none for pretrain)
    datasets: [arithmetic_sft.jsonl]           # by name; the sha256 of each is in the table
    library_name: transformers
    license: apache-2.0                        # the recipe's `license`, when set
    pipeline_tag: text-generation
    tags: [llmtrain, sft]
    ---
    # demo: sft
    ... training stages (pretrain, then sft) with the settings the recipe gave them,
    data with sha256, eval results, intended use (left for the user)

The card is written with final/ (RunDir.save_final) and rewritten by `llmtrain run` after
each eval, when <output_dir>/eval/<stage>.json holds the stage's results.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from llmtrain import __version__
from llmtrain.atomic import atomic_write_text
from llmtrain.stages import registry

INTENDED_USE = (
    "Not stated yet: whoever trained this model writes here what it is for, what it must not "
    "be used for, and its known limitations."
)


def write_model_card(final_dir: Path, run_dir: Path) -> Path:
    """Write `final_dir/README.md` for the stage whose run directory is `run_dir`."""
    path = Path(final_dir) / "README.md"
    atomic_write_text(path, model_card(Path(final_dir), Path(run_dir)))
    return path


def refresh_model_cards(output_dir: Path) -> list[Path]:
    """Rewrite the card of every <output_dir>/<stage>/final that has one (after eval, so the
    cards show its results)."""
    return [
        write_model_card(card.parent, card.parent.parent)
        for card in sorted(Path(output_dir).glob("*/final/README.md"))
    ]


def model_card(final_dir: Path, run_dir: Path) -> str:
    config_path = run_dir / "config.yaml"
    recipe = (
        yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    )
    recipe = recipe or {}
    stage = run_dir.name
    output_dir = Path(recipe.get("output_dir") or run_dir.parent)
    chain = _stage_chain(recipe, stage)
    base_model = _base_model(recipe, stage, output_dir)
    datasets = _datasets(recipe, stage, output_dir)
    kind = _kind(recipe, stage)
    reward_model = _is_sequence_classifier(final_dir)
    metadata: dict[str, Any] = {}
    if base_model:
        metadata["base_model"] = base_model
    if datasets:
        metadata["datasets"] = [d["name"] for d in datasets]
    metadata["library_name"] = "transformers"
    if recipe.get("license"):
        metadata["license"] = recipe["license"]
    metadata["pipeline_tag"] = "text-classification" if reward_model else "text-generation"
    metadata["tags"] = list(dict.fromkeys(["llmtrain", kind, stage]))

    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {recipe.get('name', output_dir.name)}: {stage}",
        "",
        f"Trained with llmtrain {__version__}, stage "
        f"`{stage}` ({kind}) of the recipe `{recipe.get('name', '?')}`"
        + (f", starting from `{base_model}`." if base_model else ", from scratch."),
        "",
        "## Training stages",
        "",
        "| stage | kind | settings the recipe gave it |",
        "|---|---|---|",
    ]
    for name in chain:
        settings = ", ".join(f"{k}={v}" for k, v in _key_settings(recipe, name).items())
        lines.append(f"| {name} | {_kind(recipe, name)} | {settings or 'defaults'} |")
    if datasets:
        lines += ["", "## Data", "", "| dataset | sha256 | weight |", "|---|---|---|"]
        for d in datasets:
            lines.append(f"| {d['name']} | `{d['sha256']}` | {d.get('weight', '')} |")
        if kind == "pretrain":
            lines += ["", "sha256 of a source: of its shards' sha256 in the data build's order."]
    lines += ["", "## Evaluation", ""]
    lines += _eval_lines(output_dir / "eval" / f"{stage}.json")
    lines += ["", "## Intended use", "", INTENDED_USE, "", "## Use", ""]
    auto = "AutoModelForSequenceClassification" if reward_model else "AutoModelForCausalLM"
    lines += [
        "```python",
        f"from transformers import AutoTokenizer, {auto}",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")',
        f'model = {auto}.from_pretrained("PATH_OR_REPO")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _kind(recipe: dict[str, Any], stage: str) -> str:
    instance = (recipe.get("stages") or {}).get(stage)
    return instance.get("kind", stage) if isinstance(instance, dict) else stage


def _section(recipe: dict[str, Any], stage: str) -> dict[str, Any]:
    instance = (recipe.get("stages") or {}).get(stage)
    if isinstance(instance, dict):
        return instance
    return recipe.get(stage) or {}


def _input_stage(recipe: dict[str, Any], stage: str) -> str | None:
    """The stage whose final/ this stage started from (None: an explicit model or none)."""
    section = _section(recipe, stage)
    if section.get("model"):
        return None
    given = (section.get("inputs") or {}).get("model")
    if given:
        return given
    kind = registry().get(_kind(recipe, stage))
    return kind.reads.get("model") if kind is not None else None


def _stage_chain(recipe: dict[str, Any], stage: str) -> list[str]:
    """The stages that made this model, oldest first."""
    chain = [stage]
    while (previous := _input_stage(recipe, chain[-1])) and previous not in chain:
        chain.append(previous)
    return chain[::-1]


def _base_model(recipe: dict[str, Any], stage: str, output_dir: Path) -> str | None:
    section = _section(recipe, stage)
    if section.get("model") and _kind(recipe, stage) != "pretrain":
        return str(section["model"])
    previous = _input_stage(recipe, stage)
    return str(output_dir / previous / "final") if previous else None


def _key_settings(recipe: dict[str, Any], stage: str) -> dict[str, Any]:
    """The scalar settings of a stage's section that differ from their defaults (for
    pretrain, also the model section's)."""
    kind = registry().get(_kind(recipe, stage))
    sections = [(_section(recipe, stage), kind.section if kind else None)]
    if kind is not None:
        sections += [(recipe.get(name) or {}, cls) for name, cls in kind.extra_sections.items()]
    settings = {}
    for values, cls in sections:
        fields = getattr(cls, "model_fields", {})
        for key, value in values.items():
            if isinstance(value, (dict, list)) or key in ("kind", "output_dir"):
                continue
            field = fields.get(key)
            if field is not None and field.default == value:
                continue
            settings[key] = value
    return settings


def _datasets(recipe: dict[str, Any], stage: str, output_dir: Path) -> list[dict[str, Any]]:
    """What the stage trained on: alignment files (name, sha256 of the file, weight), or the
    pretraining data build's sources (name, sha256 of their shards' sha256, weight)."""
    section = _section(recipe, stage)
    if _kind(recipe, stage) == "pretrain":
        manifest_path = Path(section.get("data") or output_dir / "data") / "manifest.json"
        if not manifest_path.is_file():
            return []
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        found = []
        for source in manifest.get("sources", []):
            digest = hashlib.sha256()
            for shard in manifest.get("shards", []):
                if shard.get("source") == source["name"]:
                    digest.update(shard["sha256"].encode())
            found.append(
                {"name": source["name"], "sha256": digest.hexdigest(), "weight": source["weight"]}
            )
        return found
    found = []
    for item in section.get("data") or []:
        path = Path(item["path"] if isinstance(item, dict) else item)
        if path.exists():
            found.append(
                {
                    "name": path.name,
                    "sha256": _path_sha256(path),
                    "weight": item.get("weight", 1.0) if isinstance(item, dict) else 1.0,
                }
            )
    return found


def _path_sha256(path: Path) -> str:
    """sha256 of a file; of a directory: of its files' relative paths and bytes, in order."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def _is_sequence_classifier(final_dir: Path) -> bool:
    config = final_dir / "config.json"
    if not config.is_file():
        return False
    names = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return any(name.endswith("ForSequenceClassification") for name in names)


def _eval_lines(path: Path) -> list[str]:
    if not path.is_file():
        return ["No evaluation results yet (`llmtrain eval RECIPE` writes them)."]
    result = json.loads(path.read_text(encoding="utf-8"))
    rows = ["| task | metric | value |", "|---|---|---|"]
    for group in ("perplexity", "tasks"):
        for task, metrics in (result.get(group) or {}).items():
            if not isinstance(metrics, dict):
                metrics = {group: metrics}
            for metric, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows.append(f"| {task} | {metric} | {value:.4g} |")
    return rows if len(rows) > 2 else ["No numeric evaluation results."]
