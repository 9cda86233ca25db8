#!/usr/bin/env bash
# Run the ddpcheck probe with torchrun by hand, once on every node (no SSH launcher needed).
#
#   launch/torchrun-probe.sh NNODES NODE_RANK MASTER_ADDR [NPROC_PER_NODE] [MASTER_PORT]
#
# NPROC_PER_NODE defaults to the GPU count (1 without GPUs); PYTHON picks the interpreter
# (default python3; it needs torch and ddpcheck). Each rank prints one line
# "@@DDPCHECK rank {json}" with its identity, status and timings; every rank must say
# "status": "ok". Short timeouts: a missing node fails in 30 s, not torch's 10 minutes.
# Extra environment (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME, ...) is passed through.
set -euo pipefail
if [ $# -lt 3 ] || [ $# -gt 5 ]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
nnodes=$1 node_rank=$2 master_addr=$3
python=${PYTHON:-python3}
gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
[ "$gpus" -gt 0 ] 2>/dev/null || gpus=1
nproc=${4:-$gpus}
port=${5:-29500}
exec "$python" -m torch.distributed.run --nnodes "$nnodes" --node-rank "$node_rank" \
  --nproc-per-node "$nproc" --master-addr "$master_addr" --master-port "$port" \
  --max-restarts 0 --rdzv-conf timeout=30 \
  -m ddpcheck.probe --expected-world-size "$((nnodes * nproc))" --collective-timeout 30 \
  --deadline 120
