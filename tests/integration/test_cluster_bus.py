"""AmqpBus on a 3-node RabbitMQ cluster: losing any node, a deleted exchange, old queues.

The buses run in a namespace of their own on the cluster's hub (see cluster.py);
each starts on a different node. Figures are printed (``pytest -s``) and recorded in
docs/reliability.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pika
import pytest

from meshroute.bus.amqp import AmqpBus, QueueSettings, queue_name
from tests.integration.cluster import (
    FAULTED_NODES,
    HUB_NET,
    NODES,
    Cluster,
    in_netns,
)
from tests.integration.conftest import Recorder
from tests.integration.mesh import ip

pytestmark = pytest.mark.integration

EXCHANGE = "meshroute"


class TimedRecorder(Recorder):
    """A Recorder that also keeps when each connection change happened."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[tuple[float, bool]] = []

    def on_connection(self, up: bool) -> None:
        self.changes.append((time.monotonic(), up))
        super().on_connection(up)

    def outages(self) -> list[float]:
        """Seconds from each loss of the broker to the next consuming again."""
        down, spans = None, []
        for at, up in self.changes:
            if not up:
                down = at
            elif down is not None:
                spans.append(at - down)
                down = None
        return spans


@pytest.fixture(scope="module")
def clients(cluster: Cluster) -> Iterator[str]:
    """A namespace on the hub where the test's buses live."""
    ns = f"{cluster.tag}-cli"
    ip("netns", "add", ns)
    cluster.attach(ns, f"{HUB_NET}.200")
    yield ns
    ip("netns", "del", ns)


class Buses:
    def __init__(self, cluster: Cluster, ns: str) -> None:
        self.cluster, self.ns = cluster, ns
        self.started: list[tuple[str, AmqpBus, TimedRecorder]] = []
        self._count = 0

    def start(self, first: int, kind: str = "exclusive", **kwargs):
        self._count += 1
        name = f"bus{self._count}-{int(time.time() * 1000) % 100000}"
        urls = self.cluster.add_agent(name, first)
        rec = TimedRecorder()
        bus = AmqpBus(urls, name, EXCHANGE, queue=QueueSettings(kind=kind), **kwargs)
        with in_netns(self.ns):
            bus.start(rec)
        self.started.append((name, bus, rec))
        rec.wait_for(lambda r: r.connection == [True], timeout=30)
        return name, bus, rec

    def stop(self) -> None:
        for _, bus, _ in self.started:
            bus.stop(2)


@pytest.fixture
def buses(cluster: Cluster, clients: str) -> Iterator[Buses]:
    b = Buses(cluster, clients)
    yield b
    b.stop()


def ctl_conn(cluster: Cluster, ns: str, name: str):
    """A blocking pika connection from ``ns`` as agent ``name`` (for test actions)."""
    url = cluster.urls(name, f"pw-{name}", first=next(
        k for k in range(1, NODES + 1) if cluster.nodes[k - 1].is_running()))[0]  # fmt: skip
    with in_netns(ns):
        return pika.BlockingConnection(pika.URLParameters(url))


def hear_each_other(group, timeout: float = 10.0) -> float:
    """Every bus publishes a marker every 0.1 s (as heartbeats go) until every other
    bus heard one; the seconds that took. A queue re-made after a reconnect misses
    what was sent before it existed, so one-shot markers would prove nothing."""
    started, tag = time.monotonic(), f"m{time.monotonic_ns()}"
    markers = {name: f"{tag}-{name}".encode() for name, _, _ in group}

    def all_heard() -> bool:
        return all(set(markers.values()) <= set(rec.bodies) for _, _, rec in group)

    while not all_heard():
        if time.monotonic() - started > timeout:
            missing = {n: [m for m in markers.values() if m not in r.bodies] for n, _, r in group}
            raise AssertionError(f"not heard after {timeout}s: {missing}")
        for name, bus, _ in group:
            bus.publish(markers[name], msg_type="heartbeat", message_id=tag)
        time.sleep(0.1)
    return time.monotonic() - started


# The shipped design (exclusive queues) always; quorum queues, the design measured
# against it and rejected (docs/reliability.md), only when asked for: it adds ~3 min
# and decides nothing at run time.
KINDS = ["exclusive", "quorum"] if os.environ.get("MESHROUTE_MEASURE_QUORUM") else ["exclusive"]
# CI kills a node here; a stopped and a partitioned node (~33 s more) are covered in CI
# by the real agents of test_cluster_agents.py (each asserts every agent consuming
# again within 5 s, with a client moving meanwhile). The measured runs take all three.
_MEASURED = os.environ.get("MESHROUTE_MEASURE_QUORUM") or os.environ.get(
    "MESHROUTE_CLUSTER_EACH_NODE"
)
ACTIONS = ["stop", "kill", "partition"] if _MEASURED else ["kill"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("action", ACTIONS)
def test_losing_any_node_reconnects_every_bus_within_5s(cluster, buses, action, kind, request):
    if (kind, action) == ("quorum", "partition"):  # the measurement behind the design
        request.applymarker(pytest.mark.xfail(strict=True, reason="quorum queues: ~7 s"))
    trio = [buses.start(first=k, kind=kind) for k in range(1, NODES + 1)]
    hear_each_other(trio)
    figures = []
    for k in FAULTED_NODES:
        affected = trio[k - 1][2]
        lost_before = len([c for c in affected.changes if not c[1]])
        acted = time.monotonic()
        cluster.fault(k, action)
        affected.wait_for(lambda r, n=lost_before: r.connection.count(False) > n, 30)
        noticed = affected.changes[-1][0] - acted
        affected.wait_for(lambda r: r.connection[-1] is True, 30)
        reconnect = affected.outages()[-1]
        heard = hear_each_other(trio, 15)
        figures.append((k, noticed, reconnect, heard))
        cluster.recover(k, action)
    for k, noticed, reconnect, heard in figures:
        print(f"{kind} {action} b{k}: lost after {noticed:.2f}s, consuming again "
              f"{reconnect:.2f}s later, all heard each other {heard:.2f}s after that")  # fmt: skip
    assert all(reconnect < 5 for _, _, reconnect, _ in figures), figures
    assert all(bus.connected for _, bus, _ in trio)


def test_deleted_exchange_heals_on_every_bus(cluster, buses):
    four = [buses.start(first=k % NODES + 1) for k in range(4)]
    hear_each_other(four)
    conn = ctl_conn(cluster, buses.ns, four[0][0])
    try:
        conn.channel().exchange_delete(EXCHANGE)
    finally:
        conn.close()
    took = hear_each_other(four, timeout=10)
    reconnects = [rec.connection.count(False) for _, _, rec in four]
    print(f"exchange deleted: every bus heard every other again {took:.2f}s later "
          f"(reconnects per bus: {reconnects})")  # fmt: skip
    assert took < 5


def test_durable_queue_of_the_old_design_is_replaced(cluster, buses):
    name = f"legacy{int(time.time() * 1000) % 100000}"
    cluster.add_agent(name, 1)
    conn = ctl_conn(cluster, buses.ns, name)
    try:
        conn.channel().queue_declare(queue_name(name), durable=True,
                                     arguments={"x-expires": 600_000})  # fmt: skip
    finally:
        conn.close()
    rec, bus = TimedRecorder(), AmqpBus(cluster.urls(name, f"pw-{name}"), name, EXCHANGE)
    with in_netns(buses.ns):
        bus.start(rec)
    try:
        rec.wait_for(lambda r: r.connection == [True], timeout=15)
        queues = cluster.nodes[0].ctl("list_queues", "name", "durable", "exclusive")
        assert f"{queue_name(name)}\tfalse\ttrue" in queues
    finally:
        bus.stop(2)


def test_arrival_time_is_taken_on_the_bus_thread(buses):
    (_, a, _), (_, _, rec) = buses.start(first=1), buses.start(first=2)
    before = time.monotonic()
    a.publish(b"timed", msg_type="delta", message_id="t")
    rec.wait_for(lambda r: b"timed" in r.bodies)
    envelope = next(e for e in rec.envelopes if e.body == b"timed")
    assert envelope.received_at is not None and before <= envelope.received_at <= time.monotonic()
