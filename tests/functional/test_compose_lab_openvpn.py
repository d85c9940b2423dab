"""The compose lab's OpenVPN configs (docker/lab/init.sh), run by the real OpenVPN.

There is no Docker engine here, so the compose lab itself never runs in CI. What its
containers would run can: init.sh writes the configs, one server (s1) and one client
(c1) start from them in two network namespaces addressed like the compose networks
(underlay 198.18.0.1 and 198.18.1.1), the client gets its sticky address from the
shared client-config-dir, pings the server's tun address, and the server's hooks
hand the event to a socket (the agent's, in the compose lab). The root namespace is
never touched; processes are stopped by pid.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import poll
from tests.functional.openvpn_fixtures import Processes, ip, logs_on_failure, ping

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def underlay() -> Iterator[tuple[str, str]]:
    """Namespaces for server s1 (198.18.0.1/16) and client c1 (198.18.1.1/16)."""
    tag = f"mrt-dc{os.getpid()}"
    server, client = f"{tag}-s1", f"{tag}-c1"
    created = []
    try:
        for name in (server, client):
            ip("netns", "add", name)
            created.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        ip("-n", server, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
           "netns", client)  # fmt: skip
        for name, addr in ((server, "198.18.0.1/16"), (client, "198.18.1.1/16")):
            ip("-n", name, "addr", "add", addr, "dev", "eth0")
            ip("-n", name, "link", "set", "eth0", "up")
        yield server, client
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def test_compose_lab_server_and_client_configs_connect(underlay, tmp_path: Path) -> None:
    server_ns, client_ns = underlay
    lab = tmp_path / "lab"
    hook_socket = tmp_path / "hook.sock"
    env = {
        **os.environ, "LAB": str(lab), "SERVERS": "1", "CLIENTS": "1",
        "AGENT_UID": str(os.getuid()), "RABBIT_UID": str(os.getuid()),
        "HOOK_PROGRAM": f"{sys.executable} -S {REPO / 'meshroute' / 'openvpn' / 'hook.py'}",
        "HOOK_SOCKET": str(hook_socket),
    }  # fmt: skip
    subprocess.run(["sh", str(REPO / "docker" / "lab" / "init.sh")], env=env, check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    events = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    events.bind(str(hook_socket))
    events.settimeout(20)
    procs = Processes()
    try:
        with logs_on_failure(procs):
            procs.start("s1", server_ns, ["openvpn", "--config", str(lab / "s1" / "openvpn.conf")],
                        tmp_path / "s1.log")  # fmt: skip
            procs.start("c1", client_ns, ["openvpn", "--config", str(lab / "c1" / "client.conf")],
                        tmp_path / "c1.log")  # fmt: skip

            def client_address() -> bool:
                argv = ["ip", "-n", client_ns, "-4", "addr", "show", "dev", "tun0"]
                out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
                return "inet 10.100.100.65/24" in out

            poll(client_address, 30, "c1's sticky address 10.100.100.65 on tun0")
            poll(lambda: ping(client_ns, "10.100.100.1"), 15, "c1 to ping s1's tun address")
            received = events.recv(65536)
            assert b"10.100.100.65" in received or b"c1" in received, received
    finally:
        procs.stop_all()
        events.close()
