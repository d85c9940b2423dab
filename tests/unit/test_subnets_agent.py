"""Subnets behind clients through the agent loop (hooks, polls, bus, fake kernels)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from meshroute.core.local import Session
from meshroute.openvpn.events import HookEvent
from tests.unit.test_agent import Cluster, hop

SITE = ipaddress.ip_network("192.168.50.0/24")
OUTSIDE = ipaddress.ip_network("172.16.0.0/24")
ROUTER = ipaddress.ip_address("10.100.1.9")
ROUTED = (ipaddress.ip_network("192.168.0.0/16"),)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    yield c
    for node in c.nodes:
        node.stop()


def learn(node, subnet, cn: str = "site1", op: str = "add") -> None:
    now_ms = node.cluster.clock.wall_ms()
    name = None if op == "delete" else cn
    node.agent.on_hook(
        HookEvent("learn-address", op, None, None, name, None, now_ms, now_ms, subnet=subnet)
    )


def test_a_learned_subnet_is_routed_elsewhere_and_one_outside_never(cluster: Cluster) -> None:
    a = cluster.add("a", routed_networks=ROUTED).start()
    b = cluster.add("b", routed_networks=ROUTED).start()
    a.connect(ROUTER, "site1")
    learn(a, SITE)
    learn(a, OUTSIDE)
    cluster.until(lambda: b.dataplane.owned.get(SITE) == hop(1), within=1)
    assert OUTSIDE not in b.dataplane.owned and OUTSIDE not in a.dataplane.owned
    assert a.agent.stats.ignored_local == 1  # ours, refused before it was announced
    assert SITE not in a.dataplane.owned  # our own site: OpenVPN's route serves it
    learn(a, SITE, op="delete")
    cluster.until(lambda: SITE not in b.dataplane.owned, within=1)


def test_the_status_poll_finds_a_subnet_and_it_follows_its_router(cluster: Cluster) -> None:
    a = cluster.add("a", routed_networks=ROUTED).start()
    b = cluster.add("b", routed_networks=ROUTED).start()
    since = cluster.clock.wall_ms() // 1000
    a.sessions += [Session(ROUTER, "site1", since), Session(SITE, "site1", since)]
    cluster.until(lambda: b.dataplane.owned.get(SITE) == hop(1), within=1)
    cluster.advance(1.0)
    b.connect(ROUTER, "site1")  # the router moved: b's OpenVPN learns its iroute
    learn(b, SITE)
    a.sessions.clear()
    cluster.until(lambda: a.dataplane.owned.get(SITE) == hop(2), within=2)
    cluster.until(lambda: SITE not in b.dataplane.owned, within=2)


def test_without_routed_networks_nothing_changes(cluster: Cluster) -> None:
    a, b = cluster.add("a").start(), cluster.add("b").start()
    a.connect(ROUTER, "site1")
    learn(a, SITE)
    cluster.until(lambda: ipaddress.ip_network(ROUTER) in b.dataplane.owned, within=1)
    cluster.advance(0.5)
    assert set(b.dataplane.owned) == {ipaddress.ip_network(ROUTER)}
    assert a.agent.stats.ignored_local == 1
