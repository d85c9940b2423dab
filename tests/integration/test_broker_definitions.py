"""`meshroute broker definitions` imported into a real node, agents running on it.

A private RabbitMQ node with the management plugin (its own, not the session's
plain node) gets the file the command writes, through ``rabbitmqctl
import_definitions`` exactly as docs/install.md says. Then real agent processes log
in with the passwords from the password directory, on the definitions' vhost, and
route a client; the management HTTP API (read as the monitoring user the file
created) shows each agent as a named connection with meshroute's version, its
queue bound to the exchange under the policy, and the least permissions hold.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pika
import pika.exceptions
import pytest

from meshroute import __version__
from meshroute.bus.definitions import POLICY_NAME
from meshroute.lab.rabbitmq import RabbitNode, free_port
from tests.fakes import poll
from tests.integration.mesh import REPO, AgentProc, Mesh, backbone

pytestmark = pytest.mark.integration

VHOST = "meshroute-defs"
EXCHANGE = "meshroute"
AGENTS = ("bd1", "bd2")
FAST = {"announce_interval": "0.5", "hold_time": "3", "status_poll_interval": "1",
        "sync_timeout": "1", "resync_interval": "5"}  # fmt: skip


class Management:
    """The management HTTP API, read with basic auth."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.base = f"http://127.0.0.1:{port}/api"
        self.auth = base64.b64encode(f"{user}:{password}".encode()).decode()

    def get(self, path: str):
        req = urllib.request.Request(self.base + path)
        req.add_header("Authorization", f"Basic {self.auth}")
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.load(resp)


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[RabbitNode]:
    n = RabbitNode(
        tmp_path_factory.mktemp("rabbit-mgmt"),
        node_name=f"mrt-defs-{os.getpid()}",
        port=free_port(),
        management_port=free_port(),
    )
    try:
        n.start(timeout=90)
        yield n
    finally:
        n.stop()


def run_definitions(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "meshroute", "broker", "definitions", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=30, check=False)


@pytest.fixture(scope="module")
def imported(node: RabbitNode, tmp_path_factory) -> dict[str, str]:
    """Definitions written by the CLI and imported; returns every user's password."""
    tmp = tmp_path_factory.mktemp("defs")
    pw_dir = tmp / "passwords"
    pw_dir.mkdir()
    out = tmp / "definitions.json"
    done = run_definitions(
        tmp, "--agents", ",".join(AGENTS), "--vhost", VHOST, "--exchange", EXCHANGE,
        "--password-dir", str(pw_dir), "--monitoring-user", "ops", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert "PASSWORD" not in out.read_text() and "password_hash" in out.read_text()
    node.ctl("import_definitions", str(out))
    return {p.name: p.read_text().splitlines()[0] for p in pw_dir.iterdir()}


@pytest.fixture
def agents(node: RabbitNode, imported: dict[str, str], tmp_path) -> Iterator[Mesh]:
    mesh = Mesh(None, tmp_path, EXCHANGE, FAST)
    try:
        for index, name in enumerate(AGENTS, start=1):
            netns = f"{mesh._tag}-{name}"
            mesh._make_netns(netns, index)
            url = f"amqp://{name}:{quote(imported[name], safe='')}@127.0.0.1:{node.port}/{VHOST}"
            agent = AgentProc(name, index, netns, tmp_path, url, EXCHANGE, FAST)
            mesh.agents[name] = agent
            agent.serve_openvpn()
            agent.start()
        for agent in mesh.agents.values():
            agent.wait_ready()
        yield mesh
    finally:
        mesh.close()
        print(mesh.logs())


def test_agents_run_on_imported_definitions_and_show_in_the_management_api(
    node: RabbitNode, imported: dict[str, str], agents: Mesh
) -> None:
    first, second = agents.agents.values()
    first.connect("10.100.100.77", "host77")
    poll(lambda: second.routes().get("10.100.100.77") == backbone(1), 15, "route on bd2")

    api = Management(node.management_port, "ops", imported["ops"])

    def named_connections() -> dict[str, dict]:
        conns = api.get("/connections")
        return {c["client_properties"].get("connection_name"): c for c in conns}

    def all_named() -> dict[str, dict]:
        conns = named_connections()
        return conns if all(f"meshroute agent {n}" in conns for n in AGENTS) else {}

    conns = poll(all_named, 20, "both agents in /api/connections")
    for name in AGENTS:
        conn = conns[f"meshroute agent {name}"]
        assert conn["user"] == name
        assert conn["vhost"] == VHOST
        assert conn["client_properties"]["product"] == "meshroute"
        assert conn["client_properties"]["version"] == __version__

    bindings = api.get(f"/exchanges/{quote(VHOST, safe='')}/{EXCHANGE}/bindings/source")
    bound = {b["destination"] for b in bindings if b["destination_type"] == "queue"}
    assert bound == {f"meshroute.{n}" for n in AGENTS}
    for name in AGENTS:
        queue = poll(
            lambda n=name: (q := api.get(f"/queues/{quote(VHOST, safe='')}/meshroute.{n}"))
            and q.get("policy") and q,
            20, f"the policy applied to meshroute.{name}",
        )  # fmt: skip
        assert queue["policy"] == POLICY_NAME
        # exclusive: it dies with its connection or node (docs/reliability.md)
        assert queue["durable"] is False and queue["exclusive"] is True
    exchange = api.get(f"/exchanges/{quote(VHOST, safe='')}/{EXCHANGE}")
    assert exchange["type"] == "fanout" and exchange["durable"] is True


def test_agent_users_have_least_privilege(
    node: RabbitNode, imported: dict[str, str], agents: Mesh
) -> None:
    # An agent user has no tags: it cannot log in to the management UI.
    with pytest.raises(urllib.error.HTTPError) as err:
        Management(node.management_port, "bd1", imported["bd1"]).get("/overview")
    assert err.value.code == 401
    # It cannot consume another agent's queue, nor log in to another vhost.
    params = pika.URLParameters(
        f"amqp://bd1:{quote(imported['bd1'], safe='')}@127.0.0.1:{node.port}/{VHOST}"
    )
    conn = pika.BlockingConnection(params)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            conn.channel().basic_get("meshroute.bd2")
        assert closed.value.reply_code == 403
    finally:
        conn.close()
    other = pika.URLParameters(
        f"amqp://bd1:{quote(imported['bd1'], safe='')}@127.0.0.1:{node.port}/%2F"
    )
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        pika.BlockingConnection(other)


def test_reimport_keeps_passwords_from_the_password_dir(
    node: RabbitNode, imported: dict[str, str], tmp_path
) -> None:
    pw_dir = tmp_path / "pw"
    pw_dir.mkdir()
    (pw_dir / "bd1").write_text(imported["bd1"] + "\n")
    out = tmp_path / "again.json"
    done = run_definitions(
        tmp_path, "--agents", "bd1", "--vhost", VHOST, "--password-dir", str(pw_dir),
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"read {pw_dir / 'bd1'}" in done.stderr
    node.ctl("import_definitions", str(out))
    node.ctl("authenticate_user", "bd1", imported["bd1"])
