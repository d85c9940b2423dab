"""Sites behind clients in the lab (issue 10): ``lab up --sites 2``.

c1 (on s1) and c2 (on s2) are site routers with hosts h1 and h2 behind them; c3 is
on s3. A host behind a site router pings a client on another server and the host
behind the other site, over IPv4 and IPv6; the router moves and the pings recover;
no subnet route outside the lab's routed networks is ever installed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from meshroute.lab import observe
from meshroute.lab.sites import SITES4, SITES6, site_plans
from tests.e2e.labkit import RunningLab, running_lab

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sites_lab() -> Iterator[RunningLab]:
    with running_lab("s", servers=3, clients=3, sites=2) as running:
        yield running


def pings(lab: RunningLab, source: str, targets: list[str]) -> list[str]:
    """Failed pings (both families) from node ``source`` to each target node."""
    plan = lab.lab.plan()
    nodes = {n.name: n for n in [*plan.clients, *site_plans(plan)]}
    failed = []
    for target in targets:
        for address in (nodes[target].address, nodes[target].address6):
            ok, _ = observe.ping_once(nodes[source].netns, str(address), timeout_s=2)
            if not ok:
                failed.append(f"{source} -> {target} ({address})")
    return failed


def subnet_routes_outside_routed_networks(lab: RunningLab) -> list[str]:
    wrong = []
    for server in lab.lab.plan().servers:
        for dst, via in observe.kernel_routes(server.netns):
            routed = [n for n in (SITES4, SITES6) if n.version == dst.version]
            if dst.prefixlen < dst.max_prefixlen and not any(dst.subnet_of(n) for n in routed):
                wrong.append(f"{server.name}: {dst} via {via}")
    return wrong


def test_a_site_host_reaches_a_client_and_another_site_and_follows_its_router(
    sites_lab: RunningLab,
) -> None:
    sites_lab.assert_converged()
    homes = sites_lab.lab.state().client_server
    assert (homes["c1"], homes["c2"], homes["c3"]) == ("s1", "s2", "s3")
    assert sites_lab.route_problems() == []
    assert pings(sites_lab, "h1", ["c3", "h2"]) == []
    assert pings(sites_lab, "c3", ["h1", "h2"]) == []

    sites_lab.cli("move", "c1", "s2")  # returns once every agent routes c1 to s2
    sites_lab.assert_converged()
    s3_routes = observe.kernel_routes(sites_lab.lab.plan().server("s3").netns)
    s2 = sites_lab.lab.plan().server("s2")
    assert (ipaddress.ip_network("192.168.1.0/24"), s2.backbone) in s3_routes
    assert sites_lab.route_problems() == []
    assert pings(sites_lab, "h1", ["c3", "h2"]) == []
    assert pings(sites_lab, "h2", ["h1"]) == []
    assert subnet_routes_outside_routed_networks(sites_lab) == []
