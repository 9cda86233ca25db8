"""A user's training job calling ddpcheck.check_consistency, run under torchrun by the tests.

Scenarios run one after another in the same job (each a collective on every rank); every rank
writes one JSON line per scenario with what check_consistency said to OUTDIR/rank<N>.jsonl
(ranks share torchrun's stdout, where lines from different ranks can interleave).
"""

import json
import os
import sys

import torch
import torch.distributed as dist

import ddpcheck


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def outcome(name, call):
    try:
        findings = call()
        result = {"raised": False, "findings": [[f.check, f.rank, f.host, f.message]
                                                for f in findings]}
    except ddpcheck.ConsistencyError as exc:
        result = {"raised": True, "message": str(exc),
                  "findings": [[f.check, f.rank, f.host, f.message] for f in exc.findings]}
    with open(f"{sys.argv[1]}/rank{dist.get_rank()}.jsonl", "a") as out:
        out.write(json.dumps({"scenario": name, "rank": dist.get_rank(), **result}) + "\n")


def main() -> int:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    odd = int(sys.argv[2])  # the rank that does things differently

    healthy = model()
    optimizer = torch.optim.Adam(healthy.parameters())
    healthy(torch.ones(2, 8)).sum().backward()
    optimizer.step()
    torch.manual_seed(42)  # same seed on every rank: RNG states agree
    outcome("healthy", lambda: ddpcheck.check_consistency(healthy, step=1, optimizer=optimizer))

    cast = model()
    if rank == odd:
        cast = cast.half()  # one rank casts its model to another dtype
    outcome("dtype", lambda: ddpcheck.check_consistency(cast, step=1))

    outcome("step", lambda: ddpcheck.check_consistency(model(), step=10 + (rank == odd)))

    drifted = model()
    if rank == odd:
        with torch.no_grad():
            drifted[2].bias[3] += 1e-6  # one element, a tiny amount
    outcome("params", lambda: ddpcheck.check_consistency(drifted, step=3,
                                                         raise_on_error=False))
    dist.barrier()  # every rank done with the last gather before any tears gloo down
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    # Leave without the interpreter's teardown, as ddpcheck's own ranks do (remote/fastexit.py).
    # With torch 2.13's gloo, a rank that exits soon after its last collective aborts now and
    # then ("terminate called without an active exception", SIGABRT; 2 of 34 runs here under a
    # neighbour's load, and once in CI): a gloo worker thread drops a finished all_gather's
    # tensors while the interpreter is finalizing, and releasing their Python objects needs the
    # GIL, which no other thread may take by then (seen in the core: ~AsyncBarrierWork ->
    # ~AsyncAllgatherWork -> decref_pyobject -> take_gil -> pthread_exit -> terminate).
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
