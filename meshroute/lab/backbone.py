"""The lab's backbone (the article's "management net"): a bridge, or real OpenVPN.

meshroute installs ``ADDR via PEER`` where PEER is a peer server's backbone
address; whether the packet then arrives depends on what the backbone forwards by.
``lab up --backbone FORM`` builds one of:

- ``bridge`` (default): a Linux bridge ``br-bb``, the ideal switched LAN.
- ``openvpn``: the management net as an OpenVPN **tap hub** on s1 (``dev bb0``,
  ``dev-type tap``, ``client-to-client``); every other server and every broker node
  is a client of it. The hub switches Ethernet frames by destination MAC, and the
  MAC is the one the sender's kernel resolved for the *next hop*, so any next hop
  forwards any destination: it carries meshroute's routes for any number of servers.
- ``openvpn-tun``: the article's own form, a **tun** server on s1 (vpnsrvA,
  10.200.200.1) and every other server its client, each with ``iroute`` for the
  client networks (the broker is a client without one). OpenVPN in tun server mode
  forwards by the packet's *inner* addresses: a packet from a client is dropped
  unless its source is that client's address or inside its ``iroute``, and a
  packet toward the clients goes to the client whose ``iroute`` matches its
  destination, whatever next hop the kernel chose. With two servers (the article)
  there is one such client and every packet is right; with more, the client
  networks can only follow one of them, so it fails (docs/backbone.md measures it).
- ``openvpn-p2p``: a full mesh of point-to-point tunnels, one shared local address
  per member (:mod:`meshroute.lab.backbone_p2p`): no hub, N(N-1)/2 tunnels.

Invariants:

- Every form keeps the bridge's addresses (server K .K, broker .254, cluster node
  bK .255-K): in the hub forms on the OpenVPN device ``bb0`` (so the agents'
  ``mgmt_interface`` and ``next_hop`` do not depend on the form), in the mesh on
  every tunnel. The broker's listener and the metrics addresses never change.
- Without the bridge backbone, servers and broker nodes reach the hub (or each
  other) over the underlay ("internet", 198.18.0.0/16; broker nodes at 198.18.2.H,
  H their backbone host part), port 11940 (the article's; the mesh 11941..), with
  a PKI of their own (``pki-bb/``).
- ``start`` returns once every node has its backbone addresses (the mesh: once
  every tunnel carries a ping), before the broker boots (RabbitMQ binds to its
  backbone address).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshroute.lab import backbone_p2p, netns
from meshroute.lab import topology as topo
from meshroute.lab.pki import Pki, make_pki
from meshroute.lab.topology import LabPlan

FORMS = ("bridge", "openvpn", "openvpn-tun", "openvpn-p2p")
HUB_PORT = 11940
BROKER_UNDERLAY_OFFSET = 512  # broker node underlay 198.18.2.H
ROLE = "backbone"
NODE_SYSCTLS = {
    # The addresses OpenVPN puts on a tap device would wait ~1-2 s for duplicate
    # address detection; the lab's backbone addresses are unique by construction.
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv6.conf.all.accept_dad": "0",
}

Spawn = Callable[[str, str, list[str], Path], int]
"""(netns, role, argv, log file) -> pid, recorded in lab.json by the caller."""


class BackboneError(RuntimeError):
    """The OpenVPN backbone did not come up; the message names the node and its log."""


@dataclass(frozen=True)
class Member:
    """One node on the backbone: a server or a broker node."""

    name: str
    netns: str
    address: ipaddress.IPv4Address
    address6: ipaddress.IPv6Address
    underlay: ipaddress.IPv4Address
    is_server: bool


def check_form(form: str) -> str:
    if form not in FORMS:
        raise ValueError(f"backbone must be one of {', '.join(FORMS)}, not {form!r}")
    return form


def members(plan: LabPlan) -> list[Member]:
    """Every node on the backbone; the first (s1) is the OpenVPN hub."""
    found = [Member(s.name, s.netns, s.backbone, s.backbone6, s.underlay, True)
             for s in plan.servers]  # fmt: skip
    for broker in plan.brokers:
        host = int(broker.address) - int(topo.BACKBONE4.network_address)
        underlay = topo.UNDERLAY4.network_address + BROKER_UNDERLAY_OFFSET + host
        found.append(Member(broker.name, broker.netns, broker.address, broker.address6,
                            underlay, False))  # fmt: skip
    return found


# --- configs (pure) ------------------------------------------------------------------


def render_hub(form: str, hub: Member, pki: Pki, ccd: Path) -> str:
    """The hub's server config (s1): tap switch or tun router."""
    tap = form == "openvpn"
    lines = [
        f"# meshroute lab backbone hub ({form}) on {hub.name}",
        "mode server",
        "tls-server",
        "proto udp",
        f"local {hub.underlay}",
        f"port {HUB_PORT}",
        f"dev {topo.BACKBONE_IF}",
        f"dev-type {'tap' if tap else 'tun'}",
        *([] if tap else ["topology subnet", 'push "topology subnet"']),
        f"ifconfig {hub.address} {topo.BACKBONE4.netmask}",
        f"ifconfig-ipv6 {hub.address6}/{topo.BACKBONE6.prefixlen} {hub.address6}",
        # tap: OpenVPN switches frames between its clients by MAC (a learning switch);
        # tun: without it, client-to-client packets go through s1's kernel, which
        # hands them back to OpenVPN; either way OpenVPN picks the client by address.
        *(["client-to-client"] if tap else []),
        f"client-config-dir {ccd}",
        "ccd-exclusive",
        *_tls_lines(pki, hub.name, server=True),
        "keepalive 10 60",
        "disable-dco",
        "persist-key",
        "verb 3",
    ]
    return "\n".join(lines) + "\n"


def render_ccd(form: str, member: Member, iroutes: bool = True) -> str:
    """A member's fixed backbone address; tun: the client networks as its iroute
    (``iroutes`` False only to show what a tun hub does without them)."""
    lines = [
        f"ifconfig-push {member.address} {topo.BACKBONE4.netmask}",
        f"ifconfig-ipv6-push {member.address6}/{topo.BACKBONE6.prefixlen}",
    ]
    if form == "openvpn-tun" and member.is_server and iroutes:
        lines += [f"iroute {topo.VPN4.network_address} {topo.VPN4.netmask}",
                  f"iroute-ipv6 {topo.VPN6}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def render_member(form: str, member: Member, hub: Member, pki: Pki) -> str:
    """A member's client config: one remote, the hub."""
    lines = [
        f"# meshroute lab backbone member ({form}) {member.name}",
        "tls-client",
        "pull",
        "proto udp",
        f"dev {topo.BACKBONE_IF}",
        f"dev-type {'tap' if form == 'openvpn' else 'tun'}",
        f"remote {hub.underlay} {HUB_PORT}",
        "nobind",
        "connect-retry 1 1",
        *_tls_lines(pki, member.name, server=False),
        "disable-dco",
        "persist-key",
        "verb 3",
    ]
    return "\n".join(lines) + "\n"


def _tls_lines(pki: Pki, name: str, server: bool) -> list[str]:
    ck = (pki.servers if server else pki.clients)[name]
    return [
        f"ca {pki.ca_cert}",
        f"cert {ck.cert}",
        f"key {ck.key}",
        *(["dh none"] if server else []),
        f"remote-cert-tls {'client' if server else 'server'}",
        *([f"tls-crypt {pki.tls_crypt_key}"] if pki.tls_crypt_key else []),
    ]


# --- wiring and processes --------------------------------------------------------------


def wire_underlay(plan: LabPlan) -> None:
    """Broker nodes join the underlay bridge (the bridge backbone needs no such link)."""
    for member in members(plan):
        if member.is_server:
            continue
        outer = topo.veth_names(member.name)[0]
        netns.batch(plan.net_ns, [
            f"link add {outer} type veth peer name {topo.UNDERLAY_IF} netns {member.netns}",
            f"link set {outer} master {topo.BRIDGE_UNDERLAY}",
            f"link set {outer} up",
        ])  # fmt: skip
        netns.batch(member.netns, [
            f"addr add {member.underlay}/{topo.UNDERLAY4.prefixlen} dev {topo.UNDERLAY_IF}",
            f"link set {topo.UNDERLAY_IF} up",
        ])  # fmt: skip


def conf_path(root: Path, node: str) -> Path:
    """Node's backbone OpenVPN config: unique to its process (procs' marker)."""
    return root / node / "backbone.conf"


def marker(root: Path, node: str, program: str) -> Path | None:
    """The config path that marks a backbone process of role ``node.program``."""
    if program == ROLE:
        return conf_path(root, node)
    if program.startswith(backbone_p2p.ROLE_PREFIX):
        return backbone_p2p.conf_path(root, node, program.removeprefix(backbone_p2p.ROLE_PREFIX))
    return None


def start(form: str, plan: LabPlan, root: Path, logs: Path, spawn: Spawn,
          timeout: float = 20.0, iroutes: bool = True) -> None:  # fmt: skip
    """Write the configs, start the hub and every member, wait for their addresses."""
    nodes = members(plan)
    for member in nodes:
        netns.sysctl(member.netns, NODE_SYSCTLS)
    if form == "openvpn-p2p":
        backbone_p2p.write_and_spawn(nodes, root, logs, spawn)
        # The addresses exist from the start (ifconfig at open), not the TLS session.
        wait_addresses(nodes, logs, timeout, devices=len(nodes) - 1)
        return backbone_p2p.wait_connected(nodes, logs, timeout)
    hub, rest = nodes[0], nodes[1:]
    pki = make_pki(root / "pki-bb", [hub.name], [m.name for m in rest])
    ccd = root / hub.name / "ccd-bb"
    ccd.mkdir(parents=True, exist_ok=True)
    for member in rest:
        (ccd / member.name).write_text(render_ccd(form, member, iroutes))
    texts = {hub.name: render_hub(form, hub, pki, ccd)}
    texts.update({m.name: render_member(form, m, hub, pki) for m in rest})
    for member in nodes:
        path = conf_path(root, member.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(texts[member.name])
        argv = ["openvpn", "--config", str(path)]
        spawn(member.netns, f"{member.name}.{ROLE}", argv, logs / f"{member.name}-{ROLE}.log")
    wait_addresses(nodes, logs, timeout)


def wait_addresses(nodes: list[Member], logs: Path, timeout: float, devices: int = 1) -> None:
    deadline = time.monotonic() + timeout
    missing = list(nodes)
    while missing:
        missing = [m for m in missing if not has_addresses(m, devices)]
        if not missing:
            return
        if time.monotonic() > deadline:
            names = ", ".join(f"{m.name} (see {logs}/{m.name}-{ROLE}*.log)" for m in missing)
            raise BackboneError(f"backbone {topo.BACKBONE_IF} not up after {timeout:.0f}s on "
                                f"{names}")  # fmt: skip
        time.sleep(0.05)


def has_addresses(member: Member, devices: int = 1) -> bool:
    """True once ``devices`` interfaces of the member carry both its backbone
    addresses (``bb0``; or every tunnel of the point-to-point mesh)."""
    out = netns.run(["ip", "-n", member.netns, "-j", "addr", "show"], check=False)
    try:
        links = json.loads(out or "[]")
    except ValueError:
        return False
    wanted = {str(member.address), str(member.address6)}
    carrying = [link for link in links
                if wanted <= {a.get("local") for a in link.get("addr_info", [])}]  # fmt: skip
    return len(carrying) >= devices
