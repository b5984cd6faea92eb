#!/usr/bin/env bash
# What the CPU tests cannot check, on one CUDA GPU (H100/H200; about 10 minutes):
#
#     scripts/gpu_check.sh [WORKDIR]          # default: a new temporary directory
#
# Each check prints one line, `CHECK: pass`, `CHECK: fail (log: FILE)` or
# `CHECK: skipped (why)`: bf16 + flash-attention 2 + document masking (packed logits equal
# the document alone, and a run learns), torch.compile, Liger, float8 (torchao), DeepSpeed
# ZeRO-2, FSDP2 pretraining and FSDP2 SFT (accelerate) on NCCL (2 processes when 2 GPUs are
# visible; NCCL refuses two ranks on one GPU),
# QLoRA SFT (bitsandbytes 4-bit), GRPO with vLLM generation (colocated), and
# `scripts/bench/pretrain.py mfu` on llama-1b (micro-batch 8 x 2048 tokens, 2 accumulation
# steps), whose MFU and tokens/s lines are printed too. The tiny inputs are built first
# (scripts/gpu_check.py prepare: no download). Exit status: the number of failed checks.
set -u -o pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
WORK="${1:-$(mktemp -d -t llmtrain-gpu-check-XXXXXX)}"
mkdir -p "$WORK/logs"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA GPU visible to torch ($PYTHON); run this on a machine with one" >&2
    exit 2
fi
"$PYTHON" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(), "x", torch.cuda.device_count(), "| torch", torch.__version__)'

echo "gpu_check: preparing tiny inputs in $WORK"
if ! "$PYTHON" scripts/gpu_check.py prepare "$WORK" > "$WORK/logs/prepare.log" 2>&1; then
    echo "prepare: fail (log: $WORK/logs/prepare.log)"
    exit 1
fi

# seconds each check may take (all together stay under 10 minutes)
declare -A LIMIT=(
    [flash_attention_document_masking]=50 [compile]=50 [liger]=45 [float8]=45
    [deepspeed_zero2]=50 [fsdp2]=30 [fsdp2_sft]=30 [qlora_sft]=50 [vllm_grpo]=100 [mfu]=120
)
failed=0
for check in $("$PYTHON" scripts/gpu_check.py list); do
    log="$WORK/logs/$check.log"
    timeout "${LIMIT[$check]}" "$PYTHON" scripts/gpu_check.py run "$check" "$WORK" > "$log" 2>&1
    status=$?
    if [ "$status" -eq 0 ]; then
        echo "$check: pass"
    elif [ "$status" -eq 77 ]; then
        echo "$check: skipped ($(grep -m1 '^SKIP: ' "$log" | cut -c7-))"
    elif [ "$status" -eq 124 ]; then
        echo "$check: fail (over ${LIMIT[$check]} s; log: $log)"
        failed=$((failed + 1))
    else
        echo "$check: fail (exit $status; log: $log)"
        failed=$((failed + 1))
    fi
    if [ "$check" = mfu ] && [ "$status" -eq 0 ]; then
        grep -A1 '^tokens/s:' "$log" | tail -1 | sed 's/^ *ours: */    tokens\/s (best, median): /'
        grep '^MFU' "$log" | sed 's/^/    /'
    fi
done
echo "gpu_check: $failed failed; logs in $WORK/logs"
exit "$failed"
