"""The fake dataplane keeps the Dataplane contract the real one keeps."""

from __future__ import annotations

import ipaddress

import pytest

from meshroute.core.model import Route
from meshroute.dataplane.fake import FakeDataplane, ForeignRoute
from tests.fakes import by_prefix

NET = ipaddress.ip_network
ADDR = ipaddress.ip_address
HOP_A, HOP_B = ADDR("192.0.2.2"), ADDR("192.0.2.3")


def route(prefix: str, next_hop: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Route:
    return Route(NET(prefix), next_hop)


def test_replace_and_delete_change_owned_routes() -> None:
    dp = FakeDataplane()
    result = dp.apply([route("10.0.0.1/32", HOP_A), route("2001:db8:1::1/128", ADDR("::2"))], [])
    assert (result.replaced, result.deleted, result.ok) == (2, 0, True)
    result = dp.apply([route("10.0.0.1/32", HOP_B)], [NET("2001:db8:1::1/128")])
    assert by_prefix(dp.dump()) == {NET("10.0.0.1/32"): HOP_B}
    assert (result.replaced, result.deleted) == (1, 1)
    assert dp.changes == 4


def test_identical_replace_and_missing_delete_succeed_without_change() -> None:
    dp = FakeDataplane(owned={NET("10.0.0.1/32"): HOP_A})
    result = dp.apply([route("10.0.0.1/32", HOP_A)], [NET("10.0.0.9/32")])
    assert (result.replaced, result.deleted, result.ok) == (1, 1, True)
    assert dp.changes == 0
    assert len(dp.replace_requests) == 1
    assert dp.delete_requests == [NET("10.0.0.9/32")]


def test_failing_prefix_fails_alone_until_cleared() -> None:
    dp = FakeDataplane()
    dp.fail_prefix(NET("10.0.0.2/32"), "ENETUNREACH")
    result = dp.apply([route("10.0.0.1/32", HOP_A), route("10.0.0.2/32", HOP_A)], [])
    assert result.failed == {NET("10.0.0.2/32"): "10.0.0.2/32 via 192.0.2.2: ENETUNREACH"}
    assert by_prefix(dp.dump()) == {NET("10.0.0.1/32"): HOP_A}
    dp.clear_failures()
    assert dp.apply([route("10.0.0.2/32", HOP_A)], []).ok
    assert NET("10.0.0.2/32") in by_prefix(dp.dump())


def test_failing_next_hop_fails_every_route_via_it() -> None:
    dp = FakeDataplane()
    dp.fail_next_hop(HOP_B)
    result = dp.apply([route("10.0.0.1/32", HOP_A), route("10.0.0.2/32", HOP_B)], [])
    assert list(result.failed) == [NET("10.0.0.2/32")]
    assert result.replaced == 1


def test_fail_next_dump_and_apply_raise_once() -> None:
    dp = FakeDataplane(owned={NET("10.0.0.1/32"): HOP_A})
    dp.fail_next_dump(OSError("ENOBUFS"))
    with pytest.raises(OSError, match="ENOBUFS"):
        by_prefix(dp.dump())
    assert by_prefix(dp.dump()) == {NET("10.0.0.1/32"): HOP_A}
    dp.fail_next_apply(TimeoutError("netlink"))
    with pytest.raises(TimeoutError):
        dp.apply([], [NET("10.0.0.1/32")])
    assert by_prefix(dp.dump()) == {NET("10.0.0.1/32"): HOP_A}
    assert (dp.dump_calls, dp.apply_calls) == (3, 1)


def test_foreign_routes_are_never_touched_and_block_a_new_prefix() -> None:
    foreign = [
        ForeignRoute(NET("10.0.0.5/32"), HOP_B, protocol=3, table=254),
        ForeignRoute(NET("10.0.0.6/32"), HOP_B, protocol=4, table=254, metric=50),
        ForeignRoute(NET("10.0.0.7/32"), HOP_B, protocol=201, table=100),
    ]
    dp = FakeDataplane(foreign=foreign)
    replace = [route(p, HOP_A) for p in ("10.0.0.5/32", "10.0.0.6/32", "10.0.0.7/32")]
    result = dp.apply(replace, [NET("10.0.0.5/32")])
    assert list(result.failed) == [NET("10.0.0.5/32")]
    assert "EEXIST" in result.failed[NET("10.0.0.5/32")]
    assert by_prefix(dp.dump()) == {NET("10.0.0.6/32"): HOP_A, NET("10.0.0.7/32"): HOP_A}
    assert dp.foreign == foreign


def test_delete_by_hand_is_drift_the_next_dump_shows() -> None:
    dp = FakeDataplane(owned={NET("10.0.0.1/32"): HOP_A, NET("10.0.0.2/32"): HOP_A})
    dp.delete_by_hand(NET("10.0.0.1/32"))
    assert by_prefix(dp.dump()) == {NET("10.0.0.2/32"): HOP_A}
    assert dp.changes == 0


def test_default_route_is_refused() -> None:
    dp = FakeDataplane()
    result = dp.apply([route("0.0.0.0/0", HOP_A)], [])
    assert "default route" in result.failed[NET("0.0.0.0/0")]
    assert by_prefix(dp.dump()) == {}


def test_reset_counters_and_close() -> None:
    dp = FakeDataplane()
    dp.apply([route("10.0.0.1/32", HOP_A)], [])
    dp.reset_counters()
    assert (dp.changes, dp.apply_calls, dp.replace_requests) == (0, 0, [])
    dp.close()
    assert dp.closed
