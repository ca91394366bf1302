#!/usr/bin/env bash
# Multi-process training with torchrun: tools/dist_train.sh CONFIG NPROC [train.py flags]
#   NNODES, NODE_RANK, MASTER_ADDR, PORT: multi-node settings (defaults: one node).
#   PYTHON: the interpreter (default: python3 on PATH; torchrun is run as
#   `$PYTHON -m torch.distributed.run`, so the same environment serves both).
# Without CUDA the processes use gloo on the CPU (tools/_common.py: setup_distributed).
# Before starting them it checks (config + info pickle, about a second) that there are
# at least NNODES x NPROC training cases.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG NPROC [tools/train.py flags...]" >&2
    exit 2
fi
CONFIG=$1
NPROC=$2
shift 2
if ! [[ "$NPROC" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: NPROC must be a positive integer, got '$NPROC'" >&2
    exit 2
fi
PYTHON=${PYTHON:-python3}
NNODES=${NNODES:-1}
TOOLS="$(dirname "$0")"
"$PYTHON" "$TOOLS/train.py" "$CONFIG" --check-world-size "$((NNODES * NPROC))" "$@"
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" \
    --nproc_per_node="$NPROC" \
    "$TOOLS/train.py" "$CONFIG" --launcher pytorch "$@"
