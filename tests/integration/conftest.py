"""Integration fixtures: a private RabbitMQ node for the session, agents on it.

The session starts its own node (own name, ports, epmd and data dir under a tmp
dir; about 4 s) and stops it by pid at the end, also when tests fail. Set
``MESHROUTE_TEST_AMQP_URL`` to use an existing broker instead: every agent then
connects with that URL's user (no per-agent users are created) and the tests that
need the node itself (rabbitmqctl, broker restart) are skipped; CI never sets it.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from meshroute.bus.amqp import AmqpBus
from meshroute.bus.base import Envelope
from meshroute.lab.rabbitmq import RabbitNode, free_port

EXCHANGE = "meshroute"


@dataclass
class Broker:
    """The broker under test: a node of our own, or just a URL given by env."""

    node: RabbitNode | None
    url: str | None = None
    _names: Iterator[int] = field(default_factory=itertools.count)

    def agent_url(self, name: str) -> str:
        if self.node is None:
            assert self.url is not None
            return self.url
        return self.node.add_agent(name, f"pw-{name}", EXCHANGE)

    def require_node(self) -> RabbitNode:
        if self.node is None:
            pytest.skip("needs the session's own node (MESHROUTE_TEST_AMQP_URL is set)")
        return self.node

    def unique(self, prefix: str) -> str:
        return f"{prefix}{next(self._names)}"


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory) -> Iterator[Broker]:
    url = os.environ.get("MESHROUTE_TEST_AMQP_URL")
    if url:
        yield Broker(node=None, url=url)
        return
    node = RabbitNode(
        tmp_path_factory.mktemp("rabbit"),
        node_name=f"mrt-it-{os.getpid()}",
        port=free_port(),
    )
    try:
        node.start(timeout=60)
        yield Broker(node=node)
    finally:
        node.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """Three clustered RabbitMQ nodes in namespaces (see tests/integration/cluster.py)."""
    from tests.integration.cluster import Cluster

    the_cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        the_cluster.start()
        yield the_cluster
    finally:
        the_cluster.stop()


class Recorder:
    """A bus handler that records everything, thread-safely, and can wait for it."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.connection: list[bool] = []
        self.threads: set[str] = set()
        self.on_body: Callable[[bytes], None] | None = None
        self._cond = threading.Condition()

    def on_message(self, envelope: Envelope) -> None:
        with self._cond:
            self.envelopes.append(envelope)
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()
        if self.on_body is not None:
            self.on_body(envelope.body)

    def on_connection(self, up: bool) -> None:
        with self._cond:
            self.connection.append(up)
            self._cond.notify_all()

    @property
    def bodies(self) -> list[bytes]:
        with self._cond:
            return [e.body for e in self.envelopes]

    def wait_for(self, predicate: Callable[[Recorder], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out: bodies={self.envelopes[-5:]} connection={self.connection}"
                    )
                self._cond.wait(left)


@dataclass
class Agent:
    name: str
    url: str
    bus: AmqpBus
    rec: Recorder

    def send(self, body: bytes, *, msg_type: str = "delta", to: str | None = None) -> None:
        self.bus.publish(body, msg_type=msg_type, message_id=body.decode(), to=to)


@pytest.fixture
def agents(rabbit: Broker) -> Iterator[Callable[..., Agent]]:
    """Start connected agents (unique names per test); stops them all at the end."""
    started: list[Agent] = []

    def start(prefix: str = "ag", **kwargs) -> Agent:
        name = rabbit.unique(prefix)
        url = rabbit.agent_url(name)
        rec = Recorder()
        bus = AmqpBus([url], name, EXCHANGE, **kwargs)
        agent = Agent(name, url, bus, rec)
        started.append(agent)
        bus.start(rec)
        rec.wait_for(lambda r: r.connection == [True])
        return agent

    yield start
    for agent in started:
        agent.bus.stop(2)
