"""The rendezvous check made by stage 0 itself (``agent facts --port``), with real agents on
this machine: the master's listener and every host's connection beside the facts, the stop line
that ends the master's wait when a host never comes, and the one that ends a host's reach when
the master is gone. The plan gives the master ``--listen`` and every host ``--reach``."""

from __future__ import annotations

import socket
import subprocess
import sys

from ddpcheck.collect.hostoutput import parse_output
from ddpcheck.engine.launchers import ListenerStops
from ddpcheck.model.spec import ClusterSpec, HostSpec
from ddpcheck.plan.cmdlines import rendezvous_beside_stage0, stage0_argv

from sshserver import free_port


def facts(port: int, *role: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ddpcheck.remote.agent", "facts",
                             "--deadline", "30", "--torch", "inspect", "--port", str(port),
                             *role],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def outputs(*agents: subprocess.Popen[str], stop: bool = False) -> list:
    if stop:
        for agent in agents:
            assert agent.stdin is not None
            agent.stdin.write("stop\n")
            agent.stdin.flush()
    results = []
    for agent in agents:
        out, _ = agent.communicate(timeout=60)
        assert agent.returncode == 0, out
        results.append(parse_output(out))
    return results


def test_the_master_listens_while_every_host_reaches_it_and_the_facts_still_come():
    port = free_port()
    master = facts(port, "--listen", "3", "--reach", "127.0.0.1", "--name", "n1")
    others = [facts(port, "--reach", "127.0.0.1", "--name", name) for name in ("n2", "n3")]
    got = outputs(master, *others)
    assert all(parsed.facts and parsed.facts.get("hostname") for parsed in got)
    assert all(parsed.reach["ok"] for parsed in got), [p.reach for p in got]
    assert sorted(peer["name"] for peer in got[0].listen["peers"]) == ["n1", "n2", "n3"]
    assert got[1].listen is None and got[2].listen is None


def test_the_stop_line_ends_the_masters_wait_for_a_host_that_never_comes():
    port = free_port()
    master = facts(port, "--listen", "2", "--reach", "127.0.0.1", "--name", "n1")
    # n2 never runs; once the launcher knows, it sends the stop line
    (parsed,) = outputs(master, stop=True)
    assert parsed.listen["ok"] and [p["name"] for p in parsed.listen["peers"]] == ["n1"]
    assert parsed.reach["ok"]


def test_the_stop_line_ends_a_reach_when_the_master_is_gone():
    port = free_port()  # nothing will listen: the master's stage 0 ended without listening
    agent = facts(port, "--reach", "127.0.0.1", "--name", "n2", "--reach-timeout", "25")
    (parsed,) = outputs(agent, stop=True)
    assert parsed.facts
    assert not parsed.reach["ok"]
    assert parsed.reach["error"].startswith("stopped by the launcher")
    assert parsed.reach["elapsed_s"] < 25


def test_a_master_that_cannot_listen_says_so_and_the_facts_still_come():
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("", port))
        taken.listen(1)
        (parsed,) = outputs(facts(port, "--listen", "1"))
    assert parsed.facts
    assert not parsed.listen["ok"]
    assert parsed.listen["error"].startswith(f"cannot listen on port {port}")


def test_the_plan_gives_the_master_listen_and_every_host_reach():
    hosts = tuple(HostSpec(name=f"n{i}", address=f"10.0.0.{i}") for i in (1, 2, 3))
    spec = ClusterSpec(hosts=hosts, rendezvous_port=29555, source="test")
    check = rendezvous_beside_stage0(spec, 5.0)
    argvs = {host.name: stage0_argv(host, 58.0, rendezvous=check) for host in hosts}
    for name, argv in argvs.items():
        tail = argv[argv.index("--port"):]
        role = ["--listen", "3"] if name == "n1" else []
        assert tail == ["--port", "29555", *role, "--reach", "10.0.0.1", "--name", name,
                        "--reach-timeout", "5"]
    assert "--port" not in stage0_argv(hosts[0], 58.0)


def test_the_listeners_stop_comes_when_every_other_step_ended_and_theirs_when_it_did():
    stops = ListenerStops(3, "n1")
    listener, others = stops.stop_for("n1"), stops.stop_for("n2")
    assert listener is not None and others is not None and others is stops.stop_for("n3")
    stops.ended("n2")
    assert not listener.is_set()
    stops.ended("n3")
    assert listener.is_set() and not others.is_set()
    stops.ended("n1")
    assert others.is_set()
    assert ListenerStops(1, "n1").stop_for("n1") is None  # alone it ends by itself
    assert ListenerStops(3, None).stop_for("n1") is None  # a step without a listener
