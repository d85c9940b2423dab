"""Ownership against the real kernel: foreign routes survive, drift is repaired.

DESIGN.md rule 4: only routes with our protocol in our table are listed, changed or
deleted. Rule 8: a full resync (desired -> dump -> diff -> apply) repairs drift.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping

import pytest

from meshroute.core.model import Address, Network, Route
from meshroute.dataplane.netlink import NetlinkDataplane
from tests.fakes import by_prefix
from tests.functional.conftest import HOP4, HOP6, Netns

pytestmark = pytest.mark.functional

NET = ipaddress.ip_network
OTHER_HOP = ipaddress.ip_address("192.0.2.3")


@pytest.fixture
def dataplane(netns: Netns) -> Iterator[NetlinkDataplane]:
    with NetlinkDataplane(table=254, protocol=201, netns=netns.name) as dp:
        yield dp


def diff(
    desired: Mapping[Network, Address], kernel: Mapping[Network, Address]
) -> tuple[list[Route], list[Network]]:
    """A local stand-in for meshroute.core.reconcile: what to replace and what to delete."""
    replace = [Route(p, hop) for p, hop in desired.items() if kernel.get(p) != hop]
    return replace, [p for p in kernel if p not in desired]


def resync(dp: NetlinkDataplane, desired: Mapping[Network, Address]) -> None:
    replace, delete = diff(desired, by_prefix(dp.dump()))
    result = dp.apply(replace, delete)
    assert result.ok, result.failed


def add_foreign_routes(netns: Netns) -> list[dict[str, object]]:
    """Routes meshroute must never touch, several on the very prefix it owns."""
    prefix = "10.100.100.20/32"
    netns.ip("route", "add", prefix, "via", str(OTHER_HOP), "metric", "50")  # by hand: boot
    netns.ip("route", "add", prefix, "via", str(OTHER_HOP), "proto", "static", "metric", "60")
    netns.ip("route", "add", prefix, "via", str(OTHER_HOP), "proto", "201", "table", "100")
    netns.ip("route", "add", prefix, "via", str(OTHER_HOP), "table", "101")
    netns.ip("route", "add", "10.100.100.21/32", "via", str(OTHER_HOP), "proto", "static")
    netns.ip(
        "-6",
        "route",
        "add",
        "2001:db8:100::20/128",
        "via",
        "2001:db8::3",
        "proto",
        "static",
        "metric",
        "60",
    )
    netns.ip("-6", "route", "add", "2001:db8:100::20/128", "via", "2001:db8::3", "table", "100")
    return everything(netns)


def everything(netns: Netns) -> list[dict[str, object]]:
    return netns.routes("table", "all")


def test_foreign_routes_survive_a_full_resync(netns: Netns, dataplane: NetlinkDataplane) -> None:
    add_foreign_routes(netns)
    ours = {NET("10.100.100.20/32"): HOP4, NET("2001:db8:100::20/128"): HOP6}
    resync(dataplane, ours)  # ours sit beside the foreign ones (other metric or table)
    assert by_prefix(dataplane.dump()) == ours
    with_ours = everything(netns)

    resync(dataplane, {})  # withdraw everything we own
    assert by_prefix(dataplane.dump()) == {}
    assert netns.routes("proto", "201", "table", "main") == []
    without_ours = [r for r in with_ours if (r.get("protocol"), r.get("table")) != ("201", None)]
    assert everything(netns) == without_ours
    assert len(without_ours) == len(with_ours) - 2


def test_deletes_of_foreign_prefixes_touch_nothing(
    netns: Netns, dataplane: NetlinkDataplane
) -> None:
    before = add_foreign_routes(netns)
    foreign = [NET("10.100.100.20/32"), NET("10.100.100.21/32"), NET("2001:db8:100::20/128")]
    result = dataplane.apply([], foreign)
    assert result.ok  # the kernel finds none of ours (ESRCH): success, nothing removed
    assert everything(netns) == before


def test_a_hand_route_in_the_same_slot_is_not_overwritten(
    netns: Netns, dataplane: NetlinkDataplane
) -> None:
    netns.ip("route", "add", "10.100.100.22/32", "via", str(OTHER_HOP))  # same table+metric
    before = everything(netns)
    blocked, fine = NET("10.100.100.22/32"), NET("10.100.100.23/32")
    result = dataplane.apply([Route(blocked, HOP4), Route(fine, HOP4)], [])
    assert list(result.failed) == [blocked]
    assert "EEXIST" in result.failed[blocked]
    assert "not ours" in result.failed[blocked]
    assert netns.route_map("10.100.100.22/32", family="-4") == {blocked: OTHER_HOP}
    assert [r for r in everything(netns) if r["dst"] != "10.100.100.23"] == before
    assert by_prefix(dataplane.dump()) == {fine: HOP4}


def test_a_hand_deleted_route_comes_back_on_resync(
    netns: Netns, dataplane: NetlinkDataplane
) -> None:
    desired = {NET(f"10.100.100.{i}/32"): HOP4 for i in range(30, 35)}
    desired[NET("2001:db8:100::30/128")] = HOP6
    resync(dataplane, desired)
    netns.ip("route", "del", "10.100.100.32/32", "proto", "201")
    netns.ip("-6", "route", "del", "2001:db8:100::30/128", "proto", "201")

    kernel = by_prefix(dataplane.dump())
    replace, delete = diff(desired, kernel)
    assert {r.prefix for r in replace} == {NET("10.100.100.32/32"), NET("2001:db8:100::30/128")}
    assert delete == []
    assert dataplane.apply(replace, delete).replaced == 2
    assert netns.route_map("proto", "201") == desired


def test_a_route_added_with_our_protocol_is_adopted(
    netns: Netns, dataplane: NetlinkDataplane
) -> None:
    """After a restart, routes left by the previous run are ours: listed, then replaced."""
    netns.ip("route", "add", "10.100.100.40/32", "via", str(OTHER_HOP), "proto", "201")
    assert by_prefix(dataplane.dump()) == {NET("10.100.100.40/32"): OTHER_HOP}
    resync(dataplane, {NET("10.100.100.40/32"): HOP4})
    assert netns.route_map("proto", "201") == {NET("10.100.100.40/32"): HOP4}


def test_an_owned_route_without_a_gateway_is_dumped_as_unspecified(
    netns: Netns, dataplane: NetlinkDataplane
) -> None:
    netns.ip("route", "add", "10.100.100.41/32", "dev", "v0", "proto", "201")
    prefix = NET("10.100.100.41/32")
    assert by_prefix(dataplane.dump()) == {prefix: ipaddress.IPv4Address(0)}
    resync(dataplane, {prefix: HOP4})
    assert netns.route_map("proto", "201") == {prefix: HOP4}


def test_an_ipv6_host_is_not_owned_because_an_ipv4_host_with_its_number_is(
    netns: Netns, dataplane: NetlinkDataplane
) -> None:
    """The owned set names an IPv4 host by its integer; ::a40:1 has the same number as
    10.64.0.1 and must still be added exclusively (a hand route holds it)."""
    ours = ipaddress.IPv4Address("10.64.0.1")
    twin = ipaddress.IPv6Address(int(ours))
    netns.ip("-6", "route", "add", f"{twin}/128", "via", "2001:db8::3")  # by hand: boot
    assert dataplane.apply([Route(ours, HOP4)], []).ok
    result = dataplane.apply([Route(twin, HOP6)], [])
    assert "EEXIST" in result.failed[NET(f"{twin}/128")]
    assert "via 2001:db8::3" in netns.ip("-6", "route", "show", f"{twin}/128")
