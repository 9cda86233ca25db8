"""ddpcheck.remote.hostfacts on this machine: psutil and the stdlib fallback agree; pure parsers."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys

import pytest

from ddpcheck.remote import hostfacts

# hostfacts.collect() in a child where psutil cannot be imported (a host with only torch).
WITHOUT_PSUTIL = """
import json, sys
sys.modules["psutil"] = None
import pytest

from ddpcheck.remote import hostfacts
print(json.dumps(hostfacts.collect("127.0.0.1", ".")))
"""


def test_parse_meminfo():
    text = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n"
    assert hostfacts.parse_meminfo(text) == {"total": 16000000 * 1024,
                                             "available": 8000000 * 1024}
    old_kernel = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 20 kB\n"
    assert hostfacts.parse_meminfo(old_kernel)["available"] == 130 * 1024


def test_selected_env_keeps_only_distributed_variables():
    env = {"NCCL_DEBUG": "INFO", "AWS_SECRET_ACCESS_KEY": "x", "HOME": "/root",
           "CUDA_VISIBLE_DEVICES": "0,1", "OMP_NUM_THREADS": "4", "GLOO_SOCKET_IFNAME": "eth0"}
    assert hostfacts.selected_env(env) == {"CUDA_VISIBLE_DEVICES": "0,1",
                                           "GLOO_SOCKET_IFNAME": "eth0", "NCCL_DEBUG": "INFO",
                                           "OMP_NUM_THREADS": "4"}


def test_stdlib_fallback_agrees_with_psutil(tmp_path):
    with_psutil = hostfacts.collect("127.0.0.1", str(tmp_path))
    done = subprocess.run([sys.executable, "-c", WITHOUT_PSUTIL], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    stdlib = json.loads(done.stdout)
    assert with_psutil["facts_source"] == "psutil" and stdlib["facts_source"] == "stdlib"
    assert "errors" not in with_psutil and "errors" not in stdlib, (with_psutil, stdlib)
    assert set(stdlib["interfaces"]) == set(with_psutil["interfaces"])
    for name, facts in stdlib["interfaces"].items():
        theirs = with_psutil["interfaces"][name]
        assert facts["up"] == theirs["up"], name
        ipv4 = [a for a in facts["addresses"] if ":" not in a]
        assert set(ipv4) <= set(theirs["addresses"]), name  # ioctl gives the primary address
        assert bool(ipv4) == any(":" not in a for a in theirs["addresses"]), name
    assert stdlib["memory"]["total"] == with_psutil["memory"]["total"]
    assert stdlib["ulimit"] == with_psutil["ulimit"]
    assert stdlib["shm"]["total"] == with_psutil["shm"]["total"]
    assert stdlib["workdir"]["path"] == str(tmp_path) and stdlib["workdir"]["writable"]
    assert stdlib["route"]["interface"] == with_psutil["route"]["interface"] == "lo"


def test_limits_match_resource():
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = [-1 if v == resource.RLIM_INFINITY else v for v in nofile]
    assert hostfacts.ulimit_facts()["nofile"] == expected


def test_route_to_unresolvable_master():
    route = hostfacts.route_to("no-such-host.invalid", {}, resolve_timeout_s=5.0)
    assert route == {"master": "no-such-host.invalid",
                     "error": "no-such-host.invalid does not resolve"}


INTERFACES = """
import json, sys
if sys.argv[1] == "stdlib":
    sys.modules["psutil"] = None
    psutil = None
else:
    import psutil
import pytest

from ddpcheck.remote import hostfacts
print(json.dumps(hostfacts.interface_facts(psutil)))
"""


@pytest.mark.cluster
def test_up_and_carrier_agree_with_ip_link_with_and_without_psutil():
    """In a namespace of its own: lo up, a veth up with its peer down (UP, NO-CARRIER), the
    peer down, and a veth pair both up. ``ip -o link`` is the oracle: UP in its flags is ``up``, LOWER_UP
    (the carrier) is ``running``, for the psutil path and the standard-library one alike."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    namespace = f"ddpchf{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        def ip(*argv: str) -> str:
            return subprocess.run(["ip", "-n", namespace, *argv], check=True,
                                  capture_output=True, text=True).stdout

        ip("link", "set", "lo", "up")
        ip("link", "add", "va", "type", "veth", "peer", "name", "vb")
        ip("link", "set", "va", "up")
        ip("link", "add", "vc", "type", "veth", "peer", "name", "vd")
        ip("link", "set", "vc", "up")
        ip("link", "set", "vd", "up")
        oracle = {}
        for line in ip("-o", "link").splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            flags = line.split("<")[1].split(">")[0].split(",")
            oracle[name] = {"up": "UP" in flags, "running": "LOWER_UP" in flags}
        assert oracle["va"] == {"up": True, "running": False}  # the fault under test
        assert oracle["vb"] == {"up": False, "running": False}
        assert oracle["vc"] == {"up": True, "running": True}
        for way in ("psutil", "stdlib"):
            done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c",
                                   INTERFACES, way], capture_output=True, text=True,
                                  check=True, env={**os.environ,
                                                   "PYTHONPATH": os.pathsep.join(sys.path)})
            seen = {name: {"up": facts["up"], "running": facts["running"]}
                    for name, facts in json.loads(done.stdout).items()}
            assert seen == oracle, way
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
