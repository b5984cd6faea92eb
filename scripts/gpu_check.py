"""The Python side of scripts/gpu_check.sh: tiny inputs, one recipe per check, and the checks.

    python scripts/gpu_check.py prepare WORKDIR        # tokenizer, data build, tiny model, recipes
    python scripts/gpu_check.py run CHECK WORKDIR      # one check: exit 0 pass, 77 skipped, else fail
    python scripts/gpu_check.py list                   # the checks, in order

`prepare` needs no GPU (the CPU tests' helpers: a byte-level BPE on Python's standard library
docs, a data build of them, a 2-layer Llama, the arithmetic SFT chats and RL prompts) and
validates every recipe it writes; `prepare --dry-run` also prints each check's command, so the
script can be checked on a machine without a GPU. `run` prints `SKIP: why` before exiting with
77 when a package or the hardware a check needs is missing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SKIP = 77
CHECKS = [
    "flash_attention_document_masking",
    "compile",
    "liger",
    "float8",
    "deepspeed_zero2",
    "fsdp2",
    "fsdp2_sft",
    "qlora_sft",
    "vllm_grpo",
    "mfu",
]
PRETRAIN_CHECKS = (
    "flash_attention_document_masking", "compile", "liger", "float8", "deepspeed_zero2", "fsdp2",
)  # fmt: skip
"""The checks that pretrain (their validation loss must fall)."""
SEQ_LEN = 256

PRETRAIN = {
    "steps": 30,
    "global_batch_size": 16,
    "micro_batch_size": 8,
    "precision": "bf16",
    "lr": 3.0e-3,
    "warmup_steps": 3,
    "log_every": 5,
    "eval_every": 30,
    "eval_batches": 4,
    "save_every": 30,
}
MODEL = {"preset": "llama-tiny", "hidden_size": 128, "intermediate_size": 352, "num_layers": 4}
"""llama-tiny widened as in the demo; every Linear dimension a multiple of 16 (float8)."""


def pretrain_recipe(
    work: Path, data: Path, name: str, model: dict | None = None, **pretrain
) -> Path:
    body = {
        "name": f"gpu-check-{name}",
        "output_dir": str(work / "runs" / name),
        "seed": 7,
        "model": {**MODEL, **(model or {})},
        "pretrain": {"data": str(data), **PRETRAIN, **pretrain},
    }
    return write_recipe(work / f"{name}.yaml", body)


def write_recipe(path: Path, body: dict) -> Path:
    from llmtrain.recipe import load_recipe

    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    load_recipe(path)  # schema check: a bad key fails here, on any machine
    return path


def prepare(work: Path) -> None:
    from tests.align_support import write_sft_data
    from tests.conftest import build_tiny_causal_lm, build_tiny_tokenizer
    from tests.pretrain_support import build_data
    from tests.rl_support import rl_recipe

    work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(work / "tokenizer", vocab_size=512)
    data = build_data(work / "build", tokenizer, SEQ_LEN, max_bytes=1_500_000)
    model = build_tiny_causal_lm(tokenizer, work / "tiny-llama")
    pretrain_recipe(
        work,
        data,
        "flash_attention_document_masking",
        model={"attn_implementation": "flash_attention_2"},
        document_masking=True,
    )
    pretrain_recipe(work, data, "compile", compile=True)
    pretrain_recipe(work, data, "liger", liger=True)
    pretrain_recipe(work, data, "float8", float8=True)
    pretrain_recipe(work, data, "deepspeed_zero2", deepspeed={"zero_stage": 2})
    pretrain_recipe(work, data, "fsdp2", fsdp={"reshard_after_forward": True})
    sft = {
        "model": str(model),
        "data": [{"path": str(write_sft_data(work / "sft"))}],
        "chat_template": "chatml",
        "max_steps": 10,
        "global_batch_size": 16,
        "micro_batch_size": 16,
        "lr": 1.0e-3,
        "precision": "bf16",
        "eval_every": 0,
        "save_every": 10,
        "lora": {"r": 8, "alpha": 16, "quantization": "4bit"},
    }
    write_recipe(
        work / "qlora_sft.yaml",
        {"name": "gpu-check-qlora", "output_dir": str(work / "runs" / "qlora"), "sft": sft},
    )
    fsdp_sft = {k: v for k, v in sft.items() if k != "lora"}
    write_recipe(
        work / "fsdp2_sft.yaml",
        {
            "name": "gpu-check-fsdp2-sft",
            "output_dir": str(work / "runs" / "fsdp2_sft"),
            "sft": {**fsdp_sft, "fsdp": {"reshard_after_forward": True}},
        },
    )
    grpo = rl_recipe(
        work / "grpo",
        "grpo",
        model,
        chat_template="chatml",
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.2,
        precision="bf16",
        max_steps=4,
        save_every=4,
    )
    write_recipe(work / "vllm_grpo.yaml", yaml.safe_load(grpo.read_text(encoding="utf-8")))


def command(check: str, work: Path, gpus: int = 1) -> list[str]:
    """The command line of one check (run from the repository root)."""
    python = sys.executable
    recipe = str(work / f"{check}.yaml")
    if check in ("deepspeed_zero2", "fsdp2", "fsdp2_sft"):
        stage = ["align", "--method", "sft"] if check == "fsdp2_sft" else ["pretrain"]
        return [
            python, "-m", "torch.distributed.run", "--nproc-per-node", str(min(gpus, 2)),
            "--master-addr", "127.0.0.1", "--master-port", "29517",
            "-m", "llmtrain", *stage, recipe, "--overwrite",
        ]  # fmt: skip
    if check == "qlora_sft":
        return [python, "-m", "llmtrain", "align", "--method", "sft", recipe, "--overwrite"]
    if check == "vllm_grpo":
        return [python, "-m", "llmtrain", "align", "--method", "grpo", recipe, "--overwrite"]
    if check == "mfu":
        return [
            python, "scripts/bench/pretrain.py", "mfu", "--micro", "8", "--accum", "2",
            "--steps", "15", "--repeats", "1", "--corpus-bytes", "4000000",
            "--workdir", str(work / "mfu"),
        ]  # fmt: skip
    return [python, "-m", "llmtrain", "pretrain", recipe, "--overwrite"]


def missing(check: str) -> str | None:
    """Why `check` cannot run on this machine, or None."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    needs = {
        "flash_attention_document_masking": "flash_attn",
        "liger": "liger_kernel",
        "float8": "torchao",
        "deepspeed_zero2": "deepspeed",
        "qlora_sft": "bitsandbytes",
        "vllm_grpo": "vllm",
    }
    package = needs.get(check)
    if package and importlib.util.find_spec(package) is None:
        return f"the {package} package is not installed"
    if check == "float8" and torch.cuda.get_device_capability() < (9, 0):
        return f"compute capability {torch.cuda.get_device_capability()} is below 9.0"
    return None


def packed_logits_match() -> None:
    """flash-attention 2 on packed documents: a document's logits are its logits alone."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, use_cache=False,
        attn_implementation="flash_attention_2",
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to("cuda", torch.bfloat16)
    first, second = torch.randint(3, 512, (37,)), torch.randint(3, 512, (91,))
    ids = torch.cat([first, second]).unsqueeze(0).cuda()
    positions = torch.cat([torch.arange(37), torch.arange(91)]).unsqueeze(0).cuda()
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions).logits[0, 37:].float()
        alone = model(input_ids=second.unsqueeze(0).cuda()).logits[0].float()
    difference = (packed - alone).abs().max().item()
    print(f"flash-attention 2 packed vs alone: max logit difference {difference:.3g}")
    if difference > 5e-2:
        raise SystemExit(f"packed document logits differ from alone by {difference}")


def learned(check: str, work: Path) -> None:
    """The pretraining run's validation loss fell from step 0."""
    import json

    path = work / "runs" / check / "pretrain" / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    speed = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    print(f"{check}: validation loss {val[0]:.3f} -> {val[-1]:.3f}, {speed[-1]:,.0f} tokens/s")
    if not val[-1] < val[0] - 0.3:
        raise SystemExit(f"validation loss did not fall: {val}")


def run(check: str, work: Path) -> int:
    import torch

    reason = missing(check)
    if reason:
        print(f"SKIP: {reason}")
        return SKIP
    if check == "flash_attention_document_masking":
        packed_logits_match()
    gpus = torch.cuda.device_count()
    if check in ("deepspeed_zero2", "fsdp2", "fsdp2_sft") and gpus < 2:
        print(f"one GPU: {check} on NCCL with 1 process (NCCL refuses two ranks on one device)")
    env = {**os.environ, "OMP_NUM_THREADS": "4"}
    result = subprocess.run(command(check, work, gpus), cwd=REPO, env=env)
    if result.returncode:
        return result.returncode
    if check in PRETRAIN_CHECKS:
        learned(check, work)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)
    prep = sub.add_parser("prepare")
    prep.add_argument("workdir", type=Path)
    prep.add_argument("--dry-run", action="store_true", help="also print each check's command")
    one = sub.add_parser("run")
    one.add_argument("check", choices=CHECKS)
    one.add_argument("workdir", type=Path)
    sub.add_parser("list")
    args = parser.parse_args()
    if args.action == "list":
        print("\n".join(CHECKS))
    elif args.action == "prepare":
        prepare(args.workdir.resolve())
        if args.dry_run:
            for check in CHECKS:
                print(f"{check}: {' '.join(command(check, args.workdir.resolve()))}")
    else:
        sys.exit(run(args.check, args.workdir.resolve()))


if __name__ == "__main__":
    main()
