"""The lab's address plan (pure): names, namespaces, interfaces and addresses.

Everything the lab creates is derived here from ``(prefix, servers, clients)``, so
``up``, ``status``, ``down`` and the tests agree on every name without asking the
kernel. Invariants:

- Namespace names are ``{prefix}-net`` (the bridges), ``{prefix}-broker`` (one
  broker) or ``{prefix}-b1..bK`` (a cluster of K), ``{prefix}-s1..sN`` and
  ``{prefix}-c1..cM``; :func:`owns_namespace` recognises exactly these, so
  ``down`` never touches a namespace it did not make.
- Interface names are at most 15 characters and never include the prefix: every
  interface lives in one of the lab's namespaces, never in the root namespace.
- Addresses are lab-only: the "internet" underlay 198.18.0.0/16 (RFC 2544
  benchmark range), the backbone 10.200.200.0/24 + fd00:200::/64 (server K = .K,
  broker .254, cluster node bK .255-K), the VPN subnet 10.100.100.0/24 +
  fd00:100::/64 (server K's tun = .K, dynamic pools disjoint in .128-.254,
  client J's sticky address .64+J).
- A client's IPv6 host part equals its IPv4 host part, as OpenVPN's pools do.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from meshroute.lab.openvpn_conf import PoolPlan, plan_pools

VPN4 = ipaddress.IPv4Network("10.100.100.0/24")
VPN6 = ipaddress.IPv6Network("fd00:100::/64")
BACKBONE4 = ipaddress.IPv4Network("10.200.200.0/24")
BACKBONE6 = ipaddress.IPv6Network("fd00:200::/64")
UNDERLAY4 = ipaddress.IPv4Network("198.18.0.0/16")
BROKER_HOST = 254
POOL_OFFSET = 128  # dynamic pools live in .128-.254
STICKY_OFFSET = 64  # client J's fixed address is .64+J, outside every pool
MAX_SERVERS = 16
MAX_BROKERS = 5
MANAGEMENT_PORT = 15672
MAX_CLIENTS = POOL_OFFSET - STICKY_OFFSET - 1
OPENVPN_PORT = 1194
AMQP_PORT = 5672
NODE_RE = r"net|broker|[bsch][1-9][0-9]*"  # h: a site's host (meshroute.lab.sites)
PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,15}")
TUN, UNDERLAY_IF, BACKBONE_IF = "tun0", "inet0", "bb0"
BRIDGE_UNDERLAY, BRIDGE_BACKBONE = "br-inet", "br-bb"


@dataclass(frozen=True)
class ServerPlan:
    name: str
    index: int
    netns: str
    underlay: ipaddress.IPv4Address
    backbone: ipaddress.IPv4Address
    backbone6: ipaddress.IPv6Address
    pool: PoolPlan

    @property
    def tun(self) -> ipaddress.IPv4Address:
        return self.pool.server_address

    @property
    def tun6(self) -> ipaddress.IPv6Address:
        assert self.pool.server_address6 is not None
        return self.pool.server_address6


@dataclass(frozen=True)
class ClientPlan:
    name: str
    index: int
    netns: str
    underlay: ipaddress.IPv4Address
    address: ipaddress.IPv4Address
    address6: ipaddress.IPv6Address
    home: str


@dataclass(frozen=True)
class BrokerPlan:
    """One RabbitMQ node: ``broker`` alone, or ``bK`` of a cluster."""

    name: str
    netns: str
    address: ipaddress.IPv4Address
    address6: ipaddress.IPv6Address


@dataclass(frozen=True)
class LabPlan:
    prefix: str
    servers: tuple[ServerPlan, ...]
    clients: tuple[ClientPlan, ...]
    brokers: tuple[BrokerPlan, ...] = ()
    sites: int = 0  # clients c1..cK are site routers (meshroute.lab.sites)

    @property
    def net_ns(self) -> str:
        return f"{self.prefix}-net"

    @property
    def broker_ns(self) -> str:
        """The first broker's namespace (the only one without a cluster)."""
        return self.brokers[0].netns

    @property
    def broker(self) -> ipaddress.IPv4Address:
        return self.brokers[0].address

    @property
    def broker6(self) -> ipaddress.IPv6Address:
        return self.brokers[0].address6

    @property
    def clustered(self) -> bool:
        return len(self.brokers) > 1

    def broker_node(self, name: str) -> BrokerPlan:
        for node in self.brokers:
            if node.name == name:
                return node
        raise KeyError(f"no broker {name!r} (brokers: {', '.join(b.name for b in self.brokers)})")

    def broker_order(self, server: ServerPlan) -> tuple[BrokerPlan, ...]:
        """The brokers in the order server ``server`` tries them (spread over nodes)."""
        first = (server.index - 1) % len(self.brokers)
        return self.brokers[first:] + self.brokers[:first]

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace, the bridge namespace first (it is made first)."""
        nodes = [s.netns for s in self.servers] + [c.netns for c in self.clients]
        nodes += [f"{self.prefix}-h{c.index}" for c in self.clients[: self.sites]]
        return (self.net_ns, *(b.netns for b in self.brokers), *nodes)

    def server(self, name: str) -> ServerPlan:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(f"no server {name!r} (servers: {', '.join(self.server_names)})")

    def client(self, name: str) -> ClientPlan:
        for client in self.clients:
            if client.name == name:
                return client
        raise KeyError(f"no client {name!r} (clients: {', '.join(c.name for c in self.clients)})")

    @property
    def server_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.servers)


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"lab prefix {prefix!r} must be 1-16 of a-z 0-9, starting with a letter")
    return prefix


def make_brokers(prefix: str, brokers: int) -> tuple[BrokerPlan, ...]:
    if not 1 <= brokers <= MAX_BROKERS:
        raise ValueError(f"brokers must be 1..{MAX_BROKERS}, not {brokers}")
    if brokers == 1:
        names, hosts = ["broker"], [BROKER_HOST]
    else:
        names, hosts = (
            [f"b{k}" for k in range(1, brokers + 1)],
            [255 - k for k in range(1, 1 + brokers)],
        )
    return tuple(
        BrokerPlan(
            name,
            f"{prefix}-{name}",
            BACKBONE4.network_address + host,
            BACKBONE6.network_address + host,
        )
        for name, host in zip(names, hosts, strict=True)
    )


def make_plan(prefix: str, servers: int, clients: int, brokers: int = 1, sites: int = 0) -> LabPlan:
    """The whole plan; clients are spread round-robin over the servers (their home)."""
    check_prefix(prefix)
    if not 1 <= servers <= MAX_SERVERS:
        raise ValueError(f"servers must be 1..{MAX_SERVERS}, not {servers}")
    if not 0 <= clients <= MAX_CLIENTS:
        raise ValueError(f"clients must be 0..{MAX_CLIENTS}, not {clients}")
    pools = plan_pools(VPN4, servers, VPN6, first_pool_offset=POOL_OFFSET)
    server_plans = tuple(
        ServerPlan(
            name=f"s{k}",
            index=k,
            netns=f"{prefix}-s{k}",
            underlay=UNDERLAY4.network_address + k,
            backbone=BACKBONE4.network_address + k,
            backbone6=BACKBONE6.network_address + k,
            pool=pools[k - 1],
        )
        for k in range(1, servers + 1)
    )
    client_plans = tuple(
        ClientPlan(
            name=f"c{j}",
            index=j,
            netns=f"{prefix}-c{j}",
            underlay=UNDERLAY4.network_address + 256 + j,
            address=VPN4.network_address + STICKY_OFFSET + j,
            address6=VPN6.network_address + STICKY_OFFSET + j,
            home=f"s{(j - 1) % servers + 1}",
        )
        for j in range(1, clients + 1)
    )
    if not 0 <= sites <= clients:
        raise ValueError(f"sites must be 0..{clients} (at most the clients), not {sites}")
    return LabPlan(prefix, server_plans, client_plans, make_brokers(prefix, brokers), sites)


def owns_namespace(prefix: str, netns: str) -> bool:
    """True for exactly the namespace names a lab with ``prefix`` creates."""
    rest = netns.removeprefix(f"{prefix}-")
    return rest != netns and bool(re.fullmatch(NODE_RE, rest))


def node_netns(prefix: str, node: str) -> str:
    """The namespace of a node name: s1, c2, broker or net."""
    if not re.fullmatch(NODE_RE, node):
        raise ValueError(f"unknown lab node {node!r} (s1.., c1.., broker, b1.. or net)")
    return f"{prefix}-{node}"


def veth_names(node: str) -> tuple[str, str]:
    """Names of the bridge-side ends (in the net namespace) for ``node``: underlay, backbone."""
    return f"{node}-i", f"{node}-b"
