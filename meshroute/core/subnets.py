"""Trust bounds for subnets behind clients (OpenVPN ``iroute``) (pure).

A subnet claim says "subnet S is behind client CN, connected to agent O". It becomes
a route ``S via O's next hop`` on every other agent, so a wrong one can steal or
black-hole traffic far wider than one host route. :func:`subnet_problem` is the one
rule every agent applies, to its own clients' subnets before it announces them and
to every peer's before it admits them:

- ``routed_networks`` empty (the default): no subnet is ever accepted;
- the subnet lies inside one of ``routed_networks`` (same family);
- never a default route, and a prefix length within :data:`PREFIX_BOUNDS` for its
  family (a host prefix is a host claim, never a subnet);
- it overlaps none of the backbone networks nor the client networks (either way
  round: covering them or inside them), and covers no next hop (ours, the broker's
  or any peer's).

Invariant: the checks need only the subnet and the configured networks and hops, so
every agent with the same configuration judges a claim the same way. Next hops
announced after a subnet was admitted are checked again where routes are computed
(:meth:`meshroute.core.table.ClaimTable.desired_hops`): no route ever covers a next hop.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshroute.core.model import Address, Network

# Refusal reasons (the metrics' ``reason`` label; one word each).
OUTSIDE_ROUTED = "outside_routed_networks"
DEFAULT_ROUTE = "default_route"
PREFIX_LENGTH = "subnet_prefix_length"
OVERLAPS_BACKBONE = "overlaps_backbone"
OVERLAPS_CLIENTS = "overlaps_client_networks"
COVERS_NEXT_HOP = "covers_next_hop"

PREFIX_BOUNDS: dict[int, tuple[int, int]] = {4: (8, 31), 6: (16, 127)}
"""The shortest and longest subnet accepted per IP version (a /7 of IPv4 is a
sixty-fourth of the Internet: never a site)."""

REASON_TEXT: dict[str, str] = {
    OUTSIDE_ROUTED: "outside routed_networks (an empty list accepts no subnet)",
    DEFAULT_ROUTE: "a default route is never installed",
    PREFIX_LENGTH: "prefix length outside /{}../{} (IPv4), /{}../{} (IPv6)".format(
        *PREFIX_BOUNDS[4], *PREFIX_BOUNDS[6]
    ),
    OVERLAPS_BACKBONE: "overlaps backbone_networks",
    OVERLAPS_CLIENTS: "overlaps client_networks",
    COVERS_NEXT_HOP: "covers a next hop (ours, the broker's or a peer's)",
}


def subnet_problem(
    subnet: Network,
    *,
    routed: Iterable[Network],
    clients: Iterable[Network],
    backbone: Iterable[Network],
    hops: Iterable[Address],
) -> str | None:
    """The reason ``subnet`` must be refused, or None when it may be routed."""
    if subnet.prefixlen == 0:
        return DEFAULT_ROUTE
    low, high = PREFIX_BOUNDS[subnet.version]
    if not low <= subnet.prefixlen <= high:
        return PREFIX_LENGTH
    if not any(_inside(subnet, net) for net in routed):
        return OUTSIDE_ROUTED
    if any(_overlap(subnet, net) for net in backbone):
        return OVERLAPS_BACKBONE
    if any(_overlap(subnet, net) for net in clients):
        return OVERLAPS_CLIENTS
    if covers_any(subnet, hops):
        return COVERS_NEXT_HOP
    return None


def covers_any(subnet: Network, hops: Iterable[Address]) -> bool:
    """True if one of ``hops`` lies inside ``subnet`` (another family never does)."""
    return any(hop in subnet for hop in hops)


def routed_networks_problem(network: Network) -> str | None:
    """What is wrong with a ``routed_networks`` entry itself (config validation)."""
    if network.prefixlen == 0:
        return "a default route (0.0.0.0/0, ::/0) is never routed"
    return None


def _inside(subnet: Network, net: Network) -> bool:
    return subnet.version == net.version and subnet.subnet_of(net)  # type: ignore[arg-type]


def _overlap(subnet: Network, net: Network) -> bool:
    return subnet.version == net.version and subnet.overlaps(net)
