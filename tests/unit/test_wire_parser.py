"""The dump parser's fast path (fixed-layout IPv4 host routes) reads exactly what the
full attribute walk reads, and leaves every other message to that walk."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from meshroute.dataplane import wire

PROTO, TABLE, SEQ = 201, 254, 77
HOP = b"\xc0\x00\x02\x02"


def attr(kind: int, payload: bytes) -> bytes:
    raw = wire.RTA.pack(4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(
    dst: bytes = b"\x0a\x40\x00\x01",
    *,
    family: int = socket.AF_INET,
    dst_len: int = 32,
    table: int = TABLE,
    proto: int = PROTO,
    scope: int = 0,
    kind: int = wire.RTM_NEWROUTE,
    seq: int = SEQ,
    flags: int = 2,
    attrs: list[bytes] | None = None,
) -> bytes:
    """A route as the kernel dumps it (by default: the fast path's 60-byte layout)."""
    if attrs is None:
        attrs = [
            attr(wire.RTA_TABLE, wire.U32.pack(table)),
            attr(wire.RTA_DST, dst),
            attr(wire.RTA_GATEWAY, HOP),
            attr(wire.RTA_OIF, wire.U32.pack(3)),
        ]
    rtm_table = table if table < 256 else 252
    body = wire.RTMSG.pack(family, dst_len, 0, 0, rtm_table, proto, scope, 1, 0) + b"".join(attrs)
    return wire.HDR.pack(16 + len(body), kind, flags, seq, 4242) + body


def done(seq: int = SEQ) -> bytes:
    return wire.HDR.pack(20, wire.NLMSG_DONE, 2, seq, 4242) + struct.pack("=i", 0)


def walked(data: bytes, table: int = TABLE) -> dict[object, object]:
    """The full attribute walk alone (the fast path's layout made unmatchable)."""
    parser = wire.DumpParser(PROTO, table)
    parser._host4 = b"never"
    routes: dict[object, object] = {}
    parser.feed(data, SEQ, routes)
    return routes


def fed(data: bytes, table: int = TABLE) -> tuple[dict[object, object], bool]:
    routes: dict[object, object] = {}
    end = wire.DumpParser(PROTO, table).feed(data, SEQ, routes)
    return routes, end


@pytest.mark.parametrize("name", ["RTA_DST", "RTA_OIF", "RTA_GATEWAY", "RTA_TABLE", "RTA_VIA"])
def test_attribute_numbers_are_the_kernels(name: str) -> None:
    numbers = {entry[0]: index for index, entry in enumerate(rtmsg.nla_map)}
    assert getattr(wire, name) == numbers[name]


def test_the_fast_layout_is_read_like_the_walk() -> None:
    data = b"".join(message(bytes([10, 64, i // 256, i % 256])) for i in range(300)) + done()
    routes, end = fed(data)
    assert end
    assert len(routes) == 300
    assert routes == walked(data)
    assert routes[ipaddress.IPv4Address("10.64.1.40")] == ipaddress.IPv4Address("192.0.2.2")


def test_the_fast_layout_skips_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_walk(*_args: object) -> None:
        raise AssertionError("walked a message of the fast layout")

    parser = wire.DumpParser(PROTO, TABLE)
    monkeypatch.setattr(parser, "_route", no_walk)
    routes: dict[object, object] = {}
    assert parser.feed(message() + message(b"\x0a\x40\x00\x02") + done(), SEQ, routes)
    assert len(routes) == 2


def test_a_big_table_id_takes_the_fast_path_too() -> None:
    data = message(table=1000) + done()
    assert fed(data, table=1000)[0] == {
        ipaddress.IPv4Address("10.64.0.1"): ipaddress.IPv4Address("192.0.2.2")
    }


OTHER_MESSAGES = {
    "another table": message(table=100),
    "another protocol": message(proto=4),
    "another dump": message(seq=SEQ + 1),
    "a subnet": message(b"\x0a\x40\x01", dst_len=24),
    "scope link": message(scope=253),
    "a metric instead of the device": message(
        attrs=[
            attr(wire.RTA_TABLE, wire.U32.pack(TABLE)),
            attr(wire.RTA_DST, b"\x0a\x40\x00\x05"),
            attr(wire.RTA_GATEWAY, HOP),
            attr(6, wire.U32.pack(100)),  # RTA_PRIORITY
        ]
    ),
    "via an IPv6 next hop": message(
        attrs=[
            attr(wire.RTA_TABLE, wire.U32.pack(TABLE)),
            attr(wire.RTA_DST, b"\x0a\x40\x00\x06"),
            attr(wire.RTA_VIA, struct.pack("=H", socket.AF_INET6) + bytes(15) + b"\x01"),
            attr(wire.RTA_OIF, wire.U32.pack(3)),
        ]
    ),
    "no gateway (device route)": message(
        attrs=[
            attr(wire.RTA_TABLE, wire.U32.pack(TABLE)),
            attr(wire.RTA_DST, b"\x0a\x40\x00\x07"),
            attr(wire.RTA_OIF, wire.U32.pack(3)),
        ]
    ),
}


@pytest.mark.parametrize("name", OTHER_MESSAGES)
def test_other_messages_are_read_like_the_walk(name: str) -> None:
    data = message() + OTHER_MESSAGES[name] + message(b"\x0a\x40\x00\x02") + done()
    routes, end = fed(data)
    assert end
    assert routes == walked(data)
    assert ipaddress.IPv4Address("10.64.0.2") in routes  # the message after it is read


def test_foreign_routes_are_left_out() -> None:
    data = message(table=100) + message(proto=4) + message(seq=SEQ + 1) + done()
    assert fed(data) == ({}, True)


def test_an_interrupted_dump_raises_on_the_fast_layout_too() -> None:
    with pytest.raises(wire.TransientError):
        fed(message(flags=2 | wire.NLM_F_DUMP_INTR))
