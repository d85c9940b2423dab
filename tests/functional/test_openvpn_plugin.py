"""A real OpenVPN 2.6 server with meshroute's plugin, and a real client.

The same checks as the script hooks' test (``test_openvpn_real.py``, which keeps
covering the fallback), with ``plugin meshroute-plugin.so SOCKET`` instead of the
three script lines: OpenVPN loads this checkout's plugin (built fresh for the
test), and client-connect, learn-address add (IPv4 and IPv6) and client-disconnect
reach a HookReceiver in this process, in OpenVPN's order, with the values the
management interface reports; OpenVPN's log shows the plugin's own lines.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meshroute.lab.openvpn_conf import PluginHook, plan_pools
from meshroute.openvpn.mgmt import ManagementClient, MgmtEndpoint, read_password_file
from meshroute.openvpn.status import parse_status
from tests.fakes import poll
from tests.functional.openvpn_fixtures import (
    NETWORK,
    NETWORK6,
    logs_on_failure,
    ping,
    write_openvpn_configs,
)
from tests.functional.plugin_fixtures import build_plugin
from tests.functional.test_openvpn_real import Lab, lab  # noqa: F401 - the fixture

pytestmark = pytest.mark.functional


def test_real_openvpn_with_the_plugin(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> None:  # noqa: F811
    library = build_plugin(tmp_path_factory.mktemp("plugin"))
    with logs_on_failure(lab.procs):
        check_plugin_events(lab, library)


def check_plugin_events(box: Lab, library: Path) -> None:
    mgmt_sock = write_openvpn_configs(box.tmp, box.ns, PluginHook(library, box.tmp / "hook.sock"))
    conf = (box.tmp / "server.conf").read_text()
    assert f"plugin {library} {box.tmp / 'hook.sock'}" in conf
    assert "script-security" not in conf and "learn-address" not in conf
    pool = plan_pools(NETWORK, 3, NETWORK6)[1]
    log = box.tmp / "server.log"
    server = box.procs.start(
        "server", box.ns.server, ["openvpn", "--config", str(box.tmp / "server.conf")], log
    )
    poll(mgmt_sock.exists, 10, "the server's management socket")
    started = int(time.time())
    client = box.procs.start(
        "client", box.ns.client, ["openvpn", "--config", str(box.tmp / "client.conf")],
        box.tmp / "client.log",
    )  # fmt: skip

    v4, v6 = pool.pool_start, pool.pool_start6
    connect = box.wait_event("client-connect", "connect", v4)
    assert (connect.common_name, connect.address6) == ("cli1", v6)
    assert connect.real_address is not None
    assert connect.real_address.startswith(f"{box.ns.client_ip}:")
    add4 = box.wait_event("learn-address", "add", v4)
    add6 = box.wait_event("learn-address", "add", v6)
    assert add4.common_name == add6.common_name == "cli1"
    assert box.seen.index(connect) < box.seen.index(add4) < box.seen.index(add6)
    assert connect.connected_since is not None
    assert started - 5 <= connect.connected_since <= time.time() + 1
    assert add4.connected_since == connect.connected_since  # time_unix is in the plugin's env

    mgmt = ManagementClient(MgmtEndpoint.unix(mgmt_sock), read_password_file(box.tmp / "mgmt.pw"))
    (session,) = parse_status(mgmt.fetch_status()).sessions
    assert (session.virtual_address, session.virtual_address6) == (v4, v6)
    assert session.connected_since == connect.connected_since
    assert session.real_address == connect.real_address

    poll(lambda: ping(box.ns.client, pool.server_address), 10, "ping over the tunnel")
    box.procs.stop(client)
    disconnect = box.wait_event("client-disconnect", "disconnect", v4, timeout=12)
    assert (disconnect.common_name, disconnect.address6) == ("cli1", v6)
    assert disconnect.connected_since == connect.connected_since
    box.procs.stop(server)
    text = log.read_text(errors="replace")
    assert f"sending learn-address, client-connect and client-disconnect to {box.tmp}" in text
    assert "events sent, 0 dropped" in text  # the plugin's close line
    assert "plugin call failed" not in text
