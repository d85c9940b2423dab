"""The plan of route changes: host routes named by address, prefixes at the dataplane edge."""

from __future__ import annotations

import ipaddress

from meshroute.core.model import Route, key_parts
from meshroute.core.reconcile import KernelMirror, Plan, diff
from meshroute.dataplane.fake import FakeDataplane

A = ipaddress.ip_address("10.100.0.5")
B = ipaddress.ip_address("10.100.0.6")
C = ipaddress.ip_address("10.100.0.7")
V6 = ipaddress.ip_address("fd10::5")
HOP_X = ipaddress.ip_address("10.200.0.2")
HOP_Y = ipaddress.ip_address("10.200.0.3")
HOP_X6 = ipaddress.ip_address("fd20::2")
STRAY = ipaddress.ip_network("10.100.1.0/24")  # owned, not a route anyone claims


def net(address) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(address)


def test_full_plan_from_a_dump_replaces_and_deletes_what_nobody_wants():
    kernel = {net(A): HOP_X, net(B): HOP_X, net(C): HOP_X, STRAY: HOP_X}
    desired = {A: HOP_X, B: HOP_Y, V6: HOP_X6}
    sync = KernelMirror()
    plan = sync.plan_full(kernel, desired)
    assert dict(plan.replace) == {B: HOP_Y, V6: HOP_X6}
    assert set(plan.delete) == {C, STRAY}
    # handed over by key: a host's address, a subnet's network (no /32 objects built)
    assert set(plan.routes()) == {Route(B, HOP_Y), Route(V6, HOP_X6)}
    assert sorted(map(str, plan.deletes())) == ["10.100.0.7", "10.100.1.0/24"]
    assert sync.installed == {A: HOP_X, B: HOP_X, C: HOP_X, STRAY: HOP_X}
    assert not sync.full_resync_needed
    assert plan.summary() == "2 to add or change, 2 to delete"


def test_no_deletes_while_deletes_are_held_back():
    sync = KernelMirror()
    plan = sync.plan_full({net(C): HOP_X, STRAY: HOP_X}, {A: HOP_X}, allow_delete=False)
    assert dict(plan.replace) == {A: HOP_X}
    assert plan.delete == () and plan.deletes() == []


def test_record_keeps_only_what_succeeded():
    sync = KernelMirror()
    plan = sync.plan_full({net(C): HOP_X, net(B): HOP_X, STRAY: HOP_X}, {A: HOP_X, V6: HOP_X6})
    failed = {net(V6): "ENETUNREACH", net(C): "EPERM", STRAY: "EPERM"}
    sync.record(plan, failed)
    # V6 absent, C and STRAY still there, B gone
    assert sync.installed == {A: HOP_X, C: HOP_X, STRAY: HOP_X}
    sync.record(plan, {})
    assert sync.installed == {A: HOP_X, V6: HOP_X6}


def test_some_plan_looks_only_at_the_given_addresses():
    sync = KernelMirror()
    sync.plan_full({net(A): HOP_X, net(B): HOP_X}, {A: HOP_X, B: HOP_X})
    plan = sync.plan_some([A, C], {C: HOP_Y})
    assert dict(plan.replace) == {C: HOP_Y} and plan.delete == (A,)
    assert not sync.plan_some([B], {B: HOP_X})
    assert sync.plan_some([A], {}, allow_delete=False).delete == ()


def test_round_trip_through_the_dataplane_converges():
    """A plan applied by the (prefix-speaking) dataplane leaves nothing to do."""
    dataplane = FakeDataplane({net(C): HOP_X, STRAY: HOP_Y})
    desired = {A: HOP_X, B: HOP_Y, V6: HOP_X6}
    sync = KernelMirror()
    plan = sync.plan_full(dataplane.dump(), desired)
    sync.record(plan, dataplane.apply(plan.routes(), plan.deletes()).failed)
    assert dataplane.owned == {net(A): HOP_X, net(B): HOP_Y, net(V6): HOP_X6}
    assert sync.installed == desired
    assert not sync.plan_full(dataplane.dump(), desired)
    assert not diff(desired, sync.installed)


def test_an_empty_plan_is_false():
    assert not Plan()
    assert Plan(delete=(STRAY,))


def test_key_parts_names_a_hosts_address_and_a_subnets_network():
    assert key_parts(B) == (B, 32)
    assert key_parts(V6) == (V6, 128)
    assert key_parts(STRAY) == (STRAY.network_address, 24)
