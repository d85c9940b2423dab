"""Skewed wall clocks on real agent processes (libfaketime), a real broker, real kernels.

Issue 7's third scenario, end to end: server A's clock runs 60 s ahead while server B
is cut off from the broker; the client moves from A to B. A still lists its stale
session, stamped a minute "later" than B's. Before the winner rule used OpenVPN's
Last Ref, A's stale session won on every agent after the heal, and the client was
unreachable until A's OpenVPN reaped the session (up to 120 s).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshroute.lab.rabbitmq import agent_permissions
from tests.fakes import poll
from tests.integration.conftest import Broker
from tests.integration.mesh import Mesh, backbone, running_mesh

pytestmark = pytest.mark.integration

HOST = "10.100.100.60"


@pytest.fixture
def skewed(rabbit: Broker, tmp_path) -> Iterator[Mesh]:
    with running_mesh(rabbit, tmp_path, "skew", clock_offsets={"a": 60}) as m:
        yield m


def cut_off(rabbit: Broker, user: str) -> None:
    """The agent can no longer reach the broker: its permissions go, its connection too."""
    node = rabbit.require_node()
    node.ctl("clear_permissions", "-p", "/", user)
    for line in node.ctl("list_connections", "pid", "user").splitlines():
        pid, _, name = line.partition("\t")
        if name.strip() == user:
            node.ctl("close_connection", pid.strip(), "test: cut off")


def reconnect(rabbit: Broker, user: str, exchange: str) -> None:
    perms = agent_permissions(user, exchange)
    rabbit.require_node().ctl(
        "set_permissions", "-p", "/", user, perms.configure, perms.write, perms.read
    )


def test_a_clock_a_minute_ahead_cannot_keep_a_client_that_moved(skewed: Mesh, rabbit: Broker):
    a, b, c = skewed.agents.values()
    cut_off(rabbit, b.name)
    poll(lambda: not (b.query("health") or {}).get("broker_connected"), 10, "b cut off")
    a.connect(HOST, "roamer", live=True)  # stamped with a's clock, a minute ahead
    poll(lambda: c.routes().get(HOST) == backbone(a.index), 10, "c to route via a")
    b.connect(HOST, "roamer", live=True)  # the client moves to b while b is cut off
    a.went_silent(HOST)  # a keeps listing the stale session; nothing arrives there
    reconnect(rabbit, b.name, skewed.exchange)
    want = backbone(b.index)
    poll(
        lambda: c.routes().get(HOST) == want and a.routes().get(HOST) == want,
        20,
        "every other server to route the client via b",
    )
    assert HOST not in b.routes()
