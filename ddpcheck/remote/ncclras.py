"""NCCL's RAS view of a running job: a client for its text protocol (NCCL >= 2.24).

Runs on one host of the job, started by ``ddpcheck hang`` through the same SSH session as the
stack scan (``python -m ddpcheck.remote.ncclras``); ``analyze.ras`` parses the answer. NCCL's RAS
threads listen on ``localhost:28028`` unless ``NCCL_RAS_ADDR`` (host:port) says otherwise; the
protocol (NCCL src/ras/client.cc, client_support.cc, docs/.../troubleshooting/ras.rst) is lines
of text: the client sends ``CLIENT PROTOCOL 2``, the server answers ``SERVER PROTOCOL <n>``;
``TIMEOUT <s>`` answers ``OK``; ``VERBOSE STATUS`` answers the job summary, the communicators
and the Errors / Warnings sections, and closes the connection. This is what ``ncclras -v``
prints. Imports only the standard library.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any, Mapping, Optional

from .. import wire

DEFAULT_PORT = 28028
PROTOCOL = 2
COLLECTIVE_TIMEOUT_S = 5  # RAS's own per-leg timeout (RAS_COLLECTIVE_LEG_TIMEOUT_SEC)
MAX_OUTPUT = 1 << 20


def address(environ: Mapping[str, str]) -> tuple[str, int]:
    """Where the job's RAS listens: NCCL_RAS_ADDR (host:port) or localhost:28028."""
    text = environ.get("NCCL_RAS_ADDR", "").strip()
    if not text:
        return "localhost", DEFAULT_PORT
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit():
        return host.strip("[]") or "localhost", int(port)
    return text, DEFAULT_PORT


def query(host: str = "localhost", port: int = DEFAULT_PORT, timeout_s: float = 15.0,
          verbose: bool = True) -> dict[str, Any]:
    """{"address", "server_protocol", "output", "duration_s"} or {"address", "error"}.
    Never raises; a job without RAS (NCCL < 2.24, NCCL_RAS_ENABLE=0) is "connection refused"."""
    started = time.monotonic()
    facts: dict[str, Any] = {"address": f"{host}:{port}"}
    try:
        sock = socket.create_connection((host, port), timeout=min(timeout_s, 5.0))
    except OSError as exc:
        facts["error"] = (f"cannot connect to NCCL RAS at {host}:{port}: "
                          f"{exc.strerror or exc} (NCCL < 2.24, NCCL_RAS_ENABLE=0, or no NCCL "
                          f"process of the job on this host)")
        return facts
    chunks: list[bytes] = []
    try:
        with sock:
            reader = sock.makefile("rb")
            sock.sendall(f"CLIENT PROTOCOL {PROTOCOL}\n".encode())
            hello = reader.readline(4096).decode("utf-8", "replace").strip()
            if not hello.upper().startswith("SERVER PROTOCOL "):
                facts["error"] = f"not an NCCL RAS server at {host}:{port}: {hello[:200]!r}"
                return facts
            facts["server_protocol"] = hello.split()[-1]
            leg = max(1, min(COLLECTIVE_TIMEOUT_S, int(timeout_s / 3)))
            sock.sendall(f"TIMEOUT {leg}\n".encode())
            answer = reader.readline(4096).decode("utf-8", "replace").strip()
            if answer.upper() != "OK":
                facts["error"] = f"NCCL RAS refused TIMEOUT {leg}: {answer[:200]!r}"
                return facts
            sock.settimeout(max(timeout_s - (time.monotonic() - started), 1.0))
            sock.sendall(b"VERBOSE STATUS\n" if verbose else b"STATUS\n")
            size = 0
            while size < MAX_OUTPUT:
                data = reader.read1(65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
            facts["output"] = b"".join(chunks).decode("utf-8", "replace")
    except socket.timeout:
        facts["error"] = f"NCCL RAS at {host}:{port} did not answer within {timeout_s:.0f}s"
        if chunks:
            facts["output"] = b"".join(chunks).decode("utf-8", "replace")
    except OSError as exc:
        facts["error"] = f"NCCL RAS at {host}:{port}: {exc.strerror or exc}"
    facts["duration_s"] = round(time.monotonic() - started, 3)
    return facts


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Query the NCCL RAS service of a running job.")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=15.0)
    parser.add_argument("--raw", action="store_true", help="print RAS's text, not a marked line")
    args = parser.parse_args(argv)
    host, port = address(os.environ)
    facts = query(args.host or host, args.port or port, args.timeout)
    if args.raw:
        sys.stdout.write(facts.get("output") or "")
        if facts.get("error"):
            print(facts["error"], file=sys.stderr)
        return 1 if facts.get("error") else 0
    wire.emit("ras", facts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
