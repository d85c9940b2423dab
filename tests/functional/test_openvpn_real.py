"""A real OpenVPN 2.6 server and client in namespaces, with meshroute's hooks wired in.

Checks the whole OpenVPN edge against the real thing: the hook command OpenVPN runs
(``.venv/bin/meshroute hook``) reaches a HookReceiver in this process (a unix socket
works across network namespaces); the management interface (unix socket, password)
answers ``status 3`` and the parser finds the client; a client that stops produces a
client-disconnect at once (explicit-exit-notify).
"""

from __future__ import annotations

import ipaddress
import queue
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshroute.lab.openvpn_conf import (
    ClientConf,
    HookCommand,
    ServerConf,
    plan_pools,
    render_client_config,
    render_server_config,
)
from meshroute.lab.pki import make_pki
from meshroute.openvpn.events import HookEvent
from meshroute.openvpn.hook_receiver import HookReceiver
from meshroute.openvpn.mgmt import ManagementClient, MgmtEndpoint, read_password_file
from meshroute.openvpn.status import parse_status
from tests.functional.openvpn_fixtures import Netns, Processes, logs_on_failure, netns_pair, poll

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
MESHROUTE = REPO / ".venv" / "bin" / "meshroute"
NETWORK = ipaddress.IPv4Network("10.100.100.0/24")
NETWORK6 = ipaddress.IPv6Network("fd00:100::/64")


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


def ping(netns: str, address: object) -> bool:
    argv = ["ip", "netns", "exec", netns, "ping", "-c1", "-W1", "-q", str(address)]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def write_configs(lab: Lab, hook_form: str) -> Path:
    pki = make_pki(lab.tmp / "pki", ["srv1"], ["cli1"])
    password_file = lab.tmp / "mgmt.pw"
    password_file.write_text("s3cret pass\n")
    mgmt_sock = lab.tmp / "mgmt.sock"
    server = ServerConf(
        name="srv1",
        dev="mrtun-s",
        port=1194,
        local=lab.ns.server_ip,
        network=NETWORK,
        network6=NETWORK6,
        pool=plan_pools(NETWORK, 3, NETWORK6)[1],
        ca=pki.ca_cert,
        cert=pki.servers["srv1"].cert,
        key=pki.servers["srv1"].key,
        tls_crypt=pki.tls_crypt_key,
        management=MgmtEndpoint.unix(mgmt_sock),
        management_password_file=password_file,
        hook=(
            HookCommand(MESHROUTE, lab.tmp / "hook.sock")
            if hook_form == "console-script"
            else HookCommand.fast(lab.tmp / "hook.sock")
        ),
    )
    client = ClientConf(
        name="cli1",
        dev="mrtun-c",
        remotes=((lab.ns.server_ip, 1194),),
        ca=pki.ca_cert,
        cert=pki.clients["cli1"].cert,
        key=pki.clients["cli1"].key,
        tls_crypt=pki.tls_crypt_key,
    )
    (lab.tmp / "server.conf").write_text(render_server_config(server))
    (lab.tmp / "client.conf").write_text(render_client_config(client))
    return mgmt_sock


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
