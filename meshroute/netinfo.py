"""Read-only look-ups of the agent's own interfaces (pyroute2), for config defaults.

cube-routed took its addresses from interfaces (``mgmt_interface``,
``data_interface``); meshroute keeps those defaults: the next hop it announces is
the backbone interface's address, and the client networks are the networks of
OpenVPN's tun interface. Nothing here changes the kernel.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pyroute2 import IPRoute

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class InterfaceError(RuntimeError):
    pass


def interface_addresses(ifname: str) -> list[Interface]:
    """Every address of ``ifname`` with its prefix length (link-local ones left out)."""
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            raise InterfaceError(f"interface {ifname!r} does not exist")
        found = []
        for msg in ipr.get_addr(index=index[0]):
            addr = ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            if not addr.ip.is_link_local:
                found.append(addr)
        return found


@dataclass(frozen=True)
class Resolved:
    next_hop: ipaddress.IPv4Address | None
    next_hop6: ipaddress.IPv6Address | None
    client_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    backbone_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


def resolve_defaults(config) -> Resolved:
    """Fill next_hop(6) and backbone_networks from mgmt_interface, client_networks
    from data_interface."""
    next_hop, next_hop6 = config.next_hop, config.next_hop6
    backbone = tuple(config.backbone_networks)
    needs_backbone = next_hop is None or next_hop6 is None or not backbone
    if needs_backbone and config.mgmt_interface:
        addrs = interface_addresses(config.mgmt_interface)
        if not backbone:
            backbone = tuple(dict.fromkeys(a.network for a in addrs))
        if next_hop is None:
            next_hop = next((a.ip for a in addrs if a.version == 4), None)
        if next_hop6 is None:
            next_hop6 = next((a.ip for a in addrs if a.version == 6), None)
    if next_hop is None and next_hop6 is None:
        where = (
            f"mgmt_interface {config.mgmt_interface!r} has no address"
            if (config.mgmt_interface)
            else "neither next_hop nor mgmt_interface is set"
        )
        raise InterfaceError(f"no next hop to announce: {where}")
    networks = tuple(config.client_networks)
    if not networks and config.data_interface:
        networks = tuple(a.network for a in interface_addresses(config.data_interface))
    if not networks:
        raise InterfaceError(
            "no client networks: set client_networks, or data_interface to OpenVPN's tun "
            "interface (its networks are used)"
        )
    return Resolved(next_hop, next_hop6, networks, backbone)
