"""``meshroute check --backbone-openvpn`` on real tun/tap devices in a namespace.

The device type comes from the kernel (pyroute2, IFLA_TUN_TYPE), not from its name:
a tap device named ``tun1`` is not flagged, a tun device is.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshroute.lab.lab import agent_command

pytestmark = pytest.mark.functional

CONFIG = (
    "name = vpnsrvA\n"
    "broker_url = amqp://vpnsrvA:pw@10.200.200.254:5672/%2F\n"
    "mgmt_interface = tun1\n"
    "next_hop = 10.200.200.1\n"
    "client_networks = 10.100.100.0/24\n"
)
TUN_SERVER = "mode server\ntls-server\ndev tun1\ndev-type tun\nclient-config-dir ccd\n"
IROUTE = "ifconfig-push 10.200.200.{k} 255.255.255.0\niroute 10.100.100.0 255.255.255.0\n"


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"mrt-bbc-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def check(netns: str, tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    subprocess.run(["ip", "-n", netns, "tuntap", "add", "mode", mode, "name", "tun1"], check=True)
    (tmp_path / "m.conf").write_text(CONFIG)
    (tmp_path / "backbone.conf").write_text(TUN_SERVER)
    (tmp_path / "ccd").mkdir()
    for k in (2, 3):
        (tmp_path / "ccd" / f"s{k}").write_text(IROUTE.format(k=k))
    argv = ["ip", "netns", "exec", netns, *agent_command(), "check", str(tmp_path / "m.conf"),
            "--backbone-openvpn", str(tmp_path / "backbone.conf")]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_tun_server_with_two_peer_servers_is_warned_about(netns: str, tmp_path: Path) -> None:
    done = check(netns, tmp_path, "tun")
    assert done.returncode == 0, done.stderr
    assert "warning: mgmt_interface tun1 is a tun device of an OpenVPN server" in done.stderr
    assert "2 peers routing client networks (s2, s3)" in done.stderr


def test_a_tap_device_is_not_warned_about(netns: str, tmp_path: Path) -> None:
    done = check(netns, tmp_path, "tap")
    assert done.returncode == 0, done.stderr
    assert "tun device" not in done.stderr


def test_an_unreadable_backbone_config_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "m.conf").write_text(CONFIG)
    argv = [*agent_command(), "check", str(tmp_path / "m.conf"),
            "--backbone-openvpn", str(tmp_path / "missing.conf")]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "--backbone-openvpn" in done.stderr and "missing.conf" in done.stderr
