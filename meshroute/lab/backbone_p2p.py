"""The lab's backbone as a full mesh of OpenVPN point-to-point tunnels (``openvpn-p2p``).

Every pair of backbone members (servers and broker nodes) has its own tunnel: one
OpenVPN process per side, ``dev bb-PEER`` (tun), no ``mode server``. Each member
keeps ONE backbone address (the bridge's: server K .K, broker .254) as the local
address of all its tunnels, each with the peer's address as ``peer``
(``ip addr add LOCAL peer PEER``; IPv6: LOCAL/128 and a /128 route to PEER), so
``CLIENT via PEER`` resolves to the tunnel toward PEER. A point-to-point OpenVPN
sends everything written to its device to its one peer, whatever the inner
destination: no ``iroute``, no hub, no single point of failure; N(N-1)/2 tunnels.

Invariants: the pair (i, j), i before j in :func:`backbone.members` order, uses UDP
port ``PORT_BASE + position`` of the *peer* on each side, so no two tunnels of
a member share a port; i is the TLS server, j the client; each side accepts only
the peer's certificate name (``verify-x509-name``; a member has a server and a
client certificate, as OpenSSL checks the purpose). Addresses are set by
OpenVPN's ``up`` script (``ifconfig-noexec``; :data:`UP_SCRIPT`, the same as
deploy/backbone/openvpn-p2p-up.sh). The agents get ``backbone_networks`` instead
of ``mgmt_interface`` (a member has one device per peer, none of them "the"
backbone interface).
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from meshroute.lab.pki import Pki, make_pki

if TYPE_CHECKING:
    from meshroute.lab.backbone import Member

ROLE_PREFIX = "backbone-"
PORT_BASE = 11941  # the hub forms use 11940


def device(peer: str) -> str:
    return f"bb-{peer}"


def conf_path(root: Path, node: str, peer: str) -> Path:
    return root / node / f"{ROLE_PREFIX}{peer}.conf"


def render_side(me: Member, peer: Member, positions: dict[str, int], tls_server: bool,
                pki: Pki, up_script: Path) -> str:  # fmt: skip
    """One side of the tunnel between ``me`` and ``peer`` (both backbone.Member)."""
    # OpenSSL checks the certificate's purpose: the TLS server of a pair shows its
    # server certificate (CN NAME), the client its client one (CN NAME-c).
    ck = pki.servers[me.name] if tls_server else pki.clients[client_name(me.name)]
    peer_cn = client_name(peer.name) if tls_server else peer.name
    lines = [
        f"# meshroute lab backbone tunnel {me.name} -> {peer.name}",
        "proto udp",
        f"local {me.underlay}",
        f"lport {_port(positions, peer.name)}",
        f"remote {peer.underlay}",
        f"rport {_port(positions, me.name)}",
        f"dev {device(peer.name)}",
        "dev-type tun",
        "tls-server" if tls_server else "tls-client",
        *(["dh none"] if tls_server else []),
        f"ca {pki.ca_cert}",
        f"cert {ck.cert}",
        f"key {ck.key}",
        f"remote-cert-tls {'client' if tls_server else 'server'}",
        f"verify-x509-name {peer_cn} name",
        *([f"tls-crypt {pki.tls_crypt_key}"] if pki.tls_crypt_key else []),
        "ifconfig-noexec",  # the up script sets LOCAL peer PEER (see the docstring)
        f"ifconfig {me.address} {peer.address}",
        # OpenVPN wants /64../124 here; the up script sets /128 whatever it says.
        f"ifconfig-ipv6 {me.address6}/64 {peer.address6}",
        "script-security 2",
        f"up {up_script}",
        "keepalive 10 60",
        "disable-dco",
        "persist-key",
        "verb 3",
    ]
    return "\n".join(lines) + "\n"


UP_SCRIPT = """#!/bin/sh
# OpenVPN `up` script of a point-to-point backbone tunnel (with ifconfig-noexec):
# this server's ONE backbone address on every tunnel, the peer's as `peer`, so
# `CLIENT via PEER` leaves by the tunnel toward PEER. IPv6: LOCAL/128 and a /128
# route to the peer, whatever ifconfig-ipv6's /bits (a /64 on every tunnel would
# make the prefix ambiguous).
# OpenVPN passes dev, ifconfig_local, ifconfig_remote, ifconfig_ipv6_local and
# ifconfig_ipv6_remote in the environment. Same text: deploy/backbone/openvpn-p2p-up.sh
set -e
ip link set "$dev" up
ip addr add "$ifconfig_local" peer "$ifconfig_remote" dev "$dev"
if [ -n "$ifconfig_ipv6_local" ]; then
    ip -6 addr add "$ifconfig_ipv6_local/128" dev "$dev" nodad
    ip -6 route add "$ifconfig_ipv6_remote/128" dev "$dev"
fi
"""


def client_name(name: str) -> str:
    return f"{name}-c"


def _port(positions: dict[str, int], name: str) -> int:
    return PORT_BASE + positions[name]


def write_and_spawn(nodes: Sequence[Member], root: Path, logs: Path,
                    spawn: Callable[[str, str, list[str], Path], int]) -> None:  # fmt: skip
    """Configs and up scripts for every pair; start both sides of each tunnel."""
    names = [m.name for m in nodes]
    pki = make_pki(root / "pki-bb", names, [client_name(n) for n in names])
    positions = {m.name: k for k, m in enumerate(nodes)}
    up = root / "backbone-up.sh"
    up.write_text(UP_SCRIPT)
    up.chmod(0o755)
    for first, second in itertools.combinations(nodes, 2):
        for me, peer, server in ((first, second, True), (second, first, False)):
            (root / me.name).mkdir(parents=True, exist_ok=True)
            path = conf_path(root, me.name, peer.name)
            path.write_text(render_side(me, peer, positions, server, pki, up))
            name = f"{me.name}-{ROLE_PREFIX}{peer.name}"
            spawn(me.netns, f"{me.name}.{ROLE_PREFIX}{peer.name}",
                  ["openvpn", "--config", str(path)], logs / f"{name}.log")  # fmt: skip


def wait_connected(nodes: Sequence[Member], logs: Path, timeout: float) -> None:
    """Until every tunnel carries a ping (each pair once, from its first member)."""
    deadline = time.monotonic() + timeout
    waiting = list(itertools.combinations(nodes, 2))
    while waiting:
        waiting = [(a, b) for a, b in waiting if not _pings(a.netns, str(b.address))]
        if waiting and time.monotonic() > deadline:
            names = ", ".join(f"{a.name}-{b.name}" for a, b in waiting)
            raise RuntimeError(f"backbone tunnels not up after {timeout:.0f}s: {names} "
                               f"(see {logs}/*-backbone-*.log)")  # fmt: skip


def _pings(netns: str, address: str) -> bool:
    argv = ["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c1", "-W1", address]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0
