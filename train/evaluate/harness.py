"""`eval.lm_eval`: standard benchmarks through lm-evaluation-harness' Python API.

lm-eval is the optional extra `eval` (pip install 'llmtrain[eval]'). Its Hugging Face backend
(`HFLM`) wraps the model and tokenizer `llmtrain eval` has already loaded; its vLLM backend
loads the model directory itself. Tasks come from lm-eval's own YAMLs and the recipe's
`include_path`; datasets from the user's Hugging Face cache or local files. Seeds are
lm-eval's defaults, so the numbers equal those of the `lm-eval run` command.
"""

from __future__ import annotations

import functools
import logging
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from llmtrain.errors import InputDataError, RecipeError, StageInputError
from llmtrain.train.evaluate.config import LmEvalSection

log = logging.getLogger(__name__)

MISSING = (
    "eval.lm_eval: lm-evaluation-harness is not installed; install the extra "
    "(pip install 'llmtrain[eval]') or remove eval.lm_eval from the recipe"
)


def import_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as exc:
        raise StageInputError(MISSING) from exc
    return lm_eval


def run_lm_eval(
    section: LmEvalSection,
    model: Any,
    tokenizer: Any,
    model_dir: Path,
    *,
    chat_model: bool,
    batch_size: int,
) -> dict[str, Any]:
    """lm-eval's results for one model: metrics per task and group, task versions, samples.

    Returns {"metrics": {task: {metric: value, "n": questions}}, "info": what was run (lm-eval
    version, backend, settings, per-task version, few-shot count and standard errors),
    "samples": {task: [lm-eval's per-question records]}}.
    """
    lm_eval = import_lm_eval()
    chat = chat_model if section.apply_chat_template is None else section.apply_chat_template
    manager = task_manager(tuple(str(p) for p in section.include_path), tuple(section.tasks))
    tasks = [
        item
        for name in section.tasks
        for item in _load_task(manager, name, section.confirm_run_unsafe_code)
    ]
    size = section.batch_size or batch_size
    backend = _backend(section.backend)
    length = section.max_length
    if backend == "vllm":
        lm = _vllm(model, model_dir, size, length)
    else:
        lm = _hf(model, tokenizer, size, length)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=section.num_fewshot,
        limit=section.limit,
        apply_chat_template=chat,
        fewshot_as_multiturn=chat,
        task_manager=manager,
        confirm_run_unsafe_code=section.confirm_run_unsafe_code,
    )
    return {
        "metrics": _metrics(out),
        "info": {
            "version": lm_eval.__version__,
            "backend": backend,
            "apply_chat_template": chat,
            "num_fewshot": section.num_fewshot,
            "limit": section.limit,
            "batch_size": size,
            "max_length": lm.max_length,
            "tasks": _task_info(out),
        },
        "samples": out.get("samples", {}),
    }


def _backend(wanted: str) -> str:
    if wanted == "hf":
        return "hf"
    import torch

    usable = find_spec("vllm") is not None and torch.cuda.is_available()
    if wanted == "vllm" and not usable:
        raise StageInputError(
            "eval.lm_eval.backend: vllm needs the vllm package (pip install vllm) and a CUDA "
            "GPU; set backend: hf"
        )
    return "vllm" if usable else "hf"


def _hf(model: Any, tokenizer: Any, batch_size: int, max_length: int | None) -> Any:
    import torch
    from lm_eval.models.huggingface import HFLM

    if torch.cuda.is_available() and model.device.type == "cpu":
        model.to("cuda")
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def _vllm(model: Any, model_dir: Path, batch_size: int, max_length: int | None) -> Any:
    """lm-eval's vLLM backend on the model directory (not tested here: no GPU in CI)."""
    import torch
    from lm_eval.models.vllm_causallms import VLLM

    # vLLM loads its own copy; the transformers one leaves the GPU to it.
    model.to("cpu")
    torch.cuda.empty_cache()
    return VLLM(pretrained=str(model_dir), batch_size=batch_size, max_length=max_length)


@functools.lru_cache(maxsize=4)
def task_manager(include_path: tuple[str, ...], names: tuple[str, ...]) -> Any:
    """lm-eval's TaskManager; only the include_path folders when they define every name
    (indexing lm-eval's own 200+ task folders takes 5-15 s)."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=list(include_path), include_defaults=False)
        if all(name in local.all_tasks for name in names):
            return local
    return TaskManager(include_path=list(include_path) or None)


def _load_task(manager: Any, name: str, unsafe_allowed: bool) -> list[Any]:
    """The task or group `name` (a tag: its tasks), its dataset loaded."""
    try:
        loaded = manager.load([name])
    except KeyError as exc:
        raise RecipeError(
            f"eval.lm_eval.tasks: {name!r} is not an lm-eval task, group or tag; list them with "
            "`lm-eval ls tasks`, or add the folder of its YAML to eval.lm_eval.include_path"
        ) from exc
    except (ConnectionError, FileNotFoundError) as exc:
        raise InputDataError(
            f"eval.lm_eval.tasks: the task {name!r} needs a dataset that is neither in the "
            f"Hugging Face cache nor reachable ({exc}); load it once where the Hub is reachable "
            "(it stays in HF_HOME's datasets cache), or give the task local files "
            "(dataset_path: json, dataset_kwargs: {data_files: ...})"
        ) from exc
    unsafe = [task for task, obj in loaded["tasks"].items() if getattr(obj, "UNSAFE_CODE", False)]
    if unsafe and not unsafe_allowed:
        raise RecipeError(
            f"eval.lm_eval.tasks: {name!r} runs the code the model writes ({', '.join(unsafe)}); "
            "set eval.lm_eval.confirm_run_unsafe_code: true (and HF_ALLOW_CODE_EVAL=1) to run it"
        )
    if name in loaded["groups"]:
        return [loaded["groups"][name]]
    return list(loaded["tasks"].values())


def _metrics(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{task: {metric: value}} from lm-eval's "metric,filter" keys ("acc,none" -> "acc");
    standard errors are left to _task_info."""
    metrics = {}
    for task, values in out["results"].items():
        row = {
            _metric_name(key): value
            for key, value in values.items()
            if "," in key and "_stderr," not in key
        }
        samples = out.get("n-samples", {}).get(task)
        if samples:
            row["n"] = samples["effective"]
        metrics[task] = row
    return metrics


def _task_info(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    info = {}
    for task, values in out["results"].items():
        info[task] = {
            "version": out.get("versions", {}).get(task),
            "num_fewshot": out.get("n-shot", {}).get(task),
            "stderr": {
                _metric_name(key.replace("_stderr,", ",")): value
                for key, value in values.items()
                if "_stderr," in key
            },
        }
    return info


def _metric_name(key: str) -> str:
    metric, _, filter_name = key.partition(",")
    return metric if filter_name == "none" else key
