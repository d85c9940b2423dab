"""A real OpenVPN 2.6 server and client, a real agent, a real broker, a peer agent.

The server's hooks (`meshroute hook`) and its management interface (`status 3` over a
unix socket, with a password) feed the agent; `meshroute table --json` shows the
client; the peer's kernel gets the host route. After a restart the agent finds the
client again through the status poll alone (OpenVPN runs no hook for a client that
is already connected).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meshroute.lab.openvpn_conf import HookCommand, plan_pools
from tests.fakes import poll
from tests.functional.openvpn_fixtures import (
    NETWORK,
    NETWORK6,
    Processes,
    logs_on_failure,
    netns_pair,
    write_openvpn_configs,
)
from tests.integration.conftest import Broker
from tests.integration.mesh import REPO, AgentProc, Mesh, backbone

pytestmark = pytest.mark.integration

MESHROUTE = REPO / ".venv" / "bin" / "meshroute"


def table_json(socket: Path) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "meshroute", "table", "--json", "--socket", str(socket)],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    return json.loads(out.stdout)["claims"] if out.returncode == 0 else []


def test_real_openvpn_client_is_claimed_by_hooks_and_by_the_status_poll(
    rabbit: Broker, tmp_path: Path
) -> None:
    rabbit.require_node()
    exchange = rabbit.unique("ovpn")
    settings = {"announce_interval": "0.5", "hold_time": "3", "status_poll_interval": "1",
                "sync_timeout": "1"}  # fmt: skip
    mesh = Mesh(rabbit, tmp_path, exchange, settings)
    procs = Processes()
    with netns_pair("mrt-iov") as ns, logs_on_failure(procs):
        name = f"srv-{exchange}"
        agent = AgentProc(
            name, 9, ns.server, tmp_path, rabbit.node.add_agent(name, "pw", exchange), exchange,
            {**settings, "client_networks": f"{NETWORK}, {NETWORK6}",
             "openvpn_mgmt_pass_file": str(tmp_path / "mgmt.pw")},
        )  # fmt: skip
        mesh.agents[name] = agent  # stopped and its log printed with the mesh
        try:
            check_claims(mesh, agent, procs, ns, tmp_path)
        finally:
            procs.stop_all()
            mesh.close()
            print(mesh.logs())


def check_claims(mesh: Mesh, agent: AgentProc, procs: Processes, ns, tmp_path: Path) -> None:
    peer = mesh.add(f"peer-{mesh.exchange}")
    mgmt = write_openvpn_configs(tmp_path, ns, HookCommand(MESHROUTE, agent.hook_socket))
    agent.settings["openvpn_mgmt"] = str(mgmt)
    agent.start()
    procs.start("server", ns.server, ["openvpn", "--config", str(tmp_path / "server.conf")],
                tmp_path / "server.log")  # fmt: skip
    poll(mgmt.exists, 10, "the management socket")
    agent.wait_ready()
    peer.wait_ready()
    procs.start("client", ns.client, ["openvpn", "--config", str(tmp_path / "client.conf")],
                tmp_path / "client.log")  # fmt: skip
    pool = plan_pools(NETWORK, 3, NETWORK6)[1]
    v4, v6 = str(pool.pool_start), str(pool.pool_start6)

    rows = poll(lambda: (r := table_json(agent.control)) and len(r) == 2 and r, 15, "the client")
    by_address = {row["address"]: row for row in rows}
    assert set(by_address) == {v4, v6}
    for row in by_address.values():
        assert (row["common_name"], row["owner"], row["local"]) == ("cli1", agent.name, True)
    health = agent.query("health")
    assert health["counters"]["hook_events"] >= 2 and health["counters"]["polls_ok"] >= 1
    poll(lambda: peer.routes().get(v4) == backbone(9), 5, "the route on the peer")

    # Restart the agent: no hook runs again; the status poll finds the client.
    assert agent.signal(signal.SIGUSR1) == 75  # "restart me" for a supervisor
    agent.start()
    agent.wait_ready()
    again = poll(lambda: table_json(agent.control), 10, "the client after the restart")
    row = {r["address"]: r for r in again}[v4]
    assert row["connected_since"] == by_address[v4]["connected_since"]
    assert row["stamp"] == by_address[v4]["stamp"]  # echoed back by the peer
    assert agent.query("health")["counters"]["hook_events"] == 0
    assert peer.routes().get(v4) == backbone(9)
