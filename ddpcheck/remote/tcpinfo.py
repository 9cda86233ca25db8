"""The TCP connections of a process and the kernel's counters for each (what ``ss -ti`` shows).

Runs on every host, in the hang scan (``remote/hangscan.py``): one ``sock_diag`` netlink dump of
the host's established TCP sockets (any user may ask; the counters are the kernel's
``struct tcp_info``), matched to a worker by the socket inodes in ``/proc/PID/fd``. A gloo job's
collectives, and NCCL's over sockets, move their data over these connections, so the bytes
acknowledged and the time the connection was busy sending, less the time the receiver's window
held it, say how fast each link carries the job's traffic. Standard library
only; the parsers are pure and tested against ``ss`` itself.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterable, Optional

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_DONE, NLMSG_ERROR = 3, 2
INET_DIAG_INFO = 2
TCP_ESTABLISHED = 1

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
REQ_V2 = struct.Struct("=BBBBI")  # family, protocol, ext, pad, states
SOCKID = struct.Struct("!HH16s16s")  # sport, dport (network order), src, dst; then if, cookie
SOCKID_SIZE = 48
MSG_HEAD = struct.Struct("=BBBB")  # family, state, timer, retrans
MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
RTATTR = struct.Struct("=HH")

# struct tcp_info (linux/tcp.h): the offsets of the fields read here. busy_time is all the time
# with data in flight, and counts the time the receiver's window held the sender; that share is
# the receiver's (a slow reader), the rest the network's (the send buffer's share included: a
# sender whose buffer is all in flight waits for the network to drain it).
TCPI_RTT = 68  # u32, microseconds
TCPI_BYTES_ACKED = 120  # u64
TCPI_BYTES_RECEIVED = 128  # u64
TCPI_BUSY_TIME = 168  # u64 microseconds with data in flight (Linux 4.10 on)
TCPI_RWND_LIMITED = 176  # u64 microseconds of that held by the receiver's window
TCPI_MIN_SIZE = 184


@dataclass(frozen=True)
class TcpSocket:
    inode: int
    local: str  # "ip:port" ("[ip]:port" for IPv6)
    peer: str
    bytes_acked: int  # bytes it sent that the peer acknowledged
    bytes_received: int
    net_busy_us: int  # sending with data in flight, not held by the receiver's window
    rtt_us: int


def _align(n: int) -> int:
    return (n + 3) & ~3


def request(family: int, seq: int = 1) -> bytes:
    """A dump request for every established TCP socket of ``family``, with its tcp_info."""
    body = REQ_V2.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0,
                       1 << TCP_ESTABLISHED) + bytes(SOCKID_SIZE)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY,
                         NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def _endpoint(address: "ipaddress.IPv4Address | ipaddress.IPv6Address", port: int) -> str:
    """``ip:port`` (``[ip]:port`` for IPv6; an IPv4-mapped address as its IPv4 one), as
    both readers write a connection's ends."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None:
            return f"[{address}]:{port}"
        address = address.ipv4_mapped
    return f"{address}:{port}"


def _address(family: int, raw: bytes, port: int) -> str:
    return _endpoint(ipaddress.IPv4Address(raw[:4]) if family == socket.AF_INET
                     else ipaddress.IPv6Address(raw), port)


def parse_tcp_info(raw: bytes) -> Optional[tuple[int, int, int, int]]:
    """(bytes_acked, bytes_received, network-busy microseconds, rtt microseconds) from a
    struct tcp_info; None when the kernel's struct is too old to have the busy counters."""
    if len(raw) < TCPI_MIN_SIZE:
        return None
    (rtt,) = struct.unpack_from("=I", raw, TCPI_RTT)
    acked, received = struct.unpack_from("=QQ", raw, TCPI_BYTES_ACKED)
    busy, rwnd = struct.unpack_from("=QQ", raw, TCPI_BUSY_TIME)
    return acked, received, max(0, busy - rwnd), rtt


def parse_dump(data: bytes) -> tuple[list[TcpSocket], bool]:
    """The sockets in a chunk of netlink replies, and whether the dump ended (NLMSG_DONE)."""
    found: list[TcpSocket] = []
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size:
            return found, True
        body = data[offset + NLMSGHDR.size:offset + length]
        offset += _align(length)
        if kind == NLMSG_DONE:
            return found, True
        if kind == NLMSG_ERROR:
            (errno,) = struct.unpack_from("=i", body, 0)
            raise OSError(-errno, os.strerror(-errno), "sock_diag")
        if kind != SOCK_DIAG_BY_FAMILY or len(body) < MSG_HEAD.size + SOCKID_SIZE + MSG_TAIL.size:
            continue
        family = body[0]
        sport, dport, src, dst = SOCKID.unpack_from(body, MSG_HEAD.size)
        inode = MSG_TAIL.unpack_from(body, MSG_HEAD.size + SOCKID_SIZE)[4]
        at = MSG_HEAD.size + SOCKID_SIZE + MSG_TAIL.size
        while at + RTATTR.size <= len(body):
            size, kind_attr = RTATTR.unpack_from(body, at)
            if size < RTATTR.size:
                break
            if kind_attr == INET_DIAG_INFO:
                info = parse_tcp_info(body[at + RTATTR.size:at + size])
                if info is not None:
                    found.append(TcpSocket(inode, _address(family, src, sport),
                                           _address(family, dst, dport), *info))
            at += _align(size)
    return found, False


def established_sockets(families: Iterable[int] = (socket.AF_INET, socket.AF_INET6)
                        ) -> dict[int, TcpSocket]:
    """Every established TCP socket in this network namespace, by inode (empty where the
    kernel has no sock_diag)."""
    sockets: dict[int, TcpSocket] = {}
    try:
        link = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    except OSError:
        return sockets
    with link:
        link.settimeout(2.0)
        for seq, family in enumerate(families, 1):
            link.sendto(request(family, seq), (0, 0))
            done = False
            while not done:
                try:
                    found, done = parse_dump(link.recv(1 << 16))
                except (OSError, socket.timeout):
                    break
                sockets.update((s.inode, s) for s in found)
    return sockets


def socket_descriptors(pid: "int | str") -> dict[int, int]:
    """The sockets process ``pid`` ("self": this one) holds open: descriptor -> inode (empty
    where we may not look; one closed meanwhile is left out)."""
    sockets: dict[int, int] = {}
    folder = f"/proc/{pid}/fd"
    try:
        names = os.listdir(folder)
    except OSError:
        return sockets
    for name in names:
        try:
            target = os.readlink(os.path.join(folder, name))
        except OSError:
            continue
        if target.startswith("socket:[") and name.isdigit():
            sockets[int(name)] = int(target[8:-1])
    return sockets


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds open (empty where we may not look)."""
    return set(socket_descriptors(pid).values())


def process_links(pid: int, sockets: dict[int, TcpSocket]) -> list[list]:
    """The process's TCP connections as the scan reports them:
    [local, peer, bytes_acked, bytes_received, net_busy_us]."""
    return [[s.local, s.peer, s.bytes_acked, s.bytes_received, s.net_busy_us]
            for inode in sorted(socket_inodes(pid)) if (s := sockets.get(inode)) is not None]


def _format(family: int, address: tuple) -> str:
    """A socket address as getsockname gives it (IPv4 as it comes: parsing it would cost a
    third of ``own_links``; IPv6 without its zone)."""
    if family == socket.AF_INET:
        return f"{address[0]}:{address[1]}"
    return _endpoint(ipaddress.IPv6Address(address[0].split("%", 1)[0]), address[1])


def own_links() -> list[list]:
    """This process's TCP connections, as ``process_links`` reports a worker's, read with
    ``getsockopt(TCP_INFO)`` on a duplicate of each socket descriptor (in a job: the Monitor's
    own; closing the duplicate leaves the job's socket as it was)."""
    links = []
    for descriptor in socket_descriptors("self"):
        try:
            duplicate = os.dup(descriptor)
        except OSError:
            continue  # closed meanwhile
        try:
            sock = socket.socket(fileno=duplicate)
        except OSError:
            os.close(duplicate)
            continue
        with sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6) \
                    or sock.type != socket.SOCK_STREAM:
                continue
            try:
                info = parse_tcp_info(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232))
                local, peer = sock.getsockname(), sock.getpeername()
            except OSError:
                continue  # listening, or not connected
            if info is not None:
                links.append([_format(sock.family, local), _format(sock.family, peer),
                              info[0], info[1], info[2]])
    return links
