"""Network namespaces, veth pairs and bridges for the lab, through ``ip`` commands.

Safety invariants (the lab runs as root on someone's machine):

- Nothing here takes an interface, address, route or sysctl of the root namespace:
  every ``ip`` command carries ``-n NS`` for one of the lab's own namespaces, and a
  veth pair is created inside the bridge namespace with its peer moved straight
  into the node's namespace, so the root namespace never sees either end.
- Processes are found per namespace (``ip netns pids``), so ``down`` ends only
  processes running inside the lab's own namespaces.
- Deleting is idempotent: a namespace that is already gone is success.

``ip -n NS -batch -`` runs many commands in one process (a few ms instead of a few
ms per command), which keeps building a 8x16 lab well under a second.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable, Sequence

from meshroute.lab import topology as topo
from meshroute.lab.topology import LabPlan

log = logging.getLogger(__name__)


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message carries the command and its stderr."""


def run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def batch(netns: str, commands: Iterable[str]) -> None:
    """Run ``ip`` commands (without the leading ``ip``) inside ``netns``, in one process."""
    text = "\n".join(commands) + "\n"
    run(["ip", "-n", netns, "-batch", "-"], stdin=text)


def list_netns() -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def add_netns(name: str) -> None:
    run(["ip", "netns", "add", name])


def delete_netns(name: str) -> None:
    if name in list_netns():
        run(["ip", "netns", "delete", name])


def netns_pids(name: str) -> list[int]:
    """Every process whose network namespace is ``name`` (empty if it does not exist)."""
    out = run(["ip", "netns", "pids", name], check=False)
    return [int(word) for word in out.split() if word.isdigit()]


def sysctl(netns: str, settings: dict[str, str]) -> None:
    """Write sysctls inside ``netns`` (``ip netns exec`` mounts its own /proc/sys/net)."""
    args = [f"{key}={value}" for key, value in settings.items()]
    run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", *args])


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns`` (``ip netns exec`` execs it: same pid)."""
    return ["ip", "netns", "exec", netns, *argv]


# --- the lab's network ------------------------------------------------------------------

SERVER_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    # A reply from a client on another server arrives over the backbone with a source
    # inside the tun's subnet: strict reverse-path filtering would drop it until the
    # host route exists, and meshroute's routes are exactly what makes it symmetric.
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    # Same-server client-to-client traffic leaves by the tun it came in on; no
    # redirects to clients for that.
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
}


def create_namespaces(plan: LabPlan) -> None:
    """Make every namespace (bridge namespace first), loopback up in each."""
    for name in plan.namespaces:
        add_netns(name)
        batch(name, ["link set lo up"])


def build_network(plan: LabPlan, backbone_bridge: bool = True) -> None:
    """Bridges in the net namespace, one veth per node and network, addresses, sysctls.
    Without ``backbone_bridge`` the backbone is left to :mod:`meshroute.lab.backbone`."""
    net = plan.net_ns
    commands = [
        f"link add {topo.BRIDGE_UNDERLAY} type bridge",
        f"link add {topo.BRIDGE_BACKBONE} type bridge",
        f"link set {topo.BRIDGE_UNDERLAY} up",
        f"link set {topo.BRIDGE_BACKBONE} up",
    ]
    links: list[tuple[str, str, str, str]] = []  # node, netns, inner name, bridge
    for server in plan.servers:
        links.append((server.name, server.netns, topo.UNDERLAY_IF, topo.BRIDGE_UNDERLAY))
        if backbone_bridge:
            links.append((server.name, server.netns, topo.BACKBONE_IF, topo.BRIDGE_BACKBONE))
    for client in plan.clients:
        links.append((client.name, client.netns, topo.UNDERLAY_IF, topo.BRIDGE_UNDERLAY))
    if backbone_bridge:
        links.append(("broker", plan.broker_ns, topo.BACKBONE_IF, topo.BRIDGE_BACKBONE))
    for node, netns, inner, bridge in links:
        under, back = topo.veth_names(node)
        outer = under if inner == topo.UNDERLAY_IF else back
        commands += [
            f"link add {outer} type veth peer name {inner} netns {netns}",
            f"link set {outer} master {bridge}",
            f"link set {outer} up",
        ]
    batch(net, commands)
    for server in plan.servers:
        backbone = (
            (topo.BACKBONE_IF, f"{server.backbone}/{topo.BACKBONE4.prefixlen}"),
            (topo.BACKBONE_IF, f"{server.backbone6}/{topo.BACKBONE6.prefixlen}"),
        )
        batch(server.netns, _node_addresses(
            (topo.UNDERLAY_IF, f"{server.underlay}/{topo.UNDERLAY4.prefixlen}"),
            *(backbone if backbone_bridge else ()),
        ))  # fmt: skip
        sysctl(server.netns, SERVER_SYSCTLS)
    for client in plan.clients:
        batch(client.netns, _node_addresses(
            (topo.UNDERLAY_IF, f"{client.underlay}/{topo.UNDERLAY4.prefixlen}"),
        ))  # fmt: skip
    if backbone_bridge:
        batch(plan.broker_ns, _node_addresses(
            (topo.BACKBONE_IF, f"{plan.broker}/{topo.BACKBONE4.prefixlen}"),
            (topo.BACKBONE_IF, f"{plan.broker6}/{topo.BACKBONE6.prefixlen}"),
        ))  # fmt: skip


def _node_addresses(*pairs: tuple[str, str]) -> list[str]:
    # nodad: duplicate address detection would hold IPv6 addresses back ~1-2 s, and
    # the lab's addresses are unique by construction.
    commands = [
        f"addr add {address} dev {dev}" + (" nodad" if ":" in address else "")
        for dev, address in pairs
    ]
    return commands + [f"link set {dev} up" for dev in dict.fromkeys(dev for dev, _ in pairs)]
