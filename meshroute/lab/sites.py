"""Sites behind lab clients (``lab up --sites K``): a LAN and a host behind a router.

Client ``cJ`` (J <= K) becomes a site router (OpenVPN ``iroute``, docs/subnets.md):
a namespace ``{prefix}-hJ`` holds one host on the LAN behind it, linked to the
client's namespace by one veth pair (``lan0`` on both sides). Addresses are lab-only:

- site J's LAN: ``192.168.J.0/24`` and ``fd00:50:0:J::/64``; the router is ``.1`` /
  ``::1``, the host ``.2`` / ``::2`` (default routes via the router);
- every server's ccd file for ``cJ`` carries ``iroute`` and ``iroute-ipv6`` (so the
  site follows its router to whichever server it connects to);
- every server routes the aggregates (``route``/``route-ipv6``: the kernel hands
  site traffic to OpenVPN) and pushes them to every client; every agent has them
  as ``routed_networks``.

Invariants: nothing here touches a namespace the lab plan does not name; a site's
subnets are inside the aggregates and disjoint from the VPN, backbone and underlay.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from meshroute.lab import netns
from meshroute.lab.topology import ClientPlan, LabPlan, ServerPlan

SITES4 = ipaddress.IPv4Network("192.168.0.0/16")
SITES6 = ipaddress.IPv6Network("fd00:50::/48")
LAN_IF = "lan0"
ROUTER_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Route = tuple[Network, ipaddress.IPv4Address | ipaddress.IPv6Address]


@dataclass(frozen=True)
class SitePlan:
    """Site J: its host (named like a lab node, for pings), its router and subnets."""

    name: str  # hJ
    netns: str
    router: ClientPlan
    subnet: ipaddress.IPv4Network
    subnet6: ipaddress.IPv6Network

    @property
    def address(self) -> ipaddress.IPv4Address:  # the host's, as ClientPlan.address
        return self.subnet.network_address + 2

    @property
    def address6(self) -> ipaddress.IPv6Address:
        return self.subnet6.network_address + 2

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def gateway6(self) -> ipaddress.IPv6Address:
        return self.subnet6.network_address + 1


def site_plans(plan: LabPlan) -> tuple[SitePlan, ...]:
    """The first ``plan.sites`` clients' sites."""
    return tuple(_site(plan.prefix, client) for client in plan.clients[: plan.sites])


def _site(prefix: str, client: ClientPlan) -> SitePlan:
    j = client.index
    return SitePlan(
        name=f"h{j}",
        netns=f"{prefix}-h{j}",
        router=client,
        subnet=ipaddress.IPv4Network(f"192.168.{j}.0/24"),
        subnet6=ipaddress.IPv6Network(f"fd00:50:0:{j:x}::/64"),
    )


def build_sites(plan: LabPlan) -> None:
    """Each site's LAN: the veth pair, addresses, the host's default routes, forwarding."""
    for site in site_plans(plan):
        router = site.router.netns
        netns.batch(router, [
            f"link add {LAN_IF} type veth peer name {LAN_IF} netns {site.netns}",
            f"addr add {site.gateway}/24 dev {LAN_IF}",
            f"addr add {site.gateway6}/64 dev {LAN_IF} nodad",
            f"link set {LAN_IF} up",
        ])  # fmt: skip
        netns.sysctl(router, ROUTER_SYSCTLS)
        netns.batch(site.netns, [
            f"addr add {site.address}/24 dev {LAN_IF}",
            f"addr add {site.address6}/64 dev {LAN_IF} nodad",
            f"link set {LAN_IF} up",
            f"route add default via {site.gateway}",
            f"route add default via {site.gateway6}",
        ])  # fmt: skip


def ccd_lines(plan: LabPlan, client: ClientPlan) -> str:
    """The iroute lines of ``client``'s ccd file (on every server): none unless a site."""
    for site in site_plans(plan):
        if site.router.name == client.name:
            return (
                f"iroute {site.subnet.network_address} {site.subnet.netmask}\n"
                f"iroute-ipv6 {site.subnet6}\n"
            )
    return ""


def server_lines(plan: LabPlan, server: ServerPlan) -> tuple[str, ...]:
    """Route the aggregates into OpenVPN and push them to every client (sites only).

    The gateway of an IPv4 ``route`` on a ``topology subnet`` tun only has to be on
    the tun's subnet (the kernel hands the packet to OpenVPN, which routes by iroute).
    """
    if not plan.sites:
        return ()
    gateway = server.pool.pool_start
    return (
        f"route {SITES4.network_address} {SITES4.netmask} {gateway}",
        f"route-ipv6 {SITES6}",
        f'push "route {SITES4.network_address} {SITES4.netmask}"',
        f'push "route-ipv6 {SITES6}"',
    )


def agent_lines(plan: LabPlan) -> dict[str, str]:
    return {"routed_networks": f"{SITES4}, {SITES6}"} if plan.sites else {}


def expected_site_routes(plan: LabPlan, client_server: Mapping[str, str]) -> dict[str, set[Route]]:
    """Per server: each site's subnets via its router's server, where that is another."""
    wanted: dict[str, set[Route]] = {s.name: set() for s in plan.servers}
    for site in site_plans(plan):
        owner = plan.server(client_server[site.router.name])
        for server in plan.servers:
            if server.name != owner.name:
                wanted[server.name] |= {
                    (site.subnet, owner.backbone),
                    (site.subnet6, owner.backbone6),
                }
    return wanted


def site_problems(
    plan: LabPlan, server: str, rows: Mapping[str, Mapping[str, object]], owners: Mapping[str, str]
) -> list[str]:
    """What server ``server``'s claim table lacks for the sites (``rows`` by address)."""
    problems = []
    for site in site_plans(plan):
        owner = owners[site.router.name]
        for subnet in (site.subnet, site.subnet6):
            row = rows.get(str(subnet))
            if row is None or row["owner"] != owner:
                seen = "nothing" if row is None else f"owner {row['owner']}"
                problems.append(f"{server}: site {site.name} {subnet}: {seen}, want {owner}")
            elif owner != server and not row["installed"]:
                problems.append(f"{server}: site {site.name} {subnet}: route not installed")
    return problems
