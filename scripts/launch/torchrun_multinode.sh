#!/usr/bin/env bash
# Pretrain on several machines with torchrun: run this script once on EVERY node.
#
#   NNODES=2 NPROC_PER_NODE=8 MASTER_ADDR=node0.cluster MASTER_PORT=29500 \
#       scripts/launch/torchrun_multinode.sh recipes/llama-1b.yaml [llmtrain pretrain options]
#
# All nodes meet at one c10d rendezvous on MASTER_ADDR:MASTER_PORT (any node that can be
# reached from the others; the first to arrive hosts it), so the script is the same on every
# node and node ranks are assigned by the rendezvous. Checkpoints are written by every rank
# into the run directory: it must be on a filesystem all nodes share.
#
# Environment (defaults in brackets):
#   NNODES           number of machines [1]
#   NPROC_PER_NODE   processes (GPUs) per machine [all visible GPUs, else 1]
#   MASTER_ADDR      host of the rendezvous [127.0.0.1]
#   MASTER_PORT      its port [29500]
#   RDZV_ID          job id shared by all nodes of one run [llmtrain]
#   PYTHON           the Python with llmtrain installed [python]
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 RECIPE [llmtrain pretrain options, e.g. --resume]" >&2
    exit 2
fi

PYTHON=${PYTHON:-python}
NNODES=${NNODES:-1}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-llmtrain}
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
    NPROC_PER_NODE=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi

exec "$PYTHON" -m torch.distributed.run \
    --nnodes "$NNODES" \
    --nproc-per-node "$NPROC_PER_NODE" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" \
    --rdzv-id "$RDZV_ID" \
    --max-restarts 0 \
    -m llmtrain pretrain "$@"
