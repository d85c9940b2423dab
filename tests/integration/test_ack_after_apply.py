"""A bus message is acked only once applied: a crash mid-batch loses nothing (real broker).

A real agent process (``meshroute agent``'s own code, netlink dataplane in a
namespace) consumes a *durable* queue here, the one queue kind whose unacked
messages outlive the agent, so what the broker considers delivered is exactly what
the agent acked. A peer that never answers a sync request publishes 30,000 claims
as deltas; the agent is SIGKILLed while it is installing them and started again.
Every claim must end up routed: a message acked before its route was in the kernel
would be gone (the broker does not redeliver it, and this peer sends no snapshot).
With the acks sent on delivery (the code before this test) routes were missing.
"""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from meshroute.bus.amqp import AmqpBus
from meshroute.core import codec
from meshroute.core.model import ClaimRecord, Delta, Header, Heartbeat
from tests.fakes import poll
from tests.integration.conftest import Broker, Recorder
from tests.integration.mesh import FAST, REPO, AgentProc, Mesh, ip

pytestmark = pytest.mark.integration

CLAIMS = 30_000
PEER_HOP = "10.200.200.99"
SETTINGS = {
    **FAST,
    "hold_time": "60",  # the peer below heartbeats, but nothing may expire meanwhile
    "client_networks": "10.64.0.0/16",
    "log_level": "info",
}

# The real daemon, with the one change: its queue is durable (QueueSettings kind
# "classic"), so the broker keeps (and redelivers) what the agent did not ack.
DURABLE_AGENT = """
import sys
from meshroute.agent import daemon
from meshroute.bus.amqp import AmqpBus, QueueSettings

def make_bus(config, name):
    return AmqpBus(config.broker_url, name, config.exchange,
                   queue=QueueSettings(kind="classic"))

daemon.make_bus = make_bus
sys.exit(daemon.main(sys.argv[1]))
"""


class DurableAgent(AgentProc):
    def start(self) -> None:
        config = self.write_config()
        command = [sys.executable, "-c", DURABLE_AGENT, str(config)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def route_count(netns: str) -> int:
    return ip("-n", netns, "route", "show", "proto", "201").count("\n")


@pytest.fixture
def agent(rabbit: Broker, tmp_path) -> Iterator[DurableAgent]:
    rabbit.require_node()
    exchange = rabbit.unique("acks")
    mesh = Mesh(rabbit, tmp_path, exchange, SETTINGS)
    name = f"a-{exchange}"
    netns = f"{mesh._tag}-{name}"
    mesh._make_netns(netns, 1)
    url = rabbit.node.add_agent(name, f"pw-{name}", exchange)
    proc = DurableAgent(name, 1, netns, tmp_path, url, exchange, SETTINGS)
    mesh.agents[name] = proc
    proc.serve_openvpn()
    proc.start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        mesh.close()
        print(mesh.logs())


class QuietPeer:
    """A peer that publishes deltas and heartbeats, and never answers a sync request."""

    def __init__(self, rabbit: Broker, exchange: str) -> None:
        self.name = f"peer-{exchange}"
        url = rabbit.require_node().add_agent(self.name, f"pw-{self.name}", exchange)
        self.bus = AmqpBus([url], self.name, exchange)
        self.epoch, self.seq = int(time.time() * 1000), 0
        self.stop = threading.Event()

    def header(self) -> Header:
        self.seq += 1
        return Header(self.name, self.epoch, self.seq)

    def heartbeat(self) -> None:
        hop = ipaddress.ip_address(PEER_HOP)
        beat = Heartbeat(self.header(), hop, None, state_seq=self.seq, count=0, digest="0" * 16)
        self.bus.publish(codec.encode(beat), msg_type="heartbeat", message_id=f"hb-{self.seq}")

    def beat_until_stopped(self) -> None:
        while not self.stop.wait(0.5):
            self.heartbeat()


def test_a_crash_mid_batch_loses_no_claim(agent: DurableAgent, rabbit: Broker):
    peer = QuietPeer(rabbit, agent.exchange)
    peer.bus.start(Recorder())
    beats = threading.Thread(target=peer.beat_until_stopped, daemon=True)
    try:
        poll(lambda: peer.bus.connected, 10, "the peer's bus")
        peer.heartbeat()  # its next hop first
        now = int(time.time())
        base = int(ipaddress.ip_address("10.64.0.0"))
        addresses = [ipaddress.ip_address(base + 1 + i) for i in range(CLAIMS)]
        for i, address in enumerate(addresses):
            record = ClaimRecord(address, f"c{i}", now, now * 1000)
            body = codec.encode(Delta(peer.header(), address, record))
            peer.bus.publish(body, msg_type="delta", message_id=f"d-{i}")
        beats.start()

        poll(lambda: route_count(agent.netns) > 0, 60, "the first routes")
        assert agent.signal(signal.SIGKILL) == -signal.SIGKILL
        at_kill = route_count(agent.netns)
        assert 0 < at_kill < CLAIMS, f"killed too late to test anything: {at_kill} routes"

        agent.start()
        poll(lambda: route_count(agent.netns) >= CLAIMS, 60,
             f"all {CLAIMS} routes after the restart (had {at_kill} at the kill)")  # fmt: skip
        routes = agent.routes()
        assert set(routes) == {str(a) for a in addresses}
        assert set(routes.values()) == {PEER_HOP}
    finally:
        peer.stop.set()
        peer.bus.stop(2)
