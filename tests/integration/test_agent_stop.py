"""How a real agent process stops: SIGTERM changes no route, `meshroute leave` withdraws.

`systemctl restart` is SIGTERM then a start; it must change no route on any peer
(DESIGN rule 5). Withdrawing at once is the explicit `meshroute leave`.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.fakes import poll
from tests.integration.conftest import Broker
from tests.integration.mesh import FAST, REPO, Mesh, backbone, running_mesh

pytestmark = pytest.mark.integration

HOLD = float(FAST["hold_time"])
HOST_A, HOST_B = "10.100.100.50", "10.100.100.60"


@pytest.fixture
def mesh(rabbit: Broker, tmp_path) -> Iterator[Mesh]:
    with running_mesh(rabbit, tmp_path, "stop") as m:
        yield m


def test_sigterm_then_start_within_the_hold_time_changes_no_route(
    mesh: Mesh, tmp_path, monkeypatch
):
    a, b, c = list(mesh.agents.values())
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # systemd's end, for b
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    a.connect(HOST_A, "host2")
    b.connect(HOST_B, "host3")
    wanted = {HOST_A: backbone(1), HOST_B: backbone(2)}
    poll(lambda: c.routes() == wanted, 5, "both routes on c")
    assert b.signal(signal.SIGTERM) == 0  # `systemctl restart`: stop ...
    b.start()  # ... and start, same sessions at its OpenVPN server
    deadline = time.monotonic() + 2 * HOLD
    while time.monotonic() < deadline:  # watch the peers' kernels through the restart
        assert c.routes() == wanted
        assert a.routes() == {HOST_B: backbone(2)}
        time.sleep(0.05)
    b.wait_ready()
    assert c.routes() == wanted
    said = []
    while not ({"READY=1", "WATCHDOG=1"} <= set(said) and any("STATUS=" in x for x in said)):
        said += notify.recv(4096).decode().splitlines()
    ready = said.index("READY=1")
    assert said[ready + 1].startswith("STATUS=connected;")
    notify.close()


def test_leave_withdraws_at_once_and_exits_0(mesh: Mesh):
    a, b, c = list(mesh.agents.values())
    b.connect(HOST_B, "host3")
    poll(lambda: c.routes() == {HOST_B: backbone(2)}, 5, "b's route on c")
    asked = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "meshroute", "leave", "--socket", str(b.control)],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "said goodbye" in done.stdout
    poll(lambda: c.routes() == {} and a.routes() == {}, HOLD, "b's route withdrawn")
    assert time.monotonic() - asked < HOLD - 1  # at once, not after the hold time
    assert b.proc is not None and b.proc.wait(timeout=5) == 0
