"""The lab's address plan and config files (pure: no root, no namespace)."""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path

import pytest

from meshroute.config.schema import load_config
from meshroute.lab import topology as topo
from meshroute.lab.files import AgentTimings, LabPaths, write_agent, write_client, write_server
from meshroute.lab.observe import expected_routes
from meshroute.lab.pki import CertKey, Pki
from meshroute.lab.topology import make_plan, node_netns, owns_namespace, veth_names


def test_names_namespaces_and_round_robin_homes() -> None:
    plan = make_plan("mr", 3, 6)
    assert plan.server_names == ("s1", "s2", "s3")
    assert [c.home for c in plan.clients] == ["s1", "s2", "s3", "s1", "s2", "s3"]
    assert plan.namespaces[:2] == ("mr-net", "mr-broker")
    assert set(plan.namespaces[2:]) == {"mr-s1", "mr-s2", "mr-s3"} | {
        f"mr-c{j}" for j in range(1, 7)
    }
    assert plan.server("s2").tun == ipaddress.IPv4Address("10.100.100.2")
    assert plan.server("s2").backbone6 == ipaddress.IPv6Address("fd00:200::2")
    assert plan.client("c1").address == ipaddress.IPv4Address("10.100.100.65")
    assert plan.client("c1").address6 == ipaddress.IPv6Address("fd00:100::41")
    with pytest.raises(KeyError, match="no server 's9'"):
        plan.server("s9")


@pytest.mark.parametrize("servers", [1, 2, 3, 5, 8, topo.MAX_SERVERS])
def test_every_address_unique_in_its_network_and_clients_outside_all_pools(servers: int) -> None:
    plan = make_plan("mr", servers, topo.MAX_CLIENTS)
    pools = [range(int(s.pool.pool_start), int(s.pool.pool_end) + 1) for s in plan.servers]
    for a, b in itertools.combinations(pools, 2):
        assert not set(a) & set(b)  # disjoint dynamic pools
    vpn4 = [s.tun for s in plan.servers] + [c.address for c in plan.clients]
    vpn6 = [s.tun6 for s in plan.servers] + [c.address6 for c in plan.clients]
    underlay = [s.underlay for s in plan.servers] + [c.underlay for c in plan.clients]
    backbone = [s.backbone for s in plan.servers] + [plan.broker]
    for addresses, network in ((vpn4, topo.VPN4), (vpn6, topo.VPN6),
                               (underlay, topo.UNDERLAY4), (backbone, topo.BACKBONE4)):  # fmt: skip
        assert len(set(addresses)) == len(addresses)
        assert all(a in network and a != network.network_address for a in addresses)
    for address in vpn4:
        assert not any(int(address) in pool for pool in pools)
    for client in plan.clients:  # IPv6 host part = IPv4 host part, as OpenVPN's pools
        assert int(client.address6) & 0xFF == int(client.address) & 0xFF


def test_interface_names_fit_the_kernel_limit() -> None:
    plan = make_plan("mr", topo.MAX_SERVERS, topo.MAX_CLIENTS)
    names = [
        topo.TUN,
        topo.UNDERLAY_IF,
        topo.BACKBONE_IF,
        topo.BRIDGE_UNDERLAY,
        topo.BRIDGE_BACKBONE,
    ]
    for node in [*plan.server_names, *(c.name for c in plan.clients), "broker"]:
        names += veth_names(node)
    assert max(len(n) for n in names) <= 15


def test_only_the_prefix_own_namespaces_are_recognised() -> None:
    for name in ("mr-net", "mr-broker", "mr-s1", "mr-s12", "mr-c3"):
        assert owns_namespace("mr", name)
    for name in ("mr-foo", "mre1-s1", "mr-s01", "mr-s", "mr", "xmr-s1", "mr-s1x", "mr-c0"):
        assert not owns_namespace("mr", name)
    assert node_netns("mr", "c2") == "mr-c2"
    with pytest.raises(ValueError):
        node_netns("mr", "../etc")


@pytest.mark.parametrize("prefix", ["", "Mr", "1mr", "mr-x", "m" * 17, "mr x"])
def test_bad_prefixes_and_sizes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        make_plan(prefix, 3, 6)


def test_sizes_are_bounded() -> None:
    with pytest.raises(ValueError, match="servers"):
        make_plan("mr", 0, 1)
    with pytest.raises(ValueError, match="clients"):
        make_plan("mr", 3, topo.MAX_CLIENTS + 1)


def test_expected_routes_follow_each_client_to_its_server() -> None:
    plan = make_plan("mr", 3, 3)
    where = {"c1": "s1", "c2": "s2", "c3": "s2"}  # c3 moved from s3 to s2
    wanted = expected_routes(plan, where)
    c3 = plan.client("c3")
    assert (ipaddress.ip_network(c3.address), plan.server("s2").backbone) in wanted["s1"]
    assert (ipaddress.ip_network(c3.address6), plan.server("s2").backbone6) in wanted["s3"]
    assert wanted["s2"] == {
        (ipaddress.ip_network(plan.client("c1").address), plan.server("s1").backbone),
        (ipaddress.ip_network(plan.client("c1").address6), plan.server("s1").backbone6),
    }
    assert len(wanted["s3"]) == 6


def _pki(tmp_path: Path, plan: topo.LabPlan) -> Pki:
    def ck(name: str) -> CertKey:
        return CertKey(name, tmp_path / f"{name}.crt", tmp_path / f"{name}.key")

    return Pki(tmp_path, tmp_path / "ca.crt", tmp_path / "ca.key",
               {s.name: ck(s.name) for s in plan.servers},
               {c.name: ck(c.name) for c in plan.clients}, tmp_path / "tc.key")  # fmt: skip


def test_server_client_and_agent_files(tmp_path: Path) -> None:
    plan = make_plan("mr", 3, 2)
    paths, pki = LabPaths(tmp_path / "lab"), _pki(tmp_path, plan)
    s2 = plan.server("s2")
    write_server(paths, plan, s2, pki, "pw")
    conf = paths.openvpn_conf("s2").read_text()
    assert f"client-config-dir {paths.ccd('s2')}" in conf
    assert "ifconfig-pool 10.100.100.170 10.100.100.211" in conf
    assert f"management {paths.mgmt_socket('s2')} unix {paths.mgmt_password('s2')}" in conf
    assert (paths.ccd("s2") / "c1").read_text() == (
        "ifconfig-push 10.100.100.65 255.255.255.0\n"
        "ifconfig-ipv6-push fd00:100::41/64 fd00:100::2\n"
    )
    assert paths.mgmt_password("s2").stat().st_mode & 0o077 == 0
    write_client(paths, plan, plan.client("c1"), "s3", pki)
    remotes = [
        line
        for line in paths.openvpn_conf("c1").read_text().splitlines()
        if line.startswith("remote ")
    ]
    assert remotes == ["remote 198.18.0.3 1194", "remote 198.18.0.1 1194", "remote 198.18.0.2 1194"]
    url = "amqp://s2:secret@10.200.200.254:5672/%2F"
    config = load_config(str(write_agent(paths, s2, url, AgentTimings())), {}).config
    assert (config.name, config.broker_url, config.next_hop6) == ("s2", (url,), s2.backbone6)
    assert (config.hold_time, config.announce_interval) == (5.0, 1.0)
    assert config.client_networks == (topo.VPN4, topo.VPN6)
    assert config.control_socket == paths.control_socket("s2")
    assert paths.agent_conf("s2").stat().st_mode & 0o077 == 0
