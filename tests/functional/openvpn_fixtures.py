"""Helpers for the real-OpenVPN functional test: namespaces, processes, polling.

Safety: namespaces are created with unique names and the veth pair is created
INSIDE the first namespace with its peer put straight into the second, so the root
namespace never sees an interface. Every process is stopped by its own pid.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from meshroute.lab.openvpn_conf import (
    ClientConf,
    HookCommand,
    PluginHook,
    ServerConf,
    plan_pools,
    render_client_config,
    render_server_config,
)
from meshroute.lab.pki import make_pki
from meshroute.openvpn.mgmt import MgmtEndpoint

T = TypeVar("T")

NETWORK = ipaddress.IPv4Network("10.100.100.0/24")
NETWORK6 = ipaddress.IPv6Network("fd00:100::/64")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Netns:
    """Two namespaces joined by a veth pair: ``server`` 198.51.100.1, ``client`` .2."""

    server: str
    client: str
    server_ip: str = "198.51.100.1"
    client_ip: str = "198.51.100.2"


@contextmanager
def netns_pair(prefix: str) -> Iterator[Netns]:
    tag = f"{prefix}-{os.getpid()}"
    pair = Netns(server=f"{tag}-s", client=f"{tag}-c")
    created: list[str] = []
    try:
        for name in (pair.server, pair.client):
            ip("netns", "add", name)
            created.append(name)
        veth_s, veth_c = "mrtv-s", "mrtv-c"  # names are per namespace
        ip("-n", pair.server, "link", "add", veth_s, "type", "veth", "peer", "name", veth_c,
           "netns", pair.client)  # fmt: skip
        for ns, dev, addr in ((pair.server, veth_s, pair.server_ip),
                              (pair.client, veth_c, pair.client_ip)):  # fmt: skip
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@dataclass
class Processes:
    """Processes started in a namespace; each stopped by its pid, logs kept."""

    started: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self, name: str, netns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        out = log.open("wb")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv], stdout=out, stderr=subprocess.STDOUT
        )  # `ip netns exec` execs argv: proc.pid is the process itself
        out.close()
        self.started.append((name, proc, log))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def stop_all(self) -> None:
        for _, proc, _ in reversed(self.started):
            self.stop(proc)

    def logs(self) -> str:
        parts = []
        for name, proc, log in self.started:
            text = log.read_text(errors="replace") if log.exists() else "(no log)"
            parts.append(f"----- {name} (pid {proc.pid}, rc {proc.poll()}) -----\n{text}")
        return "\n".join(parts)


@contextmanager
def logs_on_failure(procs: Processes) -> Iterator[None]:
    """Print every process log when the block fails (pytest shows it with the failure)."""
    try:
        yield
    except BaseException:
        print(procs.logs())
        raise


def ping(netns: str, address: object) -> bool:
    argv = ["ip", "netns", "exec", netns, "ping", "-c1", "-W1", "-q", str(address)]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def write_openvpn_configs(tmp: Path, ns: Netns, hook: HookCommand | PluginHook) -> Path:
    """Server and client configs (one server srv1, one client cli1); the mgmt socket."""
    pki = make_pki(tmp / "pki", ["srv1"], ["cli1"])
    password_file = tmp / "mgmt.pw"
    password_file.write_text("s3cret pass\n")
    mgmt_sock = tmp / "mgmt.sock"
    server = ServerConf(
        name="srv1",
        dev="mrtun-s",
        port=1194,
        local=ns.server_ip,
        network=NETWORK,
        network6=NETWORK6,
        pool=plan_pools(NETWORK, 3, NETWORK6)[1],
        ca=pki.ca_cert,
        cert=pki.servers["srv1"].cert,
        key=pki.servers["srv1"].key,
        tls_crypt=pki.tls_crypt_key,
        management=MgmtEndpoint.unix(mgmt_sock),
        management_password_file=password_file,
        hook=hook,
    )
    client = ClientConf(
        name="cli1",
        dev="mrtun-c",
        remotes=((ns.server_ip, 1194),),
        ca=pki.ca_cert,
        cert=pki.clients["cli1"].cert,
        key=pki.clients["cli1"].key,
        tls_crypt=pki.tls_crypt_key,
    )
    (tmp / "server.conf").write_text(render_server_config(server))
    (tmp / "client.conf").write_text(render_client_config(client))
    return mgmt_sock
