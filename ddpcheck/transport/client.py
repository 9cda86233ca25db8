"""Transport, SSH client: an authenticated paramiko connection to one host (host keys, identity,
the reasons a connect fails). Runs on the launcher; does I/O only.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading

from ..model.errors import HostError
from ..model.safety import open_append
from ..model.spec import HostKeyPolicy, HostSpec, SSHSpec, ssh_user
from . import knownhosts

SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"
# paramiko's transport thread wakes every 0.1 s when its connection is idle (its socket's
# timeout) to see whether it was closed: 10 wake-ups a second for every host held from stage 0
# to the end of the launch, a third of a core at 1,000 hosts. Once connected, once a second is
# enough: data still wakes it at once, and a closed connection's thread ends within a second.
IDLE_WAKE_S = 1.0

_known_hosts_lock = threading.Lock()


def _accept_new_policy(known_hosts_path: str):  # -> paramiko.MissingHostKeyPolicy
    import paramiko

    class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
        """Like OpenSSH's accept-new: record an unknown key; a changed key never gets here
        (paramiko raises BadHostKeyException for it before consulting the policy)."""

        def missing_host_key(self, client, hostname, key) -> None:
            with _known_hosts_lock:  # ~/.ssh made 0700; a link planted there is refused
                os.makedirs(os.path.dirname(known_hosts_path) or ".", mode=0o700, exist_ok=True)
                with os.fdopen(open_append(known_hosts_path), "a", encoding="ascii") as handle:
                    fcntl.flock(handle, fcntl.LOCK_EX)
                    handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
                    fcntl.flock(handle, fcntl.LOCK_UN)
                knownhosts.remember(known_hosts_path, hostname, key.get_name(),
                                    key.get_base64())
            client.get_host_keys().add(hostname, key.get_name(), key)

    return AcceptNewPolicy()


def open_client(host: HostSpec, ssh: SSHSpec, sock=None, via: str = ""):
    """An authenticated ``paramiko.SSHClient`` to ``host`` (over ``sock`` when given: a
    direct-tcpip channel through a jump host). Host keys are checked the same way for jump
    hosts and targets. Every failure is a ``HostError`` for ``host`` (stage ``ssh``); ``via``
    prefixes its message (e.g. "jump host bastion: ")."""
    import paramiko

    _quiet_paramiko()
    client = paramiko.SSHClient()
    known_hosts = os.path.expanduser(ssh.known_hosts or USER_KNOWN_HOSTS)

    def fail(message: str) -> HostError:
        client.close()
        return HostError(host.name, "ssh", via + message)

    # Parsed once per run and shared (paramiko's own loader re-reads the file per client);
    # this client gets only its host's keys.
    tables = []
    for path in (SYSTEM_KNOWN_HOSTS, known_hosts):
        try:
            tables.append(knownhosts.load(path))
        except (OSError, knownhosts.KnownHostsError) as exc:
            raise fail(f"cannot read known_hosts {path}: {exc}") from None
    knownhosts.fill(client.get_host_keys(), tables, _known_hosts_name(host))
    if ssh.host_key_policy is HostKeyPolicy.ACCEPT_NEW:
        client.set_missing_host_key_policy(_accept_new_policy(known_hosts))
    else:
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    timeout = ssh.connect_timeout
    where = f"{host.address}:{host.port}"
    try:
        identity = _load_identity(host)
    except HostError as exc:
        raise fail(exc.message) from None
    if sock is None and host.proxy_command:
        sock = _proxy_command(host.proxy_command)  # its own deadline: banner_timeout below
        if isinstance(sock, str):
            raise fail(sock)
        where += f" (ProxyCommand {host.proxy_command!r})"
        close_client = fail

        def fail(message: str) -> HostError:  # noqa: F811 - also stop the proxy process
            sock.close()
            return close_client(message)
    try:
        client.connect(host.address, port=host.port, username=ssh_user(host),
                       pkey=identity, timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout,
                       channel_timeout=timeout, allow_agent=True,
                       look_for_keys=host.identity_file is None, sock=sock)
    except paramiko.BadHostKeyException as exc:
        raise fail(
            f"HOST KEY CHANGED for {host.address}: expected {exc.expected_key.fingerprint}, "
            f"got {exc.key.fingerprint}; refusing to connect. If the change is legitimate, "
            f"run: ssh-keygen -f {known_hosts} -R {_known_hosts_name(host)}") from None
    except paramiko.AuthenticationException as exc:
        raise fail(f"authentication failed as {ssh_user(host)}: {exc}") from None
    except paramiko.SSHException as exc:
        message = str(exc)
        if "not found in known_hosts" in message:
            message = (f"host key for {_known_hosts_name(host)} is not in {known_hosts} "
                       f"(or {SYSTEM_KNOWN_HOSTS}); add it with ssh-keyscan after checking "
                       f"it, or set ssh.host_key_policy: accept-new")
        elif "protocol banner" in message or message == "No existing session":
            # (paramiko reports a banner timeout one way or the other, by timing)
            message = (f"no SSH banner from {where} within {timeout:g}s, or the connection "
                       f"closed during the handshake (not an SSH server, or one too busy to "
                       f"answer)")
        elif "negotiation" in message.lower() or "timeout" in message.lower():
            message = f"SSH handshake with {where} did not finish within {timeout:g}s"
        raise fail(message) from None
    except (socket.timeout, TimeoutError):
        raise fail(f"connect to {where} timed out after {timeout:g}s") from None
    except (OSError, EOFError) as exc:
        raise fail(f"cannot connect to {where}: {_socket_reason(exc)}") from None
    transport = client.get_transport()
    transport.sock.settimeout(IDLE_WAKE_S)  # the handshake is done; see IDLE_WAKE_S
    key = transport.get_remote_server_key()
    revoked_in = knownhosts.is_revoked(tables, key.get_name(), key.get_base64())
    if revoked_in:
        raise fail(f"the host key of {host.address} ({key.fingerprint}) is marked @revoked in "
                   f"{revoked_in}; refusing to connect")
    return client


def _proxy_command(command: str):  # -> paramiko.ProxyCommand, or why it cannot start
    """ssh_config's ProxyCommand, run as ssh runs it: ``$SHELL -c "exec COMMAND"``."""
    import shlex

    import paramiko

    shell = os.environ.get("SHELL") or "/bin/sh"
    try:
        return paramiko.ProxyCommand(shlex.join([shell, "-c", "exec " + command]))
    except (paramiko.ProxyCommandFailure, OSError) as exc:
        return f"ProxyCommand {command!r} cannot start: {exc}"


def _quiet_paramiko() -> None:
    """paramiko logs its transport thread's errors; with no handler configured Python would
    print them (tracebacks included) on stderr. Every failure reaches the user as a HostError
    with the host named, so its log has a handler that drops it unless the user sets one."""
    logger = logging.getLogger("paramiko")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def _load_identity(host: HostSpec):  # -> Optional[paramiko.PKey]
    """The host's identity_file as a key. Loaded here rather than by paramiko's connect, which
    tries every key type and reports the last type's parse error instead of a refused key;
    and so that a bad file is named by its path, never by its contents."""
    if host.identity_file is None:
        return None
    import paramiko

    path = host.identity_file
    encrypted = HostError(host.name, "ssh", (
        f"identity file {path} is encrypted and ddpcheck asks for no passphrase: load the key "
        f"into ssh-agent (ssh-add {path})"))
    try:
        return paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        raise encrypted from None
    except TypeError as exc:  # cryptography's way of saying so for PEM keys
        if "encrypted" in str(exc):
            raise encrypted from None
        raise HostError(host.name, "ssh", f"identity file {path} is not a private key "
                                          f"ddpcheck can read") from None
    except FileNotFoundError:
        raise HostError(host.name, "ssh", f"identity file {path} does not exist") from None
    except OSError as exc:
        raise HostError(host.name, "ssh", f"cannot read identity file {path}: "
                                          f"{exc.strerror or type(exc).__name__}") from None
    except Exception:  # noqa: BLE001 - paramiko raises several types for a bad key file
        # The parser's message may quote the file: say only what is wrong with it.
        raise HostError(host.name, "ssh", (
            f"identity file {path} is not a private key ddpcheck can read (OpenSSH or PEM "
            f"RSA, ECDSA or Ed25519)")) from None


def _socket_reason(exc: BaseException) -> str:
    """"Connection refused", "No route to host"...: the reason under paramiko's wrapper
    (NoValidConnectionsError keeps one socket error per address tried)."""
    inner = getattr(exc, "errors", None)
    if isinstance(inner, dict) and inner:
        return "; ".join(sorted({_socket_reason(e) for e in inner.values()}))
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _known_hosts_name(host: HostSpec) -> str:
    return host.address if host.port == 22 else f"[{host.address}]:{host.port}"
