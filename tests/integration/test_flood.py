"""Floods and oversized messages from one peer, on a real broker (issue 12.6).

A rogue agent (a real broker user of its own, speaking the real protocol) sends a
snapshot far over the per-peer cap, thousands of deltas and a body over the codec's
size limit, while two honest agents route each other's clients. Measured before the
fixes: a 50,000-claim flood took 40-50 s to install, agents expired live peers and
real client routes were down for 4.5-7.4 s. Now: the honest routes never change
(sampled every 50 ms), nobody is expired, and every agent keeps answering.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator

import pytest

from meshroute.bus.amqp import AmqpBus
from meshroute.core import codec
from meshroute.core.model import ClaimRecord, Delta, Header, Heartbeat, Snapshot
from tests.fakes import poll
from tests.integration.conftest import Broker, Recorder
from tests.integration.mesh import FAST, Mesh, backbone, running_mesh

pytestmark = pytest.mark.integration

SETTINGS = {**FAST, "max_claims_per_peer": "2000"}


@pytest.fixture
def pair(rabbit: Broker, tmp_path) -> Iterator[Mesh]:
    with running_mesh(rabbit, tmp_path, "flood", ("a", "b"), SETTINGS) as m:
        yield m


def test_a_flooding_peer_moves_no_honest_route_and_gets_nobody_expired(pair: Mesh, rabbit):
    a, b = pair.agents.values()
    a.connect("10.100.100.10", "alice")
    b.connect("10.100.100.20", "bob")
    want = {a.name: {"10.100.100.20": backbone(2)}, b.name: {"10.100.100.10": backbone(1)}}
    poll(lambda: {x.name: x.routes() for x in (a, b)} == want, 10, "honest routes")

    rogue = f"rogue-{pair.exchange}"
    url = rabbit.require_node().add_agent(rogue, f"pw-{rogue}", pair.exchange)
    bus = AmqpBus([url], rogue, pair.exchange)
    bus.start(Recorder())
    try:
        poll(lambda: bus.connected, 10, "the rogue's bus")
        epoch, seq = int(time.time() * 1000), 0

        def header() -> Header:
            nonlocal seq
            seq += 1
            return Header(rogue, epoch, seq)

        now = int(time.time())
        base = int(ipaddress.ip_address("10.100.0.0"))
        flood = tuple(
            ClaimRecord(ipaddress.ip_address(base + i), f"f{i}", now, now * 1000)
            for i in range(50_000)
        )
        hop = ipaddress.ip_address("10.200.200.99")
        bodies = [codec.encode(Snapshot(header(), hop, None, flood))]  # 25x the cap
        for record in flood[:5000]:  # deltas, each a claim (the first 2,000 admitted)
            bodies.append(codec.encode(Delta(header(), record.address, record)))
        bodies.append(b'{"v":1,"type":"heartbeat","pad":"' + b"x" * (17 * 2**20) + b'"}')
        beat = Heartbeat(header(), hop, None, state_seq=seq, count=0, digest="0" * 16)
        bodies.append(codec.encode(beat))

        started = time.monotonic()
        for i, body in enumerate(bodies):
            bus.publish(body, msg_type="flood", message_id=f"flood-{i}")
        deadline = started + 12.0  # the flood and four hold times after it
        while time.monotonic() < deadline:  # the honest routes never move
            routes = {x.name: x.routes() for x in (a, b)}
            for agent in (a, b):
                honest = {k: v for k, v in routes[agent.name].items() if v != "10.200.200.99"}
                assert honest == want[agent.name], (agent.name, honest)
            time.sleep(0.05)
        for agent in (a, b):
            health = agent.query("health")
            assert health is not None, f"{agent.name} stopped answering"
            peers = {p["name"]: p for p in agent.query("peers")["peers"]}
            other = b.name if agent is a else a.name
            assert peers[other]["state"] == "up", peers[other]
            assert len(agent.routes()) <= 1 + 2000  # the cap holds in the kernel
    finally:
        bus.stop(2)
