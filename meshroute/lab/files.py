"""Where every lab file lives, and the config files ``up`` writes.

Layout of the lab directory (``/run/meshroute-lab/<prefix>`` by default)::

    lab.json              state: sizes, pids, which server each client uses
    pki/                  CA, server and client certificates, tls-crypt key
    logs/                 sK-openvpn.log, sK-agent.log, cJ-openvpn.log
    broker/               the private RabbitMQ node (data, its own logs)
    sK/                   openvpn.conf, ccd/, mgmt.sock, mgmt.pw, status.txt,
                          agent.conf, control.sock, hook.sock
    cJ/                   openvpn.conf

Invariants: each process's config file path is unique to it and appears on its
command line, which is how :mod:`meshroute.lab.procs` recognises its pid later.
Secrets (management password, broker URLs with passwords) are mode 0600.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshroute.lab import sites
from meshroute.lab import topology as topo
from meshroute.lab.openvpn_conf import (
    ClientConf,
    ServerConf,
    choose_hook,
    render_client_config,
    render_server_config,
)
from meshroute.lab.pki import Pki
from meshroute.lab.topology import ClientPlan, LabPlan, ServerPlan
from meshroute.openvpn.mgmt import MgmtEndpoint

DEFAULT_ROOT = Path("/run/meshroute-lab")


@dataclass(frozen=True)
class LabPaths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "lab.json"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    def node(self, name: str) -> Path:
        return self.root / name

    def log(self, node: str, program: str) -> Path:
        return self.logs / f"{node}-{program}.log"

    def openvpn_conf(self, node: str) -> Path:
        return self.node(node) / "openvpn.conf"

    def ccd(self, server: str) -> Path:
        return self.node(server) / "ccd"

    def mgmt_socket(self, server: str) -> Path:
        return self.node(server) / "mgmt.sock"

    def mgmt_password(self, server: str) -> Path:
        return self.node(server) / "mgmt.pw"

    def agent_conf(self, server: str) -> Path:
        return self.node(server) / "agent.conf"

    def control_socket(self, server: str) -> Path:
        return self.node(server) / "control.sock"

    def hook_socket(self, server: str) -> Path:
        return self.node(server) / "hook.sock"


def write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_server(
    paths: LabPaths, plan: LabPlan, server: ServerPlan, pki: Pki, pw: str, hooks: str = "auto"
) -> None:
    """The server's config, its client-config-dir (sticky addresses), its password.
    ``hooks``: plugin, script or auto (the plugin when built; see choose_hook)."""
    write_secret(paths.mgmt_password(server.name), pw + "\n")
    ccd = paths.ccd(server.name)
    ccd.mkdir(parents=True, exist_ok=True)
    for client in plan.clients:
        (ccd / client.name).write_text(_ccd_text(client, server) + sites.ccd_lines(plan, client))
    conf = ServerConf(
        name=server.name,
        dev=topo.TUN,
        port=topo.OPENVPN_PORT,
        local=str(server.underlay),
        network=topo.VPN4,
        network6=topo.VPN6,
        pool=server.pool,
        ca=pki.ca_cert,
        cert=pki.servers[server.name].cert,
        key=pki.servers[server.name].key,
        tls_crypt=pki.tls_crypt_key,
        management=MgmtEndpoint.unix(paths.mgmt_socket(server.name)),
        management_password_file=paths.mgmt_password(server.name),
        hook=choose_hook(hooks, paths.hook_socket(server.name)),
        status_file=paths.node(server.name) / "status.txt",
        # tmp-dir: client-connect's temp files stay inside the lab directory, which
        # `down` removes, even if OpenVPN is killed in the middle of a connect.
        extra=(
            f"client-config-dir {ccd}",
            f"tmp-dir {paths.node(server.name)}",
            *sites.server_lines(plan, server),
        ),
    )
    paths.openvpn_conf(server.name).write_text(render_server_config(conf))


def _ccd_text(client: ClientPlan, server: ServerPlan) -> str:
    # A host keeps its address wherever it connects (that is why its host route must
    # follow it): the same fixed address on every server, outside all dynamic pools.
    return (
        f"ifconfig-push {client.address} {topo.VPN4.netmask}\n"
        f"ifconfig-ipv6-push {client.address6}/{topo.VPN6.prefixlen} {server.tun6}\n"
    )


def write_client(paths: LabPaths, plan: LabPlan, client: ClientPlan, first: str, pki: Pki) -> None:
    """The client's config: every server as a remote, ``first`` at the top."""
    order = [plan.server(first), *(s for s in plan.servers if s.name != first)]
    conf = ClientConf(
        name=client.name,
        dev=topo.TUN,
        remotes=tuple((str(s.underlay), topo.OPENVPN_PORT) for s in order),
        ca=pki.ca_cert,
        cert=pki.clients[client.name].cert,
        key=pki.clients[client.name].key,
        tls_crypt=pki.tls_crypt_key,
        # Fail over to the next server in seconds, not the default two minutes.
        extra=("server-poll-timeout 5",),
    )
    path = paths.openvpn_conf(client.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_client_config(conf))


@dataclass(frozen=True)
class AgentTimings:
    """Short timings for a snappy lab (production defaults are in config.py)."""

    announce_interval: str = "1s"
    hold_time: str = "5s"
    status_poll_interval: str = "2s"
    sync_timeout: str = "2s"
    """The start-up sync window counts from the agent's start, not from its broker
    connection: it must cover the connect, or a restart loses its peers' echoes."""
    resync_interval: str = "10s"


def write_agent(
    paths: LabPaths,
    server: ServerPlan,
    broker_url: str,
    timings: AgentTimings,
    metrics_listen: str | None = None,
    mgmt_interface: str | None = topo.BACKBONE_IF,
    extra: Mapping[str, str] | None = None,
) -> Path:
    """The agent's config. Without ``mgmt_interface`` (a backbone with no single
    interface: the point-to-point mesh) it is given the backbone networks instead."""
    backbone = ({"mgmt_interface": mgmt_interface} if mgmt_interface
                else {"backbone_networks": f"{topo.BACKBONE4}, {topo.BACKBONE6}"})  # fmt: skip
    lines = {
        "name": server.name,
        "broker_url": broker_url,
        "exchange": "meshroute",
        **backbone,
        "data_interface": topo.TUN,
        "next_hop": str(server.backbone),
        "next_hop6": str(server.backbone6),
        "client_networks": f"{topo.VPN4}, {topo.VPN6}",
        "openvpn_mgmt": str(paths.mgmt_socket(server.name)),
        "openvpn_mgmt_pass_file": str(paths.mgmt_password(server.name)),
        "control_socket": str(paths.control_socket(server.name)),
        "hook_socket": str(paths.hook_socket(server.name)),
        "state_dir": str(paths.agent_conf(server.name).parent),
        "announce_interval": timings.announce_interval,
        "hold_time": timings.hold_time,
        "status_poll_interval": timings.status_poll_interval,
        "sync_timeout": timings.sync_timeout,
        "resync_interval": timings.resync_interval,
        "log_level": "info",
    }
    if metrics_listen is not None:
        lines["metrics_listen"] = metrics_listen
    lines.update(extra or {})
    text = f"# meshroute lab agent {server.name}\n" + "".join(
        f"{key} = {value}\n" for key, value in lines.items()
    )
    path = paths.agent_conf(server.name)
    write_secret(path, text)
    return path
