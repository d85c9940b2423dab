"""The lab's sites (``lab up --sites K``): plan, OpenVPN and agent files (pure)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from meshroute.config.schema import load_config
from meshroute.lab.files import AgentTimings, LabPaths, write_agent, write_server
from meshroute.lab.observe import expected_routes
from meshroute.lab.sites import SITES4, SITES6, agent_lines, site_plans
from meshroute.lab.topology import make_plan, owns_namespace
from tests.unit.test_lab_plan import _pki

net = ipaddress.ip_network


def test_sites_are_the_first_clients_with_a_host_namespace_each() -> None:
    plan = make_plan("mr", 3, 4, sites=2)
    sites = site_plans(plan)
    assert [(s.name, s.netns, s.router.name) for s in sites] == [
        ("h1", "mr-h1", "c1"),
        ("h2", "mr-h2", "c2"),
    ]
    assert (sites[0].subnet, sites[0].subnet6) == (net("192.168.1.0/24"), net("fd00:50:0:1::/64"))
    assert str(sites[1].address) == "192.168.2.2" and str(sites[1].gateway6) == "fd00:50:0:2::1"
    assert {"mr-h1", "mr-h2"} <= set(plan.namespaces) and owns_namespace("mr", "mr-h1")
    assert all(s.subnet.subnet_of(SITES4) and s.subnet6.subnet_of(SITES6) for s in sites)
    with pytest.raises(ValueError, match="sites must be"):
        make_plan("mr", 3, 2, sites=3)


def test_every_server_has_the_iroutes_and_the_aggregates(tmp_path: Path) -> None:
    plan = make_plan("mr", 3, 3, sites=1)
    paths = LabPaths(tmp_path / "lab")
    for server in plan.servers:
        write_server(paths, plan, server, _pki(tmp_path, plan), "pw")
        ccd = paths.ccd(server.name)
        assert "iroute 192.168.1.0 255.255.255.0\niroute-ipv6 fd00:50:0:1::/64\n" in (
            (ccd / "c1").read_text()
        )
        assert "iroute" not in (ccd / "c2").read_text()
        conf = paths.openvpn_conf(server.name).read_text().splitlines()
        assert f"route 192.168.0.0 255.255.0.0 {server.pool.pool_start}" in conf
        assert 'push "route-ipv6 fd00:50::/48"' in conf
    plain = make_plan("mr", 1, 1)
    write_server(paths, plain, plain.servers[0], _pki(tmp_path, plain), "pw")
    lines = paths.openvpn_conf("s1").read_text().splitlines()
    assert not [line for line in lines if line.startswith(("route ", "route-ipv6", 'push "route '))]


def test_agents_route_the_sites_and_expect_their_routes(tmp_path: Path) -> None:
    plan = make_plan("mr", 2, 2, sites=1)
    s2 = plan.server("s2")
    paths = LabPaths(tmp_path / "lab")
    path = write_agent(paths, s2, "amqp://s2:x@10.200.200.254:5672/%2F", AgentTimings(),
                       extra=agent_lines(plan))  # fmt: skip
    assert load_config(str(path), {}).config.routed_networks == (SITES4, SITES6)
    wanted = expected_routes(plan, {"c1": "s1", "c2": "s2"})
    s1 = plan.server("s1")
    assert {(net("192.168.1.0/24"), s1.backbone), (net("fd00:50:0:1::/64"), s1.backbone6)} <= (
        wanted["s2"]
    )
    assert not any(dst.prefixlen < 32 for dst, _ in wanted["s1"] if dst.version == 4)
