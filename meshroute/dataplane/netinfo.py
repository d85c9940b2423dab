"""Read-only look-ups of the agent's own interfaces (pyroute2), for config defaults.

cube-routed took its addresses from interfaces (``mgmt_interface``,
``data_interface``); meshroute keeps those defaults: the next hop it announces is
the backbone interface's address, and the client networks are the networks of
OpenVPN's tun interface. ``meshroute check --backbone-openvpn`` also asks here
whether the backbone interface will carry ``ADDR via PEER`` at all (a tun OpenVPN
server with more than one peer server does not: :func:`backbone_warnings`).
Nothing here changes the kernel.

pyroute2 is imported in the functions that use it: its package ``__init__`` loads
the whole library (~7.5 MiB RSS, docs/performance.md), and an agent whose config
names its next hop and client networks never needs it.
"""

from __future__ import annotations

import ipaddress
import pathlib
from dataclasses import dataclass

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class InterfaceError(RuntimeError):
    pass


def interface_addresses(ifname: str) -> list[Interface]:
    """Every address of ``ifname`` with its prefix length (link-local ones left out)."""
    from pyroute2 import IPRoute  # here, not at the top: see the module docstring

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


# --- is the backbone one that carries `ADDR via PEER`? (meshroute check) ------------

TUN_TYPES = {1: "tun", 2: "tap"}
"""IFLA_TUN_TYPE: what a tun/tap device (link kind ``tun``) really is."""
ARPHRD_NONE = 65534


def interface_kind(ifname: str) -> str | None:
    """``tun`` or ``tap`` for a tun/tap device, else its link kind (``veth``,
    ``wireguard``, ``bridge``...) or ``ether``; None if there is no such interface."""
    from pyroute2 import IPRoute  # here, not at the top: see the module docstring

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            return None
        link = ipr.get_links(index[0])[0]
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    if kind == "tun":
        data = info.get_attr("IFLA_INFO_DATA")
        tun_type = data.get_attr("IFLA_TUN_TYPE") if data else None
        if tun_type in TUN_TYPES:
            return TUN_TYPES[tun_type]
        return "tun" if link["ifi_type"] == ARPHRD_NONE else "tap"
    return kind or "ether"


@dataclass(frozen=True)
class OpenVPNBackbone:
    """What matters in the backbone's OpenVPN config (read by :func:`read_openvpn_backbone`)."""

    path: str
    server: bool
    """``mode server``, ``server`` or ``server-bridge``: OpenVPN routes between peers."""
    dev: str | None
    tun: bool
    """The device is a tun (layer 3): ``dev-type tun``, or a ``dev`` named ``tun*``."""
    iroute_peers: tuple[str, ...]
    """The client-config-dir entries with an ``iroute``/``iroute-ipv6`` (sorted)."""


def read_openvpn_backbone(path: str) -> OpenVPNBackbone:
    """Parse an OpenVPN config (and its client-config-dir); OSError if unreadable."""
    directives: dict[str, list[str]] = {}
    for line in pathlib.Path(path).read_text().splitlines():
        words = line.split()
        if words and words[0][0] not in "#;":
            directives.setdefault(words[0].lstrip("-"), words[1:])
    mode = directives.get("mode", ["p2p"])[0]
    server = mode == "server" or "server" in directives or "server-bridge" in directives
    dev, dev_type = _first(directives, "dev"), _first(directives, "dev-type")
    tun = dev_type == "tun" if dev_type else bool(dev and dev.startswith("tun"))
    peers: tuple[str, ...] = ()
    ccd = _first(directives, "client-config-dir")
    if ccd:
        folder = pathlib.Path(path).parent / ccd  # an absolute ccd stays absolute
        peers = tuple(sorted(
            entry.name for entry in folder.iterdir() if entry.is_file() and _has_iroute(entry)
        )) if folder.is_dir() else ()  # fmt: skip
    return OpenVPNBackbone(path, server, dev, tun, peers)


def _first(directives: dict[str, list[str]], name: str) -> str | None:
    args = directives.get(name)
    return args[0] if args else None


def _has_iroute(entry: pathlib.Path) -> bool:
    words = (line.split() for line in entry.read_text(errors="replace").splitlines())
    return any(w and w[0] in ("iroute", "iroute-ipv6") for w in words)


def backbone_warnings(mgmt_interface: str | None, kind: str | None,
                      backbone: OpenVPNBackbone) -> list[str]:  # fmt: skip
    """Why ``mgmt_interface`` (of link ``kind``) will not carry meshroute's routes.

    A tun OpenVPN server hands a packet to the peer whose address or ``iroute``
    matches its inner destination (and drops one from a peer whose source is
    neither), whatever next hop the kernel chose: it carries meshroute's routes
    only with exactly one peer server, whose iroute covers the client networks
    (the article's two servers). Measured in the lab: docs/backbone.md.
    """
    where = f"mgmt_interface {mgmt_interface}"
    if backbone.dev and mgmt_interface and backbone.dev != mgmt_interface:
        return [f"{backbone.path}: dev {backbone.dev} is not {where}; "
                "pass the OpenVPN config of the backbone interface"]  # fmt: skip
    if not backbone.server or kind != "tun" or not backbone.tun:
        return []
    peers = backbone.iroute_peers
    fix = ("use a tap hub (deploy/backbone/openvpn-tap-hub.conf) or a routed or "
           "switched network; see docs/backbone.md")  # fmt: skip
    if len(peers) > 1:
        return [f"{where} is a tun device of an OpenVPN server ({backbone.path}) with "
                f"{len(peers)} peers routing client networks ({', '.join(peers)}): it "
                "forwards by each packet's inner destination (iroute), not by the next "
                "hop meshroute installs, so clients of all but one peer are unreachable; "
                + fix]  # fmt: skip
    if not peers:
        return [f"{where} is a tun device of an OpenVPN server ({backbone.path}) and no "
                "peer in its client-config-dir has an iroute: it drops every client "
                "packet a peer forwards (its source check) and every one toward a "
                "peer's clients; with one peer server give it iroute for the client "
                "networks (deploy/backbone/ccd/vpnsrvB-tun), with more " + fix]  # fmt: skip
    return []
