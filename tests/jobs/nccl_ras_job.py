"""A small NCCL job for the live RAS query: one all_reduce per step on this rank's GPU, then
"ready" in --ready-dir, then it keeps stepping (or waits, with --block) until killed."""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready-dir", required=True)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    tensor = torch.ones(1 << 20, device="cuda")
    for _ in range(3):
        dist.all_reduce(tensor)
    torch.cuda.synchronize()
    with open(os.path.join(args.ready_dir, f"rank{dist.get_rank()}"), "w") as handle:
        handle.write(".".join(map(str, torch.cuda.nccl.version())))
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        dist.all_reduce(tensor)
        torch.cuda.synchronize()
        time.sleep(0.05)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
