"""``ddpcheck.remote.torchrun``'s wait for the master: which master it waits for, read against
torchrun's own static rendezvous handler, and that it stops waiting once the port accepts."""

import itertools
import socket
import subprocess
import sys
import threading
import time

from ddpcheck.remote.torchrun import static_master, wait_for_master

from sshserver import free_port


def torchrun_static_master(args: list[str]):
    """What torchrun itself would connect to: its parser, its config, its rendezvous handler
    (as ``launch_agent`` builds it), or None when this node hosts the store or the rendezvous
    is not the static one."""
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler
    from torch.distributed.run import config_from_args, get_args_parser

    parsed = get_args_parser().parse_args(args)
    if parsed.standalone:  # torchrun's run() turns it into a local c10d rendezvous
        return None
    config, _, _ = config_from_args(parsed)
    if config.rdzv_backend != "static" or config.rdzv_configs["rank"] == 0:
        return None
    try:
        handler = get_rendezvous_handler(RendezvousParameters(
            backend=config.rdzv_backend, endpoint=config.rdzv_endpoint, run_id=config.run_id,
            min_nodes=config.min_nodes, max_nodes=config.max_nodes,
            local_addr=config.local_addr, **config.rdzv_configs))
    except ValueError:  # torchrun stops with this error before connecting anywhere
        return None
    return handler.master_addr, handler.master_port, handler.timeout.total_seconds()


def generated_torchrun_args():
    for node_rank, backend, standalone, endpoint, conf, port in itertools.product(
            ["0", "1", "3"], [None, "static", "c10d"], [False, True],
            [None, "10.0.0.5:1234", "[fd00::7]:29611"], [None, "timeout=7",
                                                          "join_timeout=5,timeout=12"],
            [None, "29611"]):
        args = ["--nnodes", "4", "--node-rank", node_rank, "--nproc-per-node", "2",
                "--master-addr", "h0.example"]
        args += ["--master-port", port] if port else []
        args += ["--rdzv-backend", backend] if backend else []
        args += ["--standalone"] if standalone else []
        args += ["--rdzv-endpoint", endpoint] if endpoint else []
        args += ["--rdzv-conf", conf] if conf else []
        yield args + ["-m", "ddpcheck.remote.probe", "--node-rank", "9", "--timeout", "1"]


def test_static_master_is_the_master_torchrun_connects_to(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # config_from_args would set it
    cases = list(generated_torchrun_args())
    waited = 0
    for args in cases:
        expected = torchrun_static_master(args)
        assert static_master(args) == expected, args
        waited += expected is not None
    assert 0 < waited < len(cases)  # both kinds were generated


def test_wait_for_master_returns_once_the_port_accepts():
    port = free_port()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def listen_later():
        time.sleep(0.5)
        listener.bind(("127.0.0.1", port))
        listener.listen()

    opener = threading.Thread(target=listen_later)
    began = time.monotonic()
    opener.start()
    try:
        assert wait_for_master("127.0.0.1", port, 30)
        took = time.monotonic() - began
    finally:
        opener.join()
        listener.close()
    assert 0.5 <= took < 10, took


def test_wait_for_master_gives_up_at_the_rendezvous_timeout():
    began = time.monotonic()
    assert not wait_for_master("127.0.0.1", free_port(), 0.5)
    assert 0.5 <= time.monotonic() - began < 10


def test_a_master_that_never_accepts_ends_the_node_at_the_rendezvous_timeout():
    """The wrapper as the agent runs it: node 1 of 2 whose master never listens exits 1 after
    the rendezvous timeout, saying so, instead of letting torchrun wait as long again."""
    port = free_port()
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ddpcheck.remote.torchrun", "--nnodes", "2", "--node-rank", "1",
         "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
         "--rdzv-conf", "timeout=1", "-m", "ddpcheck.remote.probe"],
        capture_output=True, text=True, timeout=120)
    took = time.monotonic() - began
    assert done.returncode == 1
    assert f"the master 127.0.0.1:{port} accepted no connection" in done.stderr
    assert "rendezvous timeout (1s)" in done.stderr
    assert took < 60, took  # torch's import, then 1 s
