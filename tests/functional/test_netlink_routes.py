"""NetlinkDataplane against the real kernel: install, replace, delete, IPv4 and IPv6.

The kernel's view is read back with iproute2 (an independent observer), not only with
the dataplane's own dump.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from meshroute.core.model import Route
from meshroute.dataplane.netlink import NetlinkDataplane
from tests.fakes import by_prefix
from tests.functional.conftest import HOP4, HOP6, Netns

pytestmark = pytest.mark.functional

NET = ipaddress.ip_network
OURS = ("proto", "201", "table", "main")


@pytest.fixture
def dataplane(netns: Netns) -> Iterator[NetlinkDataplane]:
    with NetlinkDataplane(table=254, protocol=201, netns=netns.name) as dp:
        yield dp


def test_install_replace_delete_ipv4_and_ipv6(netns: Netns, dataplane: NetlinkDataplane) -> None:
    v4, v6 = NET("10.100.100.7/32"), NET("2001:db8:100::7/128")
    result = dataplane.apply([Route(v4, HOP4), Route(v6, HOP6)], [])
    assert (result.replaced, result.ok) == (2, True)
    assert netns.route_map(*OURS) == {v4: HOP4, v6: HOP6}

    other4, other6 = ipaddress.ip_address("192.0.2.3"), ipaddress.ip_address("2001:db8::3")
    result = dataplane.apply([Route(v4, other4), Route(v6, other6)], [])
    assert (result.replaced, result.ok) == (2, True)
    assert netns.route_map(*OURS) == {v4: other4, v6: other6}
    assert by_prefix(dataplane.dump()) == {v4: other4, v6: other6}

    result = dataplane.apply([], [v4, v6])
    assert (result.deleted, result.ok) == (2, True)
    assert netns.routes(*OURS) == []
    assert by_prefix(dataplane.dump()) == {}


def test_routes_named_by_key_install_as_host_prefixes(
    netns: Netns, dataplane: NetlinkDataplane
) -> None:
    """Plan.routes() hands a host route over as its address (a subnet as itself)."""
    v4, v6 = ipaddress.ip_address("10.100.100.17"), ipaddress.ip_address("2001:db8:100::17")
    site = NET("10.100.120.0/24")
    result = dataplane.apply([Route(v4, HOP4), Route(v6, HOP6), Route(site, HOP4)], [])
    assert (result.replaced, result.ok) == (3, True)
    assert netns.route_map(*OURS) == {NET(f"{v4}/32"): HOP4, NET(f"{v6}/128"): HOP6, site: HOP4}
    assert dataplane.dump() == {v4: HOP4, v6: HOP6, site: HOP4}
    unreachable = ipaddress.ip_address("198.51.100.9")  # no route to it
    failed = dataplane.apply([Route(v4, unreachable)], []).failed
    assert list(failed) == [NET(f"{v4}/32")]  # failures are named by prefix
    result = dataplane.apply([], [v4, v6, site])
    assert (result.deleted, result.ok) == (3, True)
    assert netns.routes(*OURS) == []


def test_replace_is_idempotent(netns: Netns, dataplane: NetlinkDataplane) -> None:
    routes = [Route(NET("10.100.100.8/32"), HOP4), Route(NET("2001:db8:100::8/128"), HOP6)]
    dataplane.apply(routes, [])
    before = netns.routes(*OURS)
    for _ in range(2):
        assert dataplane.apply(routes, []).ok
    assert netns.routes(*OURS) == before
    assert len(before) == 2


def test_deleting_a_missing_route_is_success(netns: Netns, dataplane: NetlinkDataplane) -> None:
    result = dataplane.apply([], [NET("10.100.100.9/32"), NET("2001:db8:100::9/128")])
    assert (result.deleted, result.failed) == (2, {})
    assert netns.routes(*OURS) == []


def test_routes_marked_with_our_protocol(netns: Netns, dataplane: NetlinkDataplane) -> None:
    dataplane.apply([Route(NET("10.100.100.10/32"), HOP4)], [])
    [route] = netns.routes("10.100.100.10/32", family="-4")
    assert route["protocol"] == "201"  # no rt_protos.d entry inside the test
    assert "metric" not in route  # the kernel default (0), like an ip route add


def test_a_table_above_255_and_not_yet_existing(netns: Netns) -> None:
    with NetlinkDataplane(table=1000, protocol=201, netns=netns.name) as dp:
        assert by_prefix(dp.dump()) == {}  # the kernel answers ENOENT: the table does not exist yet
        assert dp.apply([Route(NET("10.100.100.11/32"), HOP4)], []).ok
        assert netns.route_map("table", "1000") == {NET("10.100.100.11/32"): HOP4}
        assert by_prefix(dp.dump()) == {NET("10.100.100.11/32"): HOP4}
    assert netns.routes(*OURS) == []


def test_unknown_netns_is_a_clear_error() -> None:
    with pytest.raises(OSError, match="mrt-dp-does-not-exist"):
        NetlinkDataplane(table=254, protocol=201, netns="mrt-dp-does-not-exist")


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 256])
def test_reserved_protocols_are_refused(protocol: int) -> None:
    with pytest.raises(ValueError, match="reserved"):
        NetlinkDataplane(table=254, protocol=protocol)


def test_default_route_is_refused(netns: Netns, dataplane: NetlinkDataplane) -> None:
    result = dataplane.apply([Route(NET("0.0.0.0/0"), HOP4)], [])
    assert "default route" in result.failed[NET("0.0.0.0/0")]
    assert netns.routes("default") == []


def test_an_ipv4_prefix_via_an_ipv6_next_hop(netns: Netns, dataplane: NetlinkDataplane) -> None:
    """RFC 5549 (RTA_VIA): a backbone that is IPv6 only can still carry IPv4 clients."""
    prefix = NET("10.100.100.60/32")
    assert dataplane.apply([Route(prefix, HOP6)], []).ok
    [route] = netns.routes("10.100.100.60/32", family="-4")
    assert route["via"] == {"family": "inet6", "host": str(HOP6)}
    assert by_prefix(dataplane.dump()) == {prefix: HOP6}


def test_subnet_routes_next_to_host_routes(netns: Netns, dataplane: NetlinkDataplane) -> None:
    """Subnets behind clients (iroute, issue 10): a /24 and a /64 installed beside a
    host route inside them, dumped by prefix, and removed, leaving the host route."""
    site, site6 = NET("192.168.50.0/24"), NET("2001:db8:50::/64")
    host, wider = NET("192.168.50.7/32"), NET("192.168.0.0/16")
    routes = [Route(site, HOP4), Route(site6, HOP6), Route(host, HOP4), Route(wider, HOP4)]
    assert dataplane.apply(routes, []).ok
    assert netns.route_map(*OURS) == {site: HOP4, site6: HOP6, host: HOP4, wider: HOP4}
    assert by_prefix(dataplane.dump()) == {site: HOP4, site6: HOP6, host: HOP4, wider: HOP4}
    result = dataplane.apply([], [site, site6])
    assert (result.deleted, result.ok) == (2, True)
    assert netns.route_map(*OURS) == {host: HOP4, wider: HOP4}
    assert by_prefix(dataplane.dump()) == {host: HOP4, wider: HOP4}
