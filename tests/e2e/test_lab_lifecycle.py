"""A bigger lab (5 servers, 10 clients), and ``lab down`` leaving nothing behind,
also after ``lab up`` was killed half-way."""

from __future__ import annotations

import signal
import subprocess

import pytest

from meshroute.lab.lab import Lab, agent_command
from tests.e2e.labkit import cli, leftovers, running_lab, unique_prefix
from tests.fakes import poll

pytestmark = pytest.mark.e2e


def test_five_servers_ten_clients_full_matrix_then_down_leaves_nothing() -> None:
    with running_lab("b", servers=5, clients=10) as lab5:
        failed = lab5.failed_pings()
        assert failed == [], failed
        assert lab5.route_problems() == []
        prefix = lab5.prefix
        assert leftovers(prefix)  # the check sees a running lab
    # running_lab ran `lab down`
    assert poll(lambda: leftovers(prefix) == [], 10, "nothing left", step=0.2)


def test_down_after_up_was_killed_half_way_and_twice() -> None:
    prefix = unique_prefix("c")
    lab = Lab(prefix)
    up = subprocess.Popen(
        [*agent_command(), "lab", "up", "--prefix", prefix, "--servers", "2", "--clients", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Kill it once OpenVPN runs and the broker is booting: processes, namespaces,
        # files and a half-started RabbitMQ node are all left for `down` to find.
        poll(lambda: lab.store.exists() and "c1.openvpn" in lab.store.load().pids, 30,
             "lab up to start the clients", step=0.02)  # fmt: skip
        up.send_signal(signal.SIGKILL)
        up.wait(timeout=10)
        assert leftovers(prefix)
        first = cli("lab", "down", "--prefix", prefix)
        assert "removed:" in first.stdout
        assert poll(lambda: leftovers(prefix) == [], 10, "nothing left", step=0.2)
        second = cli("lab", "down", "--prefix", prefix)
        assert "nothing of lab" in second.stdout
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        cli("lab", "down", "--prefix", prefix, check=False)


def test_up_refuses_to_start_over_leftovers_and_commands_need_a_lab() -> None:
    prefix = unique_prefix("d")
    lab = Lab(prefix)
    try:
        lab.paths.root.mkdir(parents=True)
        refused = cli("lab", "up", "--prefix", prefix, check=False)
        assert refused.returncode == 1
        assert "lab down" in refused.stderr
        missing = cli("lab", "status", "--prefix", f"{prefix}z", check=False)
        assert missing.returncode == 1 and "no lab" in missing.stderr
    finally:
        cli("lab", "down", "--prefix", prefix, check=False)
    assert leftovers(prefix) == []
