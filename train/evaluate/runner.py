"""`llmtrain eval`: perplexity and tasks for each model the eval section names.

Writes <output_dir>/eval/<model>.json (metrics per task, perplexities; with eval.lm_eval also
lm-evaluation-harness' tasks among them and, under "lm_eval", its version and each task's),
samples of each task as <output_dir>/eval/samples/<model>-<task>.jsonl, and results.md, a
table of every model evaluated so far.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from llmtrain.atomic import atomic_write_json, atomic_write_text
from llmtrain.errors import RecipeError, StageInputError
from llmtrain.recipe import Recipe
from llmtrain.runtime import seed_everything
from llmtrain.stages import registry
from llmtrain.train.evaluate.config import EvalSection
from llmtrain.train.evaluate.generation import DecodingSection, load_causal_lm
from llmtrain.train.evaluate.perplexity import perplexity_on_texts, score_windows, summarize
from llmtrain.train.evaluate.tasks import (
    TaskSection,
    fewshot_examples,
    load_task_records,
    run_generation_task,
    run_multiple_choice_task,
    run_preference_task,
    with_fewshot,
)

log = logging.getLogger(__name__)


def resolve_models(
    recipe: Recipe, section: EvalSection, names: list[str] | None = None
) -> list[tuple[str, Path, bool]]:
    """(name, model directory, is a stage model) for each model to evaluate."""
    wanted = names or section.models
    causal_lm_stages = [
        stage for stage in recipe.stage_names() if recipe.stage_kind(stage).produces == "causal_lm"
    ]
    if not wanted:
        found = [
            (stage, recipe.stage_dir(stage) / "final", True)
            for stage in causal_lm_stages
            if (recipe.stage_dir(stage) / "final").is_dir()
        ]
        if not found:
            raise StageInputError(
                "eval: no stage of this recipe has a final model yet; run a training stage first "
                "(llmtrain pretrain / llmtrain align ...) or name a model directory with --model"
            )
        return found
    models = []
    for name in wanted:
        if name in causal_lm_stages or name in recipe.known_stages():
            path = recipe.stage_dir(name) / "final"
            if not path.is_dir():
                raise StageInputError(f"eval: {path} does not exist; run the {name} stage first")
            models.append((name, path, True))
        else:
            path = Path(name).expanduser().resolve()
            if not path.is_dir():
                raise StageInputError(
                    f"eval: {name!r} is neither a stage ({', '.join(causal_lm_stages)}) nor a "
                    "model directory"
                )
            # a stage's output directory is named by its stage: .../sft/final -> sft-final
            label = f"{path.parent.name}-final" if path.name == "final" else path.name
            models.append((label, path, False))
    labels = [label for label, _, _ in models]
    for label in labels:
        if labels.count(label) > 1:
            clash = [str(path) for other, path, _ in models if other == label]
            raise StageInputError(
                f"eval: {' and '.join(clash)} would both write eval/{label}.json; evaluate "
                "them in separate runs or copy one to a directory of another name"
            )
    return models


def evaluate_recipe(recipe: Recipe, names: list[str] | None = None) -> dict[str, dict]:
    section: EvalSection = recipe.section("eval")
    recipe.check_inputs("eval")
    if section.lm_eval is not None:
        from llmtrain.train.evaluate.harness import import_lm_eval

        import_lm_eval()  # the missing extra is reported before any model loads
    results = {}
    for name, path, is_stage in resolve_models(recipe, section, names):
        results[name] = evaluate_model(
            recipe,
            section,
            name,
            path,
            plain_by_default=is_stage and recipe.stage_kind(name).name == "pretrain",
            post_training=is_post_training(recipe, name, path, is_stage),
        )
    write_table(recipe.stage_dir("eval"))
    return results


def is_post_training(recipe: Recipe, name: str, model_dir: Path, is_stage: bool) -> bool:
    """The model of a post-training stage (a causal-LM stage other than pretraining): named as
    that stage, or a `.../<stage>/final` directory."""
    stage = name if is_stage else (model_dir.parent.name if model_dir.name == "final" else "")
    if stage not in recipe.known_stages():
        return False
    kind = recipe.stage_kind(stage)
    return kind.produces == "causal_lm" and kind.name != "pretrain"


def evaluate_model(
    recipe: Recipe,
    section: EvalSection,
    name: str,
    model_dir: Path,
    *,
    plain_by_default: bool,
    post_training: bool,
) -> dict[str, Any]:
    seed = section.seed if section.seed is not None else recipe.seed
    out_dir = recipe.stage_dir("eval")
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(model_dir)
    result: dict[str, Any] = {"model": str(model_dir), "perplexity": {}, "tasks": {}}
    seq_len = _seq_len(recipe, section, model)
    if section.perplexity.data and getattr(recipe, "data", None) is not None:
        result["perplexity"]["data_validation"] = _data_perplexity(recipe, section, model, seq_len)
    for pattern in section.perplexity.files:
        result["perplexity"][Path(pattern).name] = _file_perplexity(
            section, model, tokenizer, pattern, seq_len
        )
    for task in section.tasks:
        seed_everything(seed)
        chat = task.format == "chat" or (task.format == "auto" and not plain_by_default)
        decoding = (
            task.decoding
            if "decoding" in task.model_fields_set or section.decoding is None
            else section.decoding
        )
        outcome = run_task(
            model, tokenizer, task, decoding, chat=chat, seed=seed, batch_size=section.batch_size
        )
        result["tasks"][task.name] = outcome.metrics
        _write_samples(out_dir / "samples" / f"{name}-{task.name}.jsonl", outcome.samples)
        log.info("eval %s %s: %s", name, task.name, outcome.metrics)
    if section.lm_eval is not None:
        result["lm_eval"] = _run_lm_eval(
            section, name, model_dir, model, tokenizer, result["tasks"], out_dir, post_training
        )
    result["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(out_dir / f"{name}.json", result)
    return result


def _run_lm_eval(
    section: EvalSection,
    name: str,
    model_dir: Path,
    model: Any,
    tokenizer: Any,
    tasks: dict[str, dict],
    out_dir: Path,
    post_training: bool,
) -> dict[str, Any]:
    """Add lm-eval's metrics to `tasks` and write its samples; return what it ran (lm-eval's
    version, settings, each task's version)."""
    from llmtrain.train.evaluate.harness import run_lm_eval

    outcome = run_lm_eval(
        section.lm_eval,
        model,
        tokenizer,
        model_dir,
        chat_model=post_training and bool(getattr(tokenizer, "chat_template", None)),
        batch_size=section.batch_size,
    )
    for task, metrics in outcome["metrics"].items():
        if task in tasks:
            raise RecipeError(
                f"eval.tasks: the task name {task!r} is also an lm-eval task in eval.lm_eval; "
                "rename the task of eval.tasks"
            )
        tasks[task] = metrics
        if task in outcome["samples"]:
            _write_samples(out_dir / "samples" / f"{name}-{task}.jsonl", outcome["samples"][task])
        log.info("eval %s %s (lm-eval): %s", name, task, metrics)
    return outcome["info"]


def run_task(
    model,
    tokenizer,
    task: TaskSection,
    decoding: DecodingSection,
    *,
    chat: bool,
    seed: int,
    batch_size: int,
):
    records = load_task_records(task.path, task.type, task.limit)
    if task.type == "preference":
        return run_preference_task(model, tokenizer, records, chat=chat, batch_size=batch_size)
    pool = load_task_records(task.fewshot_path, task.type) if task.fewshot_path else records
    rng = random.Random(seed)
    shots = [
        fewshot_examples(pool, task.num_fewshot, r, rng) if task.num_fewshot else []
        for r in records
    ]
    if task.type == "multiple_choice":
        contexts = [with_fewshot(r, s, chat=False) for r, s in zip(records, shots)]
        return run_multiple_choice_task(model, tokenizer, records, contexts, batch_size=batch_size)
    prompts = [with_fewshot(r, s, chat=chat) for r, s in zip(records, shots)]
    scorer = _scorer(decoding)
    return run_generation_task(
        model,
        tokenizer,
        records,
        prompts,
        decoding,
        chat=chat,
        scorer=scorer,
        batch_size=batch_size,
    )


def _scorer(decoding: DecodingSection):
    if decoding.strategy != "best_of_n":
        return None
    if decoding.reward_model is None:
        raise StageInputError(
            "decoding.strategy best_of_n needs decoding.reward_model (a reward model directory)"
        )
    from llmtrain.train.align.rewards import RewardModelScore

    return RewardModelScore(Path(decoding.reward_model))


def _seq_len(recipe: Recipe, section: EvalSection, model: Any) -> int:
    if section.perplexity.seq_len:
        return section.perplexity.seq_len
    if getattr(recipe, "data", None) is not None:
        return recipe.data.seq_len
    return min(getattr(model.config, "max_position_embeddings", 1024) or 1024, 1024)


def _data_perplexity(recipe: Recipe, section: EvalSection, model: Any, seq_len: int) -> dict:
    from llmtrain.data_pipeline.loader import validation_batches

    build_dir = recipe.stage_dir("data")
    batches = validation_batches(
        build_dir,
        seq_len=seq_len,
        micro_batch_size=section.batch_size,
        rank=0,
        world_size=1,
        max_batches=section.perplexity.max_batches,
    )
    nll, count = score_windows(model, batches)
    return summarize(nll, count, None)


def _file_perplexity(section: EvalSection, model, tokenizer, pattern: str, seq_len: int) -> dict:
    from llmtrain.data_pipeline.readers import expand_paths, iter_texts

    def texts():
        for path in expand_paths([pattern], key="eval.perplexity.files"):
            yield from iter_texts(path, text_field=section.perplexity.text_field)

    return perplexity_on_texts(
        model,
        tokenizer,
        texts(),
        seq_len=seq_len,
        batch_size=section.batch_size,
        max_tokens=section.perplexity.max_tokens,
    )


def _write_samples(path: Path, samples: list[dict]) -> None:
    lines = (json.dumps(s, ensure_ascii=False, default=str) + "\n" for s in samples)
    atomic_write_text(path, "".join(lines))


def write_table(out_dir: Path) -> str:
    """results.md: one row per evaluated model (pipeline stages in their order, then other
    models by name), one column per metric."""

    stages = list(registry())

    def order(path: Path) -> tuple[int, str]:
        stem = path.stem
        return (stages.index(stem) if stem in stages else len(stages), stem)

    rows = []
    for path in sorted(out_dir.glob("*.json"), key=order):
        data = json.loads(path.read_text())
        if "tasks" not in data:
            continue
        metrics = {}
        for name, values in data["perplexity"].items():
            metrics[f"ppl {name}"] = values["perplexity"]
        for task, values in data["tasks"].items():
            for key, value in values.items():
                if key != "n":
                    metrics[f"{task} {key}"] = value
        rows.append((path.stem, metrics))
    columns = sorted({key for _, metrics in rows for key in metrics})
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, metrics in rows:
        cells = [_fmt(metrics.get(c)) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(out_dir / "results.md", table)
    return table


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}" if value < 100 else f"{value:.1f}"
    return str(value)
