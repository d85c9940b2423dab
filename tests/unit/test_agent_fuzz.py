"""Fuzzed bus messages through the whole agent: decode, table, reconcile, kernel (issue 12).

A hostile peer (``evil``, a real broker user) sends mutated messages: every field
replaced by hostile values (absurd integers, stamps and epochs far ahead, addresses
outside the client networks, the honest peer's next hop, the broker's address, our
own next hop, prefixes, wrong types), spoofed origins, flipped bytes. An honest peer
(``p1``) keeps talking meanwhile. After every message the agent ticks and reconciles
into a fake kernel, and these must hold after every step:

- the agent never fails internally (no input is ever dropped as an internal error);
- every route in the kernel is a host route inside the client networks, via a next
  hop inside the backbone that is a peer's admitted hop, never our own;
- the honest peer's messages are never refused and its routes never move, except
  for an address the hostile peer validly claimed (any server may host any client:
  docs/design.md, "Limits");
- every refused message is counted.

CI runs ``MESHROUTE_FUZZ_N`` messages (default 3,000); the documented long run
(docs/reliability.md) is ``MESHROUTE_FUZZ_N=100000``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
from typing import Any

from meshroute.agent.loop import Agent
from meshroute.bus.base import Envelope
from meshroute.bus.memory import MemoryBroker, MemoryBus
from meshroute.core import codec
from meshroute.core.clock import FakeClock
from meshroute.core.engine import AgentCore, CoreSettings
from meshroute.core.model import (
    ClaimRecord,
    Delta,
    Goodbye,
    Header,
    Heartbeat,
    Snapshot,
    SyncRequest,
)
from meshroute.dataplane.fake import FakeDataplane

NETS = (ipaddress.ip_network("10.100.0.0/16"), ipaddress.ip_network("fd10::/64"))
BACKBONE = (ipaddress.ip_network("10.200.0.0/24"), ipaddress.ip_network("fd20::/64"))
OWN_HOP = ipaddress.ip_address("10.200.0.1")
P1_HOP = ipaddress.ip_address("10.200.0.2")
EVIL_HOP = ipaddress.ip_address("10.200.0.3")
BROKER = ipaddress.ip_address("10.200.0.254")
P1_CLIENTS = [ipaddress.ip_address(f"10.100.2.{i}") for i in range(1, 6)]
N = int(os.environ.get("MESHROUTE_FUZZ_N", "3000"))

HOSTILE: list[Any] = [
    None, True, -1, 0, 1, 2**31, 2**63 - 1, 2**63, 2**64 + 5, 1e308, -0.0, "", "x" * 300,
    "\x00", "é" * 200, [], {}, [1, 2], {"a": 1}, "10.100.2.1", "10.100.9.9", "0.0.0.0",
    "::", "10.200.0.2", "10.200.0.1", "10.200.0.254", "10.200.0.77", "fd10::5",
    "10.100.2.1/32", "10.100.0.0/16", "1.2.3.4", "fe80::1%eth0", "p1", "me", "evil",
    "snapshot", "delta", "goodbye", "0" * 16, "f" * 17, 1_800_000_000_000,
]  # fmt: skip


def build() -> tuple[Agent, FakeDataplane, FakeClock]:
    clock = FakeClock(start=100.0, wall_ms=1_800_000_000_000)
    settings = CoreSettings(
        name="me",
        hold_time=15.0,
        announce_interval=5.0,
        sync_timeout=0.0,
        client_networks=NETS,
        max_claims_per_peer=64,
        next_hop=OWN_HOP,
        max_clock_skew=60.0,
        backbone_networks=BACKBONE,
        reserved_hops=(BROKER,),
    )
    core = AgentCore(settings, epoch=clock.wall_ms(), wall_clock=clock.wall_ms)
    kernel = FakeDataplane()
    agent = Agent(
        core,
        bus=MemoryBus(MemoryBroker(), "me"),
        dataplane=kernel,
        status_source=list,
        clock=clock,
    )
    core.start(clock.monotonic())
    core.on_bus_up(clock.monotonic())
    return agent, kernel, clock


class Peer:
    """A peer's side of the wire: headers with increasing seqs, on its own clock."""

    def __init__(self, name: str, clock: FakeClock, hop) -> None:
        self.name, self.clock, self.hop, self.seq = name, clock, hop, 0
        self.epoch = clock.wall_ms() - 5000

    def header(self) -> Header:
        self.seq += 1
        wall = self.clock.wall_ms()
        return Header(self.name, self.epoch, self.seq, clock=wall, sent_ms=wall)

    def claim(self, address) -> ClaimRecord:
        wall = self.clock.wall_ms()
        return ClaimRecord(address, f"c-{address}", wall // 1000 - 60, wall - 60_000)

    def templates(self) -> list[Any]:
        hop6 = ipaddress.ip_address("fd20::3")
        claims = tuple(self.claim(ipaddress.ip_address(f"10.100.3.{i}")) for i in range(1, 4))
        return [
            Snapshot(self.header(), self.hop, hop6, claims),
            Delta(self.header(), claims[0].address, claims[0]),
            Delta(self.header(), P1_CLIENTS[0], self.claim(P1_CLIENTS[0])),
            Heartbeat(self.header(), self.hop, hop6, state_seq=1, count=3, digest="0" * 16),
            SyncRequest(self.header(), target="me"),
            Goodbye(self.header()),
        ]


def mutate(rng: random.Random, body: bytes) -> tuple[bytes, str]:
    """One hostile variant of a valid body, and the broker user it comes from."""
    roll = rng.random()
    if roll < 0.05:
        data = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), "evil"
    obj = json.loads(body)
    if roll < 0.1:
        obj["origin"] = "p1"  # spoofing the honest peer: the broker user says evil
        return json.dumps(obj).encode(), "evil"
    for _ in range(rng.randint(1, 3)):
        target = obj
        if isinstance(obj.get("claims"), list) and obj["claims"] and rng.random() < 0.5:
            target = rng.choice(obj["claims"])
        elif isinstance(obj.get("claim"), dict) and rng.random() < 0.5:
            target = obj["claim"]
        if not isinstance(target, dict):
            target = obj
        key = rng.choice([*target.keys(), "extra"])
        target[key] = rng.choice(HOSTILE)
    return json.dumps(obj).encode(), "evil"


def test_fuzzed_messages_never_hurt_an_honest_peer():
    rng = random.Random(int(os.environ.get("MESHROUTE_FUZZ_SEED", "12345")))
    agent, kernel, clock = build()
    core = agent.core
    p1 = Peer("p1", clock, P1_HOP)
    evil = Peer("evil", clock, EVIL_HOP)

    def deliver(message, user: str) -> None:
        agent._handle_envelopes([Envelope(codec.encode(message), user_id=user)])

    def step() -> None:
        clock.advance(0.01)
        now = clock.monotonic()
        core.tick(now)
        agent._publish()
        agent._reconcile(now)

    p1_claims = tuple(p1.claim(a) for a in P1_CLIENTS)
    p1_snapshot = Snapshot(p1.header(), P1_HOP, None, p1_claims)
    deliver(p1_snapshot, "p1")
    deliver(Snapshot(evil.header(), EVIL_HOP, None, ()), "evil")
    step()
    assert {ipaddress.ip_network(a): P1_HOP for a in P1_CLIENTS}.items() <= kernel.owned.items()

    decode_errors_before = agent.stats.decode_errors
    for i in range(N):
        template = rng.choice(evil.templates())
        body, user = mutate(rng, codec.encode(template))
        agent._handle_envelopes([Envelope(body, user_id=user)])
        if i % 50 == 0:  # the honest peer goes on talking
            count, digest, seq = len(p1_claims), _digest(p1_claims), p1_snapshot.header.seq
            deliver(Heartbeat(p1.header(), P1_HOP, None, seq, count, digest), "p1")
        if i % 500 == 0:
            evil.epoch += 1  # and the hostile one restarts now and then
        step()
        _check(agent, kernel)
    assert agent.stats.decode_errors > decode_errors_before
    assert agent.stats.internal_errors == 0


def _check(agent: Agent, kernel: FakeDataplane) -> None:
    table = agent.core.table
    assert agent.stats.internal_errors == 0
    p1 = table.peers["p1"]
    assert p1.next_hop == P1_HOP and p1.synced
    assert not any(reason for (peer, reason) in table._refusal_log if peer == "p1")
    hops = {h for p in table.peers.values() for h in (p.next_hop, p.next_hop6) if h}
    for prefix, hop in kernel.owned.items():
        assert prefix.prefixlen == prefix.max_prefixlen, prefix
        assert any(prefix.network_address in net for net in NETS), prefix
        assert any(hop in net for net in BACKBONE) and hop in hops and hop != OWN_HOP, hop
    for address in P1_CLIENTS:
        if "evil" not in table.claims_for(address):
            assert kernel.owned.get(ipaddress.ip_network(address)) == P1_HOP, address


def _digest(records) -> str:
    from meshroute.core.claimset import ClaimSet

    claims = ClaimSet()
    for record in records:
        claims.set(record)
    return claims.digest
