"""A real OpenVPN 2.6 server and client in namespaces, with meshroute's hooks wired in.

Checks the whole OpenVPN edge against the real thing: the hook command OpenVPN runs
(``.venv/bin/meshroute hook``) reaches a HookReceiver in this process (a unix socket
works across network namespaces); the management interface (unix socket, password)
answers ``status 3`` and the parser finds the client; a client that stops produces a
client-disconnect at once (explicit-exit-notify).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshroute.lab.openvpn_conf import (
    HookCommand,
    plan_pools,
)
from meshroute.openvpn.events import HookEvent
from meshroute.openvpn.hook_receiver import HookReceiver
from meshroute.openvpn.mgmt import ManagementClient, MgmtEndpoint, read_password_file
from meshroute.openvpn.status import parse_status
from tests.fakes import poll
from tests.functional.openvpn_fixtures import (
    NETWORK,
    NETWORK6,
    Netns,
    Processes,
    logs_on_failure,
    netns_pair,
    ping,
    write_openvpn_configs,
)

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
MESHROUTE = REPO / ".venv" / "bin" / "meshroute"


@dataclass
class Lab:
    ns: Netns
    procs: Processes
    tmp: Path
    events: queue.Queue[HookEvent]
    seen: list[HookEvent]

    def wait_event(self, kind: str, op: str, address: object, timeout: float = 10) -> HookEvent:
        """The first event of that kind/op/address; every event read is kept in seen."""
        deadline = time.monotonic() + timeout
        for event in self.seen:
            if (event.kind, event.op, event.address) == (kind, op, address):
                return event
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} {op} {address} event; got {self.seen}")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(event)
            if (event.kind, event.op, event.address) == (kind, op, address):
                return event


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    events: queue.Queue[HookEvent] = queue.Queue()
    procs = Processes()
    receiver = HookReceiver(tmp_path / "hook.sock", events.put)
    try:
        with netns_pair("mrt-ovpn") as ns:
            try:
                yield Lab(ns, procs, tmp_path, events, [])
            finally:
                procs.stop_all()
    finally:
        receiver.close()


def write_configs(lab: Lab, hook_form: str) -> Path:
    hook = (
        HookCommand(MESHROUTE, lab.tmp / "hook.sock")
        if hook_form == "console-script"
        else HookCommand.fast(lab.tmp / "hook.sock")
    )
    return write_openvpn_configs(lab.tmp, lab.ns, hook)


@pytest.mark.parametrize("hook_form", ["console-script", "python-S-script"])
def test_real_openvpn_hooks_status_and_disconnect(lab: Lab, hook_form: str) -> None:
    with logs_on_failure(lab.procs):
        check_hooks_status_and_disconnect(lab, hook_form)


def check_hooks_status_and_disconnect(lab: Lab, hook_form: str) -> None:
    mgmt_sock = write_configs(lab, hook_form)
    pool = plan_pools(NETWORK, 3, NETWORK6)[1]
    lab.procs.start(
        "server", lab.ns.server, ["openvpn", "--config", str(lab.tmp / "server.conf")],
        lab.tmp / "server.log",
    )  # fmt: skip
    poll(mgmt_sock.exists, 10, "the server's management socket")
    started = int(time.time())
    client = lab.procs.start(
        "client", lab.ns.client, ["openvpn", "--config", str(lab.tmp / "client.conf")],
        lab.tmp / "client.log",
    )  # fmt: skip

    # The first client gets the first address of this server's pool (v6: same host part).
    v4, v6 = pool.pool_start, pool.pool_start6
    connect = lab.wait_event("client-connect", "connect", v4)
    assert (connect.common_name, connect.address6) == ("cli1", v6)
    assert connect.real_address is not None
    assert connect.real_address.startswith(f"{lab.ns.client_ip}:")
    add4 = lab.wait_event("learn-address", "add", v4)
    add6 = lab.wait_event("learn-address", "add", v6)
    assert add4.common_name == add6.common_name == "cli1"
    assert lab.seen.index(connect) < lab.seen.index(add4)  # OpenVPN's order
    assert connect.connected_since is not None
    assert started - 5 <= connect.connected_since <= time.time() + 1

    mgmt = ManagementClient(MgmtEndpoint.unix(mgmt_sock), read_password_file(lab.tmp / "mgmt.pw"))
    report = parse_status(mgmt.fetch_status())
    assert report.problems == ()
    (session,) = report.sessions
    assert (session.common_name, session.virtual_address, session.virtual_address6) == (
        "cli1",
        v4,
        v6,
    )
    assert session.connected_since == connect.connected_since
    assert session.real_address == connect.real_address

    # The data channel works both ways (and the server finished setting the client
    # up, so the exit notification below is not lost to a half-open session).
    poll(lambda: ping(lab.ns.client, pool.server_address), 10, "ping over the tunnel")
    lab.procs.stop(client)  # SIGTERM: the client sends its exit notification
    # The server closes the session 5 s after the client's exit notification.
    disconnect = lab.wait_event("client-disconnect", "disconnect", v4, timeout=12)
    assert disconnect.common_name == "cli1"
    assert disconnect.connected_since == connect.connected_since
    # No wait for learn-address delete: OpenVPN's route reaper sends it minutes later
    # (it sweeps a slice of its hash table per wakeup), so meshroute must not need it.
    assert poll(lambda: parse_status(mgmt.fetch_status()).sessions == (), 5, "empty status")
