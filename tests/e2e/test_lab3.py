"""End to end on a 3-server, 6-client lab: real OpenVPN, RabbitMQ, agents, kernels, pings.

Routes are read from each server's kernel with ``ip -j route show proto 201`` and
the data path is tested with real pings between client namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import time

import pytest

from meshroute.lab import observe
from tests.e2e.labkit import RunningLab
from tests.fakes import poll

pytestmark = pytest.mark.e2e

HOLD_TIME = 5.0  # the lab's agents: see meshroute.lab.files.AgentTimings

# Control-plane faults (an agent killed or leaving, the broker down) do not depend on
# how the servers' backbone carries packets: they run on the bridge lab only, which
# saves CI ~35 s; the data path over every backbone is the ping matrix's job.
CONTROL_PLANE_ONLY = pytest.mark.parametrize("lab3", ["bridge"], indirect=True)


def test_full_ping_matrix_over_ipv4_including_cross_server_pairs(lab3: RunningLab) -> None:
    lab3.assert_converged()
    done = lab3.cli("ping", "--json", "--family", "4")
    results = json.loads(done.stdout)
    homes = lab3.lab.state().client_server
    cross = [r for r in results if homes[r["source"]] != homes[r["target"]]]
    assert len(results) == 6 * 5
    assert len(cross) == 24  # 2 clients per server: 6*5 pairs minus 3*2 same-server ones
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]


def test_full_ping_matrix_over_ipv6(lab3: RunningLab) -> None:
    lab3.assert_converged()
    results = json.loads(lab3.cli("ping", "--json", "--family", "6").stdout)
    assert len(results) == 30
    assert all(ipaddress.ip_address(r["address"]).version == 6 for r in results)
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]


def test_routes_exist_only_where_they_should(lab3: RunningLab) -> None:
    lab3.assert_converged()
    plan, homes = lab3.lab.plan(), lab3.lab.state().client_server
    for server in plan.servers:
        routes = observe.kernel_routes(server.netns)
        elsewhere = [c for c in plan.clients if homes[c.name] != server.name]
        # one /32 and one /128 per client on another server, via that server's backbone
        assert len(routes) == 2 * len(elsewhere), (server.name, routes)
        for client in elsewhere:
            owner = plan.server(homes[client.name])
            assert (ipaddress.ip_network(client.address), owner.backbone) in routes
            assert (ipaddress.ip_network(client.address6), owner.backbone6) in routes
    assert lab3.route_problems() == []


def test_status_names_servers_agents_clients_tables_and_logs(lab3: RunningLab) -> None:
    lab3.assert_converged()
    status = json.loads(lab3.cli("status", "--json").stdout)
    assert [s["name"] for s in status["servers"]] == ["s1", "s2", "s3"]
    assert all(s["agent_running"] and s["health"]["ok"] for s in status["servers"])
    assert all(len(s["table"]) == 12 for s in status["servers"])  # 6 clients x 2 families
    homes = lab3.lab.state().client_server
    for client in status["clients"]:
        assert client["server"] == client["routed_to"] == homes[client["name"]]
        assert client["openvpn_running"]
    logs = [s["openvpn_log"] for s in status["servers"]] + [
        s["agent_log"] for s in status["servers"]
    ]
    logs += [c["openvpn_log"] for c in status["clients"]]
    assert all(log.startswith(status["logs"]) for log in logs)
    assert all(
        lab3.lab.paths.logs.joinpath(log.rsplit("/", 1)[1]).stat().st_size > 0 for log in logs
    )
    text = lab3.cli("status").stdout
    assert "table of agent s3" in text and status["logs"] in text


def _converge_after_moves(lab3: RunningLab, moves: list[tuple[str, str]]) -> float:
    """Move quickly (no waiting in between); seconds until pings and routes are right."""
    started = time.monotonic()
    for client, server in moves:
        lab3.cli("move", client, server, "--no-wait")
    poll(lambda: not lab3.failed_pings(), 15, f"the ping matrix after {moves}", step=0.2)
    took = time.monotonic() - started
    assert lab3.lab.state().client_server[moves[-1][0]] == moves[-1][1]
    assert lab3.route_problems() == []
    lab3.assert_converged(5)
    return took


def test_client_moves_twice_quickly_and_no_stale_route_remains(lab3: RunningLab) -> None:
    lab3.assert_converged()
    # c1 (home s1) -> s2 -> s3: stale sessions stay on s1 and s2 (the old clients are
    # killed without an exit notification), yet everyone must route c1 to s3.
    took = _converge_after_moves(lab3, [("c1", "s2"), ("c1", "s3")])
    assert took < 8, f"matrix ok only after {took:.1f}s"
    # c2 (home s2) -> s3 -> back to s2, where its own stale session still is.
    took = _converge_after_moves(lab3, [("c2", "s3"), ("c2", "s2")])
    assert took < 8, f"matrix ok only after {took:.1f}s"


def _routes_via(lab3: RunningLab, server: str) -> dict[str, int]:
    plan = lab3.lab.plan()
    hops = {plan.server(server).backbone, plan.server(server).backbone6}
    return {
        s.name: sum(1 for _, via in observe.kernel_routes(s.netns) if via in hops)
        for s in plan.servers
        if s.name != server
    }


@CONTROL_PLANE_ONLY
def test_killed_agent_is_withdrawn_after_hold_time_and_converges_on_start(
    lab3: RunningLab,
) -> None:
    lab3.assert_converged()
    assert all(_routes_via(lab3, "s2").values())
    killed = time.monotonic()
    lab3.cli("agent", "kill", "s2")
    poll(lambda: not any(_routes_via(lab3, "s2").values()), HOLD_TIME + 5, "withdrawal", 0.1)
    took = time.monotonic() - killed
    # No goodbye after SIGKILL: peers keep the routes for the hold time, then drop them.
    assert HOLD_TIME - 1.2 <= took <= HOLD_TIME + 2, f"withdrawn after {took:.1f}s"
    lab3.cli("agent", "start", "s2")
    lab3.assert_converged(20)
    assert lab3.route_problems() == []
    assert lab3.failed_pings() == []


@CONTROL_PLANE_ONLY
def test_an_agent_that_leaves_says_goodbye_and_peers_withdraw_at_once(lab3: RunningLab) -> None:
    lab3.assert_converged()
    stopped = time.monotonic()
    lab3.cli("agent", "leave", "s3")
    poll(lambda: not any(_routes_via(lab3, "s3").values()), HOLD_TIME, "withdrawal", 0.05)
    assert time.monotonic() - stopped < HOLD_TIME - 1
    lab3.cli("agent", "start", "s3")
    lab3.assert_converged(20)
    assert lab3.failed_pings() == []


def _health(lab3: RunningLab) -> list[dict]:
    return [
        observe.ask(lab3.lab.paths.control_socket(s.name), "health")
        for s in lab3.lab.plan().servers
    ]


@CONTROL_PLANE_ONLY
def test_broker_outage_removes_no_route_and_matrix_recovers(lab3: RunningLab) -> None:
    lab3.assert_converged()
    plan = lab3.lab.plan()
    before = {s.name: observe.kernel_routes(s.netns) for s in plan.servers}
    lab3.cli("broker", "stop")
    try:
        poll(lambda: not any(h["broker_connected"] for h in _health(lab3)), 10, "agents cut off")
        outage_end = time.monotonic() + HOLD_TIME + 3  # well past every hold timer
        checks = 0
        while time.monotonic() < outage_end:
            now = {s.name: observe.kernel_routes(s.netns) for s in plan.servers}
            assert now == before, "a route changed while the broker was down"
            checks += 1
            time.sleep(0.2)
        assert checks > 20
        assert lab3.failed_pings() == []  # the data path never needed the broker
    finally:
        lab3.cli("broker", "start")
    lab3.assert_converged(30)
    assert lab3.failed_pings() == []
    assert lab3.route_problems() == []
