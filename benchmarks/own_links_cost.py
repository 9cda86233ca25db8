"""What the Monitor's once-a-second read of its own TCP connections costs (``own_links``: a
``getsockopt(TCP_INFO)`` on a duplicate of each socket descriptor), with 128 and 8 sockets open
in one process (NCCL over sockets opens many; gloo a few per peer), measured side by side in
one run: CPU per call, and that as a share of one core at one call a second.

    .venv/bin/python benchmarks/own_links_cost.py
"""

from __future__ import annotations

import socket
import statistics
import time

from ddpcheck.remote.tcpinfo import own_links

CALLS = 200
REPEATS = 5


def cpu_per_call() -> float:
    runs = []
    for _ in range(REPEATS):
        began = time.process_time()
        for _ in range(CALLS):
            own_links()
        runs.append((time.process_time() - began) / CALLS)
    return statistics.median(runs)


def main() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    pairs = []
    for _ in range(64):
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        pairs.append((client, accepted))
    print("| sockets in the process | own_links() CPU per call | share of a core at 1 call/s |")
    print("|---|---|---|")
    for count in (128, 8):
        for client, accepted in pairs[count // 2:]:
            client.close()
            accepted.close()
        pairs = pairs[:count // 2]
        assert len(own_links()) == count
        cost = cpu_per_call()
        print(f"| {count} | {cost * 1e6:.0f} us | {cost:.5f} |")
    server.close()


if __name__ == "__main__":
    main()
