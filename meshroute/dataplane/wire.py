"""The rtnetlink wire format of owned host routes: the bytes, not the conversation.

Constants, the message encoder, the dump parser, the error-ack reader, the socket
factory; sequence numbers, retries, locking and the owned-route cache stay in
:mod:`.netlink`. Built on struct: pyroute2's ``rtmsg`` takes ~60 us per message.

Invariants:

- Every message names our protocol and table (also as RTA_TABLE: ids above 255 work);
  a delete matches any type and scope, but only our protocol and table.
- A prefix not ours is added with NLM_F_EXCL, never NLM_F_REPLACE (``Request.exclusive``).
- The parser keeps only our protocol and table, whatever the kernel sent; a route with
  no single gateway gets next hop 0.0.0.0 / ::. NLM_F_DUMP_INTR raises TransientError;
  any other dump error but ENOENT (no such table yet) raises OSError.
- The only state: the parser's object caches and the encoder's packed headers.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from meshroute.core.model import Address, RouteKey, key_parts

# Netlink constants, copied from pyroute2.netlink / .rtnl (checked equal by
# tests/unit/test_wire_constants.py): importing any pyroute2 submodule runs the
# package's __init__, which loads the whole library (~7.5 MiB RSS, docs/performance.md).
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x4, 0x10
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # flags of an error ack
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
SOL_NETLINK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 270, 11, 12
NETLINK_CAP_ACK = 10  # errors echo only the request header (not in pyroute2 0.9)
CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"  # where `ip netns add NAME` mounts the namespace
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # root may exceed net.core.[rw]mem_max
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE, RTA_VIA = 1, 4, 5, 15, 18
RTN_UNICAST, RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 1, 0, 255
NLMSGERR_ATTR_MSG = 1
RESERVED_PROTOCOLS = range(5)  # unspec, redirect, kernel, boot (ip route add), static

HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, ...
RTA = struct.Struct("=HH")
U32 = struct.Struct("=I")
I32 = struct.Struct("=i")
RECV_SIZE = 1 << 16
ADD_FLAGS = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
REPLACE_FLAGS = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
UNSPECIFIED = {socket.AF_INET: ipaddress.IPv4Address(0), socket.AF_INET6: ipaddress.IPv6Address(0)}


class TransientError(OSError):
    """A netlink condition that a fresh socket and a second try cure."""


@dataclass(frozen=True, slots=True)
class Request:
    """One route message of a batch; an error ack names it by ``seq``."""

    seq: int
    key: RouteKey  # a host's address (its /32 or /128) or a subnet
    next_hop: Address | None  # None: delete
    exclusive: bool = False  # added with NLM_F_EXCL (a prefix we did not own)


class Encoder:
    """Route messages as bytes; the fixed parts are packed once per family and length."""

    def __init__(self, table: int, protocol: int) -> None:
        self._table, self._protocol = table, protocol
        self._heads: dict[tuple[int, int, bool], bytes] = {}

    def encode(self, request: Request) -> bytes:
        (address, prefixlen), next_hop = key_parts(request.key), request.next_hop
        dst = address.packed
        key = (address.version, prefixlen, next_hop is None)
        head = self._heads.get(key) or self._head(*key)
        body = head + dst if next_hop is None else head + dst + _gateway(address, next_hop)
        if next_hop is None:
            kind, flags = RTM_DELROUTE, NLM_F_REQUEST
        else:
            kind, flags = RTM_NEWROUTE, ADD_FLAGS if request.exclusive else REPLACE_FLAGS
        return HDR.pack(16 + len(body), kind, flags, request.seq, 0) + body

    def _head(self, version: int, prefixlen: int, deleting: bool) -> bytes:
        """rtmsg, RTA_TABLE and the RTA_DST header. A delete leaves type 0 and scope
        NOWHERE (match any) but names protocol and table, so only ours can match."""
        scope, kind = (RT_SCOPE_NOWHERE, 0) if deleting else (RT_SCOPE_UNIVERSE, RTN_UNICAST)
        table = self._table if self._table < 256 else 0  # RTA_TABLE carries the full id
        head = RTMSG.pack(FAMILY[version], prefixlen, 0, 0, table, self._protocol, scope, kind, 0)
        head += RTA.pack(8, RTA_TABLE) + U32.pack(self._table)
        head += RTA.pack(4 + (4 if version == 4 else 16), RTA_DST)
        self._heads[version, prefixlen, deleting] = head
        return head


# --- helpers (no state) ---------------------------------------------------------------


def open_socket(netns: str | None, bufsize: int, timeout: float) -> socket.socket:
    """A bound rtnetlink socket in ``netns`` with big buffers, extended and capped acks,
    strict dump filtering, and ``timeout`` on blocking calls."""
    sock = _socket_in_netns(netns)
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, bufsize)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, bufsize)
    for option in (NETLINK_EXT_ACK, NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK):
        sock.setsockopt(SOL_NETLINK, option, 1)
    sock.bind((0, 0))
    sock.settimeout(timeout)
    return sock


def dump_request(family: int, seq: int, table: int, protocol: int) -> bytes:
    """RTM_GETROUTE for one family, filtered (with NETLINK_GET_STRICT_CHK) to ours."""
    body = RTMSG.pack(family, 0, 0, 0, table if table < 256 else 0, protocol, 0, 0, 0)
    body += RTA.pack(8, RTA_TABLE) + U32.pack(table)
    return HDR.pack(16 + len(body), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def _new_socket() -> socket.socket:
    return socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
    )


def _socket_in_netns(netns: str | None) -> socket.socket:
    """Create a socket inside ``netns``; it stays bound to that namespace for life.

    setns(2) moves only the calling thread, so a short-lived thread enters the
    namespace and the caller's own thread never leaves its namespace.
    """
    if netns is None:
        return _new_socket()
    box: dict[str, object] = {}

    def enter_and_open() -> None:
        try:
            _setns(netns)
            box["sock"] = _new_socket()
        except Exception as exc:  # handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=enter_and_open, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise OSError(f"cannot open a netlink socket in netns {netns!r}: {box['error']}")
    sock = box["sock"]
    assert isinstance(sock, socket.socket)
    return sock


def _setns(netns: str) -> None:
    """Move the calling thread into ``netns`` (a name under /var/run/netns, or a path);
    never creates it. os.setns from Python 3.12, libc's setns(2) before."""
    path = netns if os.path.dirname(netns) else os.path.join(NETNS_RUN_DIR, netns)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):
            os.setns(fd, CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own libc
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns: {errno_text(code)}", path)
    finally:
        os.close(fd)


def _gateway(destination: Address, next_hop: Address) -> bytes:
    raw = next_hop.packed
    if next_hop.version == destination.version:
        return RTA.pack(4 + len(raw), RTA_GATEWAY) + raw
    via = struct.pack("=H", FAMILY[next_hop.version]) + raw  # IPv4 prefix via IPv6 (RFC 5549)
    return RTA.pack(4 + len(via), RTA_VIA) + via + b"\0" * (-len(via) % 4)


def noop(seq: int) -> bytes:
    return HDR.pack(16, NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, seq, 0)


def errno_text(code: int) -> str:
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"


def collect_errors(data: bytes, barrier: int, errors: dict[int, tuple[int, str]]) -> bool:
    """Record the error acks in ``data``; True once the barrier's ack is among them."""
    offset, size = 0, len(data)
    done = False
    while offset + 16 <= size:
        length, kind, flags, seq, _ = HDR.unpack_from(data, offset)
        if kind == NLMSG_ERROR:
            code = -I32.unpack_from(data, offset + 16)[0]
            if seq == barrier:
                done = True
            elif code:
                errors[seq] = (code, _extack_message(data, offset, length, flags))
        offset += (length + 3) & ~3 or size
    return done


def _extack_message(data: bytes, offset: int, length: int, flags: int) -> str:
    if not flags & NLM_F_ACK_TLVS:
        return ""
    echoed = 16 if flags & NLM_F_CAPPED else HDR.unpack_from(data, offset + 20)[0]
    cursor, end = offset + 20 + ((echoed + 3) & ~3), offset + length
    while cursor + 4 <= end:
        alen, atype = RTA.unpack_from(data, cursor)
        if alen < 4:
            break
        if atype == NLMSGERR_ATTR_MSG:
            return data[cursor + 4 : cursor + alen].rstrip(b"\0").decode(errors="replace")
        cursor += (alen + 3) & ~3
    return ""


class DumpParser:
    """Reads route dumps into ``key -> next hop`` (a host route keyed by its address).

    Only next hops are cached (a handful of objects a resync sees again and again);
    route keys are made afresh: a cache of 100,000 prefix objects cost ~40 MiB, and an
    address from 4 or 16 packed bytes is cheap to make.

    Fast path: the kernel sends an IPv4 host route via a gateway as one 60-byte message
    of a fixed layout (rtmsg, RTA_TABLE, RTA_DST, RTA_GATEWAY, RTA_OIF). Such a message
    is matched against that layout (every byte the full walk would read: family,
    length, table, protocol; the four attribute headers) with three slice compares and
    its addresses cut out at fixed offsets; any other message is walked attribute by
    attribute. Both give the same result (tests/unit/test_wire_parser.py); the fast path
    is ~40 % of the walk's time, most of a no-change resync (docs/performance.md)."""

    def __init__(self, protocol: int, table: int) -> None:
        self.protocol, self.table = protocol, table
        self._next_hops: dict[bytes, Address] = {}
        rtm_table = table if table < 256 else 252  # RT_TABLE_COMPAT: the id is in RTA_TABLE
        self._host4 = (  # bytes 16..40 of the fast path's message, up to the destination
            RTMSG.pack(socket.AF_INET, 32, 0, 0, rtm_table, protocol, 0, RTN_UNICAST, 0)
            + RTA.pack(8, RTA_TABLE) + U32.pack(table) + RTA.pack(8, RTA_DST)
        )  # fmt: skip

    def forget_unless(self, routes: Mapping[RouteKey, Address]) -> None:
        """Bound the next-hop cache."""
        if len(self._next_hops) > 4096:
            self._next_hops.clear()

    def feed(self, data: bytes, seq: int, routes: dict[RouteKey, Address]) -> bool:
        """Add the owned routes in one dump datagram to ``routes``; True at the end."""
        offset, size = 0, len(data)
        host4, hops, new_address = self._host4, self._next_hops, ipaddress.IPv4Address
        while offset + 16 <= size:
            length, kind, flags, mseq, _ = HDR.unpack_from(data, offset)
            if mseq == seq and flags & NLM_F_DUMP_INTR:
                raise TransientError("dump interrupted by a concurrent change")
            if (
                length == 60
                and mseq == seq
                and kind == RTM_NEWROUTE
                and data[offset + 16 : offset + 40] == host4
                and data[offset + 44 : offset + 48] == _GATEWAY4
                and data[offset + 52 : offset + 56] == _OIF
            ):
                gateway = data[offset + 48 : offset + 52]
                next_hop = hops.get(gateway)
                if next_hop is None:
                    next_hop = hops[gateway] = new_address(gateway)
                routes[new_address(data[offset + 40 : offset + 44])] = next_hop
                offset += 60
                continue
            if mseq == seq:
                if kind in (NLMSG_DONE, NLMSG_ERROR):
                    code = -I32.unpack_from(data, offset + 16)[0]
                    if code and code != errno.ENOENT:  # ENOENT: the table does not exist yet
                        raise OSError(code, f"route dump: {errno_text(code)}")
                    return True
                if kind == RTM_NEWROUTE and data[offset + 21] == self.protocol:
                    self._route(data, offset, offset + length, routes)
            offset += (length + 3) & ~3 or size
        return False

    def _route(self, data: bytes, offset: int, end: int, routes: dict[RouteKey, Address]) -> None:
        family, dst_len, _, _, table, _, _, _, _ = RTMSG.unpack_from(data, offset + 16)
        cursor, dst, gateway = offset + 28, b"", b""
        while cursor + 4 <= end:
            alen, atype = RTA.unpack_from(data, cursor)
            if atype == RTA_DST:
                dst = data[cursor + 4 : cursor + alen]
            elif atype == RTA_GATEWAY:
                gateway = data[cursor + 4 : cursor + alen]
            elif atype == RTA_TABLE:
                table = U32.unpack_from(data, cursor + 4)[0]
            elif atype == RTA_VIA:  # rtvia: a 2-byte family, then the address
                gateway = data[cursor + 6 : cursor + alen]
            cursor += (alen + 3) & ~3 or end
        if table != self.table:
            return
        next_hop = self._next_hops.get(gateway)
        if next_hop is None:
            next_hop = self._next_hops[gateway] = _address(family, gateway)
        routes[_key(family, dst, dst_len)] = next_hop


_GATEWAY4, _OIF = RTA.pack(8, RTA_GATEWAY), RTA.pack(8, RTA_OIF)


def _address(family: int, raw: bytes) -> Address:
    """The next hop; a route with none (device-only, multipath) gets the unspecified one."""
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw)
    if len(raw) == 16:
        return ipaddress.IPv6Address(raw)
    return UNSPECIFIED[family]  # type: ignore[index,return-value]  # AF_* are ints


def _key(family: int, dst: bytes, dst_len: int) -> RouteKey:
    """A host route's address (made straight from its packed bytes), else the prefix."""
    if family == socket.AF_INET:
        if dst_len == 32:
            return ipaddress.IPv4Address(dst)
        return ipaddress.IPv4Network((int.from_bytes(dst.ljust(4, b"\0"), "big"), dst_len))
    if dst_len == 128:
        return ipaddress.IPv6Address(dst)
    return ipaddress.IPv6Network((int.from_bytes(dst.ljust(16, b"\0"), "big"), dst_len))
