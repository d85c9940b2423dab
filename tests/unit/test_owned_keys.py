"""OwnedKeys answers exactly as a set of the same keys would (IPv4 hosts are kept as
bits of per-/24 masks; IPv6 hosts and subnets in a set)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from meshroute.core.model import RouteKey
from meshroute.dataplane.owned import OwnedKeys

# A few /24s and their edges (.0, .255), IPv6 hosts whose numbers equal IPv4 ones,
# and subnets: everything the owned set must tell apart.
v4 = st.integers(0, 3).flatmap(
    lambda block: st.integers(0, 255).map(
        lambda low: ipaddress.IPv4Address(0x0A400000 + (block << 8) + low)
    )
)
v6 = v4.map(lambda a: ipaddress.IPv6Address(int(a)))
nets = st.sampled_from(
    [ipaddress.ip_network("10.64.0.0/24"), ipaddress.ip_network("2001:db8::/64")]
)
keys: st.SearchStrategy[RouteKey] = st.one_of(v4, v6, nets)
ops = st.lists(st.tuples(st.sampled_from(["add", "discard", "reset"]), st.lists(keys, max_size=5)))


@given(st.lists(keys), ops, st.lists(keys, max_size=20))
def test_membership_is_a_sets(start: list[RouteKey], steps, probes: list[RouteKey]) -> None:
    owned, reference = OwnedKeys(start), set(start)
    for op, some in steps:
        if op == "reset":
            owned.replace_all(some)
            reference = set(some)
        for key in some if op != "reset" else ():
            getattr(owned, op)(key)
            getattr(reference, op)(key)
        for key in [*some, *probes]:
            assert (key in owned) == (key in reference), key
    assert len(owned) == len(reference)


def test_an_ipv6_twin_of_an_owned_ipv4_host_is_not_owned() -> None:
    ours = ipaddress.IPv4Address("10.64.0.1")
    owned = OwnedKeys([ours])
    assert ours in owned
    assert ipaddress.IPv6Address(int(ours)) not in owned
    assert ipaddress.ip_network("10.64.0.1/32") not in owned  # callers pass keys, not /32s


def test_a_block_emptied_is_forgotten() -> None:
    owned = OwnedKeys([ipaddress.IPv4Address("10.64.0.255"), ipaddress.IPv4Address("10.64.1.0")])
    owned.discard(ipaddress.IPv4Address("10.64.0.255"))
    owned.discard(ipaddress.IPv4Address("10.64.0.7"))  # never there: no error
    assert len(owned) == 1 and len(owned._blocks) == 1
