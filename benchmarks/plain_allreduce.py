"""The reference for ddpcheck's busbw: a plain torch loop timing all_reduce, as one writes by hand.

    torchrun ... plain_allreduce.py SIZE_BYTES ITERS WARMUP

Warm-up, a barrier, ITERS back-to-back all_reduces of a float32 tensor of SIZE_BYTES timed with
the monotonic clock, the slowest rank's time; rank 0 prints ``RESULT <busbw GB/s>``.
"""

import sys
import time

import torch
import torch.distributed as dist

size, iters, warmup = (int(arg) for arg in sys.argv[1:4])
dist.init_process_group("gloo")
world = dist.get_world_size()
tensor = torch.zeros(size // 4)
for _ in range(warmup):
    dist.all_reduce(tensor)
dist.barrier()
began = time.perf_counter()
for _ in range(iters):
    dist.all_reduce(tensor)
elapsed = torch.tensor([(time.perf_counter() - began) / iters], dtype=torch.float64)
dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
if dist.get_rank() == 0:
    busbw = size / elapsed.item() / 1e9 * 2 * (world - 1) / world
    print(f"RESULT {busbw:.6g}", flush=True)
dist.destroy_process_group()
