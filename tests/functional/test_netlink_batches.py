"""Batches against the real kernel: one bad route fails alone; large batches are exact."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from meshroute.core.model import Route
from meshroute.dataplane.netlink import NetlinkDataplane
from tests.fakes import by_prefix
from tests.functional.conftest import HOP4, HOP6, Netns

pytestmark = pytest.mark.functional

NET = ipaddress.ip_network
UNREACHABLE4 = ipaddress.ip_address("198.51.100.9")
UNREACHABLE6 = ipaddress.ip_address("2001:db8:ffff::9")


def host_routes(count: int, next_hop: ipaddress.IPv4Address) -> list[Route]:
    base = int(ipaddress.IPv4Address("10.64.0.0"))
    return [Route(NET(ipaddress.IPv4Address(base + i)), next_hop) for i in range(count)]


def test_an_unreachable_next_hop_fails_only_its_prefix(
    netns: Netns, caplog: pytest.LogCaptureFixture
) -> None:
    good = [*host_routes(50, HOP4), Route(NET("2001:db8:100::1/128"), HOP6)]
    bad = [
        Route(NET("10.100.100.50/32"), UNREACHABLE4),
        Route(NET("2001:db8:100::50/128"), UNREACHABLE6),
    ]
    with NetlinkDataplane(table=254, protocol=201, netns=netns.name) as dp:
        result = dp.apply(good[:25] + bad[:1] + good[25:] + bad[1:], [])
    assert result.replaced == len(good)
    assert set(result.failed) == {r.prefix for r in bad}
    text4 = result.failed[NET("10.100.100.50/32")]
    assert text4.startswith("10.100.100.50/32 via 198.51.100.9: ENETUNREACH")
    text6 = result.failed[NET("2001:db8:100::50/128")]
    assert text6.startswith("2001:db8:100::50/128 via 2001:db8:ffff::9: E")
    assert netns.route_map("proto", "201") == {r.prefix: r.next_hop for r in good}
    assert text4 in caplog.text


def test_ten_thousand_routes_install_exactly(netns: Netns) -> None:
    routes = host_routes(10_000, HOP4)
    with NetlinkDataplane(table=254, protocol=201, netns=netns.name) as dp:
        result = dp.apply(routes, [])
        assert (result.replaced, result.failed) == (10_000, {})
        listed = netns.ip("route", "show", "proto", "201").splitlines()
        assert len(listed) == 10_000
        assert by_prefix(dp.dump()) == {r.prefix: r.next_hop for r in routes}
        result = dp.apply([], [r.prefix for r in routes[::2]])
        assert result.deleted == 5_000
        assert len(netns.ip("route", "show", "proto", "201").splitlines()) == 5_000


def test_lost_acknowledgements_are_checked_not_trusted(
    netns: Netns, caplog: pytest.LogCaptureFixture
) -> None:
    """A tiny receive buffer overflows with error acks (ENOBUFS): a dump decides."""
    good = host_routes(300, HOP4)
    bad = [Route(NET(f"10.100.101.{i}/32"), UNREACHABLE4) for i in range(200)]
    with NetlinkDataplane(
        table=254, protocol=201, netns=netns.name, chunk=600, bufsize=16_384
    ) as dp:
        with caplog.at_level(logging.WARNING):
            result = dp.apply(bad + good, [])
        assert "acknowledgements lost" in caplog.text
        assert result.replaced == len(good)
        assert set(result.failed) == {r.prefix for r in bad}
        assert by_prefix(dp.dump()) == {r.prefix: r.next_hop for r in good}
    assert len(netns.ip("route", "show", "proto", "201").splitlines()) == len(good)
