"""Three real agents on a real RabbitMQ node, each programming a real kernel table.

Every assertion reads the kernels with iproute2, not the agents' own view.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pika
import pytest

from meshroute.core import codec
from meshroute.core.model import ClaimRecord, Delta, Header, parse_address
from tests.fakes import poll
from tests.integration.conftest import Broker
from tests.integration.mesh import Mesh, backbone, running_mesh

pytestmark = pytest.mark.integration

HOST = "10.100.100.50"


@pytest.fixture
def mesh(rabbit: Broker, tmp_path) -> Iterator[Mesh]:
    # each test on an exchange (and agents) of its own
    with running_mesh(rabbit, tmp_path, "mesh") as m:
        yield m


def trio(m: Mesh):
    return list(m.agents.values())


def all_routes(m: Mesh) -> dict[str, dict[str, str]]:
    return {a.name: a.routes() for a in m.agents.values()}


def test_routes_follow_a_client_and_ignore_a_late_replay(mesh: Mesh, rabbit: Broker):
    a, b, c = trio(mesh)
    a.connect(HOST, "host2")
    poll(
        lambda: b.routes().get(HOST) == backbone(1) and c.routes().get(HOST) == backbone(1),
        5, "the route toward a on b and c",
    )  # fmt: skip
    assert a.routes() == {}
    [row] = a.query("table")["claims"]
    stale = ClaimRecord(parse_address(HOST), "host2", row["connected_since"], row["stamp"])
    epoch = a.query("health")["epoch"]

    time.sleep(1.1)  # the move happens in a later second
    c.connect(HOST, "host2")  # a still lists its stale session (keepalive not expired)
    poll(
        lambda: a.routes().get(HOST) == backbone(3) and b.routes().get(HOST) == backbone(3),
        5, "the routes to follow the client to c",
    )  # fmt: skip
    assert c.routes() == {}

    # A late replay of a's old connect, sent with a's own broker credentials (a
    # plain publisher: a's queue is exclusive to the running agent a).
    replay = Delta(Header(a.name, epoch, 1), stale.address, stale)
    with pika.BlockingConnection(pika.URLParameters(a.url)) as conn:
        props = pika.BasicProperties(type="delta", user_id=a.name, message_id="replay")
        conn.channel().basic_publish(mesh.exchange, "", codec.encode(replay), props)
    before = all_routes(mesh)
    time.sleep(2.5)  # several polls, heartbeats and a resync later
    assert all_routes(mesh) == before
    assert before[b.name][HOST] == backbone(3)


def test_kill_minus_nine_withdraws_after_hold_time_only_its_routes(mesh: Mesh):
    a, b, c = trio(mesh)
    a.connect(HOST, "host2")
    b.connect("10.100.100.60", "host3")
    poll(lambda: c.routes() == {HOST: backbone(1), "10.100.100.60": backbone(2)}, 5,
               "both routes on c")  # fmt: skip
    killed_at = time.monotonic()
    b.signal(signal.SIGKILL)
    time.sleep(1.5)  # within the hold time: nothing changes yet
    assert c.routes() == {HOST: backbone(1), "10.100.100.60": backbone(2)}
    poll(lambda: c.routes() == {HOST: backbone(1)} and a.routes() == {}, 6,
         "b's route withdrawn on a and c, a's kept on c")  # fmt: skip
    assert time.monotonic() - killed_at < 3 + 1 + 1.5  # hold time + 1 s (+ polling slack)


def test_restart_within_hold_time_changes_no_route_on_peers(mesh: Mesh):
    a, b, c = trio(mesh)
    a.connect(HOST, "host2")
    b.connect("10.100.100.60", "host3")
    wanted = {HOST: backbone(1), "10.100.100.60": backbone(2)}
    poll(lambda: c.routes() == wanted, 5, "both routes on c")
    b_routes = b.routes()
    b.signal(signal.SIGKILL)
    b.start()  # same sessions at its OpenVPN server, a new epoch
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # watch the kernels through the restart
        assert c.routes() == wanted
        assert a.routes() == {"10.100.100.60": backbone(2)}
        time.sleep(0.05)
    b.wait_ready()
    assert b.routes() == b_routes
    assert b.query("peers")["peers"][0]["state"] == "up"


def test_broker_outage_removes_no_route_and_agents_reconnect(mesh: Mesh, rabbit: Broker):
    a, b, c = trio(mesh)
    a.connect(HOST, "host2")
    poll(lambda: b.routes().get(HOST) == backbone(1), 5, "route on b")
    before = all_routes(mesh)
    node = rabbit.require_node()
    node.stop_app()
    try:
        deadline = time.monotonic() + 3 * 2 + 1  # longer than twice the hold time
        while time.monotonic() < deadline:
            assert all_routes(mesh) == before
            time.sleep(0.2)
        assert all(agent.query("health")["frozen"] for agent in (a, b, c))
        c.connect("10.100.100.70", "host4")  # a client arrives during the outage
    finally:
        node.start_app()
    for agent in (a, b, c):
        poll(lambda agent=agent: agent.query("health")["broker_connected"], 30,
                   f"{agent.name} to reconnect by itself")  # fmt: skip
    poll(lambda: a.routes().get("10.100.100.70") == backbone(3), 10, "convergence")
    assert b.routes() == {HOST: backbone(1), "10.100.100.70": backbone(3)}
