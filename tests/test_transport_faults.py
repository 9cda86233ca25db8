"""SSHSession against an in-process SSH server with one fault per test.

Each test starts ``tests/sshserver.FakeSSHServer`` on 127.0.0.1:0 with the fault it needs and
checks what ``ddpcheck.transport.ssh.SSHSession`` answers, and how fast: a refused port, a banner
that never comes, rejected authentication, a wrong or unknown host key, exit 127, a command
that never ends, output far larger than the SSH window, a connection cut mid-stream, a pty
request never answered, output that never stops after the exit status, Ctrl-C.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paramiko
import pytest

import ddpcheck.transport.channels as channels
from ddpcheck.model.errors import HostError
from ddpcheck.model.spec import HostKeyPolicy, HostSpec, SSHSpec
from ddpcheck.transport.local import OutputBuffer
from ddpcheck.transport.ssh import SSHSession

from sshserver import (FakeSSHServer, drop_mid_stream, exit_then_keep_sending, exit_with, flood,
                       free_port, hang, new_key, numbered_lines)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """(host key, client key, client key file): ECDSA, quick to generate."""
    host_key, client_key = new_key(), new_key()
    path = tmp_path_factory.mktemp("keys") / "id_ecdsa"
    client_key.write_private_key_file(str(path))
    return host_key, client_key, path


@pytest.fixture
def start_server(keys):
    servers: list[FakeSSHServer] = []

    def start(behaviour=exit_with(0), **faults) -> FakeSSHServer:
        server = FakeSSHServer(keys[0], keys[1], behaviour, **faults).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def spec_for(server_or_port, keys, name: str = "fake") -> HostSpec:
    port = server_or_port if isinstance(server_or_port, int) else server_or_port.port
    return HostSpec(name=name, address="127.0.0.1", port=port, user="tester",
                    identity_file=str(keys[2]))


def ssh_spec(tmp_path: Path, *servers: FakeSSHServer, timeout: float = 2.0,
             policy: HostKeyPolicy = HostKeyPolicy.REJECT) -> SSHSpec:
    known = tmp_path / "known_hosts"
    known.write_text("".join(s.known_hosts_line() + "\n" for s in servers))
    return SSHSpec(known_hosts=str(known), host_key_policy=policy, connect_timeout=timeout)


def connect(server: FakeSSHServer, keys, tmp_path: Path, **kwargs) -> SSHSession:
    return SSHSession.connect(spec_for(server, keys), ssh_spec(tmp_path, server, **kwargs))


def run(session: SSHSession, seconds: float, cancel: threading.Event | None = None):
    began = time.monotonic()
    result = session.run("some command", time.monotonic() + seconds,
                         cancel or threading.Event())
    return result, time.monotonic() - began


def wait_for(condition, seconds: float = 5.0) -> bool:
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# -- connecting -------------------------------------------------------------------------------


def test_refused_connection_is_named_at_once(keys, tmp_path):
    began = time.monotonic()
    with pytest.raises(HostError) as caught:
        SSHSession.connect(spec_for(free_port(), keys), ssh_spec(tmp_path))
    assert caught.value.host == "fake" and caught.value.stage == "ssh"
    assert "cannot connect to 127.0.0.1:" in caught.value.message
    assert "refused" in caught.value.message.lower()
    assert time.monotonic() - began < 1.5


def test_banner_that_never_comes_gives_up_at_the_connect_timeout(start_server, keys, tmp_path):
    server = start_server(banner_delay_s=30)
    began = time.monotonic()
    with pytest.raises(HostError) as caught:
        connect(server, keys, tmp_path, timeout=1.0)
    took = time.monotonic() - began
    assert "no SSH banner from 127.0.0.1:" in caught.value.message
    assert "within 1s" in caught.value.message
    assert 0.9 <= took < 3.0, took


def test_rejected_authentication_names_the_user(start_server, keys, tmp_path):
    server = start_server(reject_auth=True)
    began = time.monotonic()
    with pytest.raises(HostError) as caught:
        connect(server, keys, tmp_path)
    assert caught.value.message.startswith("authentication failed as tester")
    assert server.observed.auth_attempts  # the key was offered and refused
    assert server.observed.commands == []
    assert time.monotonic() - began < 3.0


def test_wrong_host_key_is_refused_with_both_fingerprints_under_every_policy(
        start_server, keys, tmp_path):
    server = start_server()
    impostor = new_key()
    known = tmp_path / "known_hosts"
    recorded = f"[127.0.0.1]:{server.port} {impostor.get_name()} {impostor.get_base64()}\n"
    for policy in HostKeyPolicy:
        known.write_text(recorded)
        with pytest.raises(HostError) as caught:
            SSHSession.connect(spec_for(server, keys),
                               SSHSpec(known_hosts=str(known), host_key_policy=policy,
                                       connect_timeout=2))
        message = caught.value.message
        assert "HOST KEY CHANGED" in message
        assert impostor.fingerprint in message and keys[0].fingerprint in message
        assert f"ssh-keygen -f {known} -R [127.0.0.1]:{server.port}" in message
        assert known.read_text() == recorded  # never rewritten, not even by accept-new
    assert server.observed.auth_attempts == []  # refused before any credential was offered


def test_unknown_host_key_is_refused_by_default(start_server, keys, tmp_path):
    server = start_server()
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(HostError) as caught:
        SSHSession.connect(spec_for(server, keys), SSHSpec(known_hosts=str(known)))
    assert "is not in" in caught.value.message and "accept-new" in caught.value.message
    assert known.read_text() == ""
    assert server.observed.auth_attempts == []


def test_accept_new_from_many_threads_writes_each_key_once_and_whole(start_server, keys,
                                                                    tmp_path):
    servers = [start_server() for _ in range(8)]
    known = tmp_path / "known_hosts"
    known.write_text("")
    ssh = SSHSpec(known_hosts=str(known), host_key_policy=HostKeyPolicy.ACCEPT_NEW,
                  connect_timeout=5)
    errors: list[BaseException] = []

    def connect_one(server: FakeSSHServer) -> None:
        try:
            SSHSession.connect(spec_for(server, keys), ssh).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=connect_one, args=(s,)) for s in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(known.read_text().splitlines()) == sorted(s.known_hosts_line()
                                                            for s in servers)


# -- running ----------------------------------------------------------------------------------


def test_exit_127_and_its_output_come_back(start_server, keys, tmp_path):
    server = start_server(exit_with(127, b"sh: 1: /opt/nope/bin/python: not found\r\n"))
    session = connect(server, keys, tmp_path)
    try:
        result, _ = run(session, 10)
    finally:
        session.close()
    assert result.exit_code == 127 and not result.ok
    assert not (result.timed_out or result.cancelled or result.lost)
    assert "/opt/nope/bin/python: not found" in result.output


def test_command_that_never_ends_is_stopped_at_its_deadline_and_hung_up(start_server, keys,
                                                                       tmp_path):
    server = start_server(hang)
    session = connect(server, keys, tmp_path)
    try:
        result, took = run(session, 1.0)
        assert result.timed_out and result.exit_code is None and not result.lost
        assert 0.9 <= took < 2.0, took
        # closing the channel reached the server: the remote command was hung up
        assert wait_for(lambda: server.observed.hangups == ["some command"])
    finally:
        session.close()


def test_ctrl_c_cancels_a_running_command_and_hangs_it_up(start_server, keys, tmp_path):
    server = start_server(hang)
    session = connect(server, keys, tmp_path)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    try:
        result, took = run(session, 30, cancel)
    finally:
        session.close()
    assert result.cancelled and not result.timed_out and result.exit_code is None
    assert took < 1.5
    assert wait_for(lambda: server.observed.hangups == ["some command"])


def test_output_far_larger_than_the_ssh_window_is_read_whole(start_server, keys, tmp_path):
    size = 8 * paramiko.common.DEFAULT_WINDOW_SIZE  # 16 MiB through a 2 MiB window
    server = start_server(flood(size, then_exit=3))
    session = connect(server, keys, tmp_path)
    try:
        result, took = run(session, 60)
    finally:
        session.close()
    assert result.exit_code == 3, (result, took)
    assert result.output.encode() == numbered_lines(size)
    assert took < 30


def test_connection_dropped_mid_stream_is_reported_as_lost_with_what_came(start_server, keys,
                                                                         tmp_path):
    server = start_server(drop_mid_stream(b"@@DDPCHECK partial\r\n"))
    session = connect(server, keys, tmp_path)
    try:
        result, took = run(session, 30)
        assert result.lost and result.exit_code is None and not result.timed_out
        assert "@@DDPCHECK partial" in result.output
        assert took < 5
        # the next command on the dead connection is lost at once, not an exception
        again, took = run(session, 30)
        assert again.lost and took < 1
    finally:
        session.close()


def test_pty_request_never_answered_gives_up_at_the_deadline(start_server, keys, tmp_path):
    server = start_server(hang, pty_never_answered=True)
    session = connect(server, keys, tmp_path)
    try:
        result, took = run(session, 1.0)
    finally:
        session.close()
    assert result.timed_out and result.exit_code is None
    assert took < 2.5, took
    assert server.observed.commands == []  # it never got as far as the command


def test_output_that_never_stops_after_the_exit_status_is_cut_at_the_fetch_deadline(
        start_server, keys, tmp_path, monkeypatch):
    monkeypatch.setattr(channels, "FETCH_DEADLINE_S", 1.0)
    server = start_server(exit_then_keep_sending)
    session = connect(server, keys, tmp_path)
    try:
        result, took = run(session, 30)
    finally:
        session.close()
    assert result.exit_code == 0 and not result.timed_out
    assert result.output.startswith("before exit")
    assert took < 3.0, took


def test_runaway_output_is_bounded_in_memory():
    buffer = OutputBuffer(limit=1000)
    for index in range(100):
        buffer.append(b"%04d\n" % index * 10)
    text = buffer.text()
    assert text.startswith("0000\n") and text.endswith("0099\n")
    assert "bytes of output dropped" in text and len(text) < 1200


# -- many at once, one thread waiting -----------------------------------------------------------


def test_every_fault_at_once_in_one_wait_ends_each_command_as_alone(start_server, keys, tmp_path,
                                                                   monkeypatch):
    """``run_many``: the commands of seven servers, started two at a time and then waited on by
    the calling thread alone; each ends as it would alone, and is reported as soon as it ends."""
    from ddpcheck.transport.multiplex import Job, run_many

    monkeypatch.setattr(channels, "FETCH_DEADLINE_S", 1.0)
    size = 4 * paramiko.common.DEFAULT_WINDOW_SIZE
    servers = {
        "exit127": start_server(exit_with(127, b"sh: 1: /opt/nope/bin/python: not found\r\n")),
        "hang": start_server(hang),
        "drop": start_server(drop_mid_stream(b"@@DDPCHECK partial\r\n")),
        "flood": start_server(flood(size, then_exit=3)),
        "chatty": start_server(exit_then_keep_sending),
        "no_pty": start_server(hang, pty_never_answered=True),
        "refused": start_server(exit_with(0)),
    }
    sessions = {name: connect(server, keys, tmp_path) for name, server in servers.items()}
    sessions["refused"].client.get_transport().close()  # lost before it starts
    names = list(servers)
    began = time.monotonic()
    short = {"hang", "no_pty"}
    jobs = [Job(sessions[name], "some command", began + (1.5 if name in short else 20))
            for name in names]
    reported: dict[str, float] = {}
    try:
        outcomes = run_many(jobs, 2, threading.Event(),
                            lambda index, result: reported.__setitem__(
                                names[index], time.monotonic() - began))
    finally:
        for session in sessions.values():
            session.close()
    took = time.monotonic() - began
    results = {name: outcome.result for name, outcome in zip(names, outcomes)}
    assert all(outcome.error is None for outcome in outcomes), outcomes
    assert results["exit127"].exit_code == 127
    assert "/opt/nope/bin/python: not found" in results["exit127"].output
    assert results["hang"].timed_out and results["hang"].exit_code is None
    assert wait_for(lambda: servers["hang"].observed.hangups == ["some command"])
    assert results["drop"].lost and "@@DDPCHECK partial" in results["drop"].output
    assert results["flood"].exit_code == 3
    assert results["flood"].output.encode() == numbered_lines(size)
    chatty = results["chatty"]
    assert chatty.exit_code == 0 and chatty.output.startswith("before exit")
    assert not chatty.timed_out
    assert results["no_pty"].timed_out and servers["no_pty"].observed.commands == []
    assert results["refused"].lost and results["refused"].exit_code is None
    assert set(reported) == set(names)
    # each one as soon as it ended: the quick ones long before the deadline of the hung ones
    assert reported["exit127"] < 1.0 and reported["refused"] < 1.0, reported
    assert 1.4 <= reported["hang"] < 2.5, reported
    assert took < 5.0, took  # at once, not one after the other


def test_an_idle_connection_wakes_once_a_second_and_still_answers_and_closes_at_once(
        start_server, keys, tmp_path):
    """paramiko's transport thread wakes at its socket's timeout (0.1 s by default) to look
    for a close; after the handshake ddpcheck makes that IDLE_WAKE_S. Output still comes at
    once (data wakes the thread), and a closed connection's thread is gone within it."""
    from ddpcheck.transport.client import IDLE_WAKE_S

    server = start_server(exit_with(0, b"ok\r\n"))
    session = connect(server, keys, tmp_path)
    transport = session.client.get_transport()
    try:
        assert transport.sock.gettimeout() == IDLE_WAKE_S > 0.1
        time.sleep(IDLE_WAKE_S * 1.5)  # idle, then a command: answered without waiting a tick
        result, took = run(session, 10)
        assert result.exit_code == 0 and "ok" in result.output
        assert took < IDLE_WAKE_S, took
    finally:
        session.close()
    assert wait_for(lambda: not transport.is_alive(), IDLE_WAKE_S + 1.0)
