"""A real OpenVPN 2.6 server with a site router client (``iroute``): issue 10.

The client's ccd file gives it an IPv4 and an IPv6 subnet. OpenVPN must run
``learn-address add SUBNET cli1`` for each (meshroute's hook turns them into subnet
events), and ``status 3`` must list them in its ROUTING_TABLE, paired by
:func:`meshroute.openvpn.status.routed_subnets` with the client's session.
"""

from __future__ import annotations

import ipaddress
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshroute.lab.openvpn_conf import HookCommand, PluginHook
from meshroute.openvpn.events import HookEvent
from meshroute.openvpn.hook_receiver import HookReceiver
from meshroute.openvpn.mgmt import ManagementClient, MgmtEndpoint, read_password_file
from meshroute.openvpn.status import parse_status, routed_subnets
from tests.fakes import poll
from tests.functional.openvpn_fixtures import (
    Processes,
    logs_on_failure,
    netns_pair,
    write_openvpn_configs,
)
from tests.functional.plugin_fixtures import build_plugin

pytestmark = pytest.mark.functional

SITE = ipaddress.ip_network("192.168.77.0/24")
SITE6 = ipaddress.ip_network("fd77:1::/64")


@pytest.fixture(params=["script", "plugin"])
def world(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Path, Processes, queue.Queue[HookEvent], str]]:
    """The server with the script hook or meshroute's C plugin (both must forward)."""
    sock = tmp_path / "hook.sock"
    hook = (
        HookCommand.fast(sock)
        if request.param == "script"
        else PluginHook(build_plugin(tmp_path / "plugin"), sock)
    )
    events: queue.Queue[HookEvent] = queue.Queue()
    procs = Processes()
    receiver = HookReceiver(tmp_path / "hook.sock", events.put)
    try:
        with netns_pair("mrt-irt") as ns:
            mgmt = write_openvpn_configs(tmp_path, ns, hook)
            ccd = tmp_path / "ccd"
            ccd.mkdir()
            (ccd / "cli1").write_text(f"iroute {SITE.network_address} {SITE.netmask}\n"
                                      f"iroute-ipv6 {SITE6}\n")  # fmt: skip
            with (tmp_path / "server.conf").open("a") as conf:
                conf.write(f"client-config-dir {ccd}\n")
            try:
                with logs_on_failure(procs):
                    procs.start("server", ns.server,
                                ["openvpn", "--config", str(tmp_path / "server.conf")],
                                tmp_path / "server.log")  # fmt: skip
                    poll(mgmt.exists, 10, "the server's management socket")
                    procs.start("client", ns.client,
                                ["openvpn", "--config", str(tmp_path / "client.conf")],
                                tmp_path / "client.log")  # fmt: skip
                    yield tmp_path, procs, events, str(mgmt)
            finally:
                procs.stop_all()
    finally:
        receiver.close()


def subnet_events(events: queue.Queue[HookEvent], want: int, timeout: float) -> list[HookEvent]:
    found: list[HookEvent] = []
    deadline = time.monotonic() + timeout
    while len(found) < want and time.monotonic() < deadline:
        try:
            event = events.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if event.subnet is not None:
            found.append(event)
    return found


def test_learn_address_and_status_report_the_iroute_subnets(world) -> None:
    tmp, procs, events, mgmt_sock = world
    with logs_on_failure(procs):
        found = subnet_events(events, 2, timeout=20)
        assert {(e.op, e.subnet, e.common_name) for e in found} == {
            ("add", SITE, "cli1"),
            ("add", SITE6, "cli1"),
        }
        mgmt = ManagementClient(
            MgmtEndpoint.unix(Path(mgmt_sock)), read_password_file(tmp / "mgmt.pw")
        )
        report = parse_status(mgmt.fetch_status())
        assert report.problems == ()
        (session,) = report.sessions
        listed = {
            (subnet, s.common_name, s.connected_since) for subnet, s, _ in routed_subnets(report)
        }
        assert listed == {
            (SITE, "cli1", session.connected_since),
            (SITE6, "cli1", session.connected_since),
        }
