"""known_hosts at 1,024 and 4,096 lines: what N connections pay for host keys.

paramiko's way (``SSHClient.load_system_host_keys`` per connection: ``HostKeys.load`` of the
whole file each time) against ddpcheck's (``transport.knownhosts``: the file parsed once, each
connection given only its host's keys), for N = lines connections. paramiko's cost is measured
for one load and multiplied by N (running all N would take minutes); ddpcheck's is measured
whole: one parse plus N lookups and fills. CPU time, side by side in one run, as ratios. Plain
and hashed (``ssh-keygen -H``) files. No root, no cluster:

    .venv/bin/python benchmarks/known_hosts_parse.py [--lines 1024,4096]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import paramiko  # noqa: E402

from ddpcheck.transport import knownhosts  # noqa: E402


def write_file(path: pathlib.Path, lines: int, key: paramiko.PKey) -> list[str]:
    names = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(lines)]
    path.write_text("".join(f"{n} {key.get_name()} {key.get_base64()}\n" for n in names))
    return names


def paramiko_cost(path: pathlib.Path) -> float:
    start = time.process_time()
    paramiko.SSHClient().load_system_host_keys(str(path))
    return time.process_time() - start


def ddpcheck_cost(path: pathlib.Path, names: list[str]) -> float:
    knownhosts._cache.clear()
    start = time.process_time()
    table = knownhosts.load(str(path))
    for name in names:
        knownhosts.fill(paramiko.HostKeys(), [table], name)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", default="1024,4096")
    args = parser.parse_args()
    key = paramiko.ECDSAKey.generate()
    print("| file | lines = connections | paramiko (N loads) / ddpcheck (1 parse + N lookups) |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for lines in (int(n) for n in args.lines.split(",")):
            for hashed in (False, True):
                path = pathlib.Path(tmp) / f"kh{lines}{hashed}"
                names = write_file(path, lines, key)
                if hashed:
                    subprocess.run(["ssh-keygen", "-H", "-f", str(path)], check=True,
                                   capture_output=True)
                    os.unlink(str(path) + ".old")
                theirs = paramiko_cost(path) * lines
                ours = ddpcheck_cost(path, names)
                print(f"| {'hashed' if hashed else 'plain'} | {lines} | {theirs / ours:.0f} |")


if __name__ == "__main__":
    main()
