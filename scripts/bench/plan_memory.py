"""`llmtrain plan` against the built model and against measured peak memory, ZeRO 0-3.

    python scripts/bench/plan_memory.py [--nproc 2] [--preset llama-125m] [--steps 4]

1. Parameter counts: for a preset of each family, `llmtrain plan`'s total against the number
   of parameters of the model `llmtrain pretrain` builds (`create_model`, real weights).
2. Memory: `llmtrain pretrain` under torchrun on --nproc processes (gloo, CPU, fp32) with
   ZeRO 0 (accelerate DDP), 1, 2, 3 and with CPU offload, a few steps each; each process's
   peak RSS over the training steps (see measured_peak_gib) less the same for a one-layer,
   hidden-64 model (imports, process group, data: everything that does not grow with the
   model), against the plan's estimate for the model less its estimate for the small one. On
   the CPU, offloaded memory is host memory as well, so the plan's figure compared is GPU +
   CPU per process. DeepSpeed's reduce and prefetch buckets count as far as they are
   written (see planned_gib). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

CONFIGS = [
    ("ddp (ZeRO 0)", None),
    ("ZeRO 1", {"zero_stage": 1}),
    ("ZeRO 2", {"zero_stage": 2}),
    ("ZeRO 2, optimizer offload", {"zero_stage": 2, "offload_optimizer": True}),
    ("ZeRO 3", {"zero_stage": 3}),
    ("ZeRO 3, optimizer + params offload", {"zero_stage": 3, "offload_optimizer": True,
                                            "offload_params": True}),
]  # fmt: skip

COUNT_PRESETS = [
    "llama-125m",
    "gpt2-124m",
    "moe-tiny",
    "qwen2-moe-tiny",
    "mixtral-tiny",
    "bert-base",
    "modernbert-tiny",
    "t5-small",
]


def parameter_counts(vocab: int) -> list[tuple[str, int, int]]:
    """(preset, plan's total, parameters of the built model) for each preset."""
    from transformers import PreTrainedTokenizerFast

    from llmtrain.recipe import validate_recipe
    from llmtrain.train.models import create_model, objective_of_family
    from llmtrain.train.plan import make_plan
    from llmtrain.train.presets import preset_family

    rows = []
    for preset in COUNT_PRESETS:
        recipe = validate_recipe(
            {"name": "count", "output_dir": "unused", "model": {"preset": preset,
             "vocab_size": vocab}}
        )  # fmt: skip
        plan = make_plan(recipe, gpus=1)
        tokenizer = _stub_tokenizer(PreTrainedTokenizerFast, vocab)
        objective = objective_of_family(preset_family(preset))
        model = create_model(recipe.model, tokenizer, objective=objective, seed=0)
        built = sum(p.numel() for p in model.parameters())
        rows.append((preset, plan.params_total, built))
        del model
    return rows


def _stub_tokenizer(cls, vocab: int):
    """A word-level tokenizer with `vocab` ids (models only need its size and special ids)."""
    from tokenizers import Tokenizer, models

    words = {"<pad>": 0, "</s>": 1, **{f"w{i}": i for i in range(2, vocab)}}
    backend = Tokenizer(models.WordLevel(words, unk_token="</s>"))
    return cls(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>")


def write_recipe(path: Path, out: Path, data: Path, model: dict, deepspeed, args) -> Path:
    import yaml

    pretrain = {
        "data": str(data),
        "steps": args.steps,
        "global_batch_size": args.micro * args.nproc,
        "micro_batch_size": args.micro,
        "seq_len": args.seq_len,
        "precision": "fp32",
        "warmup_steps": 0,
        "log_every": 1,
        "eval_every": 0,
        "save_every": 0,
    }
    if deepspeed:
        pretrain["deepspeed"] = deepspeed
    recipe = {"name": "mem", "output_dir": str(out), "seed": 0, "model": model,
              "pretrain": pretrain}  # fmt: skip
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _high_water_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def measured_peak_gib(recipe: Path, out: Path, nproc: int) -> float:
    """The largest peak RSS of the training processes over the steps after the first.

    The peak of the whole process would include start-up: the model is built in full on the
    CPU and DeepSpeed then copies it into its flat (partitioned) buffers before freeing it,
    which a GPU run never holds on the device. So once step 1 is logged the kernel's high-water
    mark of every rank is reset (`/proc/PID/clear_refs`, 5) and read until the run ends.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", "29613", "-m", "llmtrain", "pretrain", str(recipe),
               "--overwrite"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    metrics = out / "pretrain" / "metrics.jsonl"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    workers: list[int] = []
    peaks: dict[int, int] = {}
    while process.poll() is None:
        if not workers and metrics.is_file() and metrics.read_text().strip():
            workers = _children(process.pid)
            for pid in workers:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        for pid in workers:
            value = _high_water_kib(pid)
            if value is not None:
                peaks[pid] = max(peaks.get(pid, 0), value)
        time.sleep(0.02)
    stderr = process.stderr.read()
    if process.returncode != 0 or not peaks:
        sys.exit(f"{' '.join(command)} failed or logged no step:\n{stderr[-3000:]}")
    return max(peaks.values()) / 2**20


def planned_gib(recipe_path: Path, nproc: int, offloaded: bool) -> float:
    """The plan's figure for the recipe's configuration, with DeepSpeed's buckets counted as
    far as gradients and parameters fill them: the pages of a CPU tensor count in RSS only once
    written, while a GPU holds the whole bucket from its allocation."""
    from llmtrain.recipe import load_recipe
    from llmtrain.train.plan import (
        GIB,
        PREFETCH_BUCKET_ELEMENTS,
        REDUCE_BUCKET_ELEMENTS,
        deepspeed_buffer_bytes,
        make_plan,
    )

    recipe = load_recipe(recipe_path)
    plan = make_plan(recipe, gpus=nproc)
    ds = recipe.pretrain.deepspeed
    stage = ds.zero_stage if ds else 0
    offload = "none"
    if ds and ds.offload_optimizer:
        offload = "optimizer+params" if ds.offload_params else "optimizer"
    row = next(r for r in plan.memory if r.zero_stage == stage and r.offload == offload)
    written = deepspeed_buffer_bytes(
        stage,
        "fp32",
        reduce_bucket=min(plan.params_total, REDUCE_BUCKET_ELEMENTS),
        prefetch_bucket=min(plan.params_total, PREFETCH_BUCKET_ELEMENTS),
    )
    planned = row.total_gib - row.buffers_gib + written / GIB
    return planned + (row.cpu_gib if offloaded else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--preset", default="llama-125m")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-counts", action="store_true")
    args = parser.parse_args()

    from tests.conftest import build_tiny_tokenizer
    from tests.pretrain_support import build_data

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    if not args.skip_counts:
        print("\nparameters: plan vs the built model")
        print("| preset | plan | built | equal |\n|---|---:|---:|---|")
        for preset, planned, built in parameter_counts(args.vocab):
            print(f"| {preset} | {planned:,} | {built:,} | {planned == built} |")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="plan-memory-"))
    tokenizer = build_tiny_tokenizer(workdir / "tokenizer", vocab_size=args.vocab)
    data = build_data(workdir / "data-build", tokenizer, args.seq_len, max_bytes=1_000_000)
    model = {"preset": args.preset, "vocab_size": args.vocab}
    small = {"preset": "llama-tiny", "vocab_size": args.vocab, "num_layers": 1}
    print(f"\nmemory per process: {args.preset} (vocab {args.vocab}), {args.nproc} processes, "
          f"micro-batch {args.micro} x {args.seq_len}, fp32; peak RSS less that of a 1-layer "
          "hidden-64 model in the same configuration")  # fmt: skip
    print("| configuration | plan GiB | measured GiB | measured / plan |\n|---|---:|---:|---:|")
    for name, deepspeed in CONFIGS:
        results = {}
        for label, body in (("model", model), ("small", small)):
            out = workdir / f"run-{label}"
            recipe = write_recipe(workdir / f"{label}.yaml", out, data, body, deepspeed, args)
            offloaded = bool(deepspeed and deepspeed.get("offload_optimizer"))
            results[label] = (
                measured_peak_gib(recipe, out, args.nproc),
                planned_gib(recipe, args.nproc, offloaded),
            )
        measured = results["model"][0] - results["small"][0]
        planned = results["model"][1] - results["small"][1]
        print(f"| {name} | {planned:.2f} | {measured:.2f} | {measured / planned:.2f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
