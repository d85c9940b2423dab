"""What health and peers show of clocks, isolation and refused peers (issues 7, 12)."""

from __future__ import annotations

import ipaddress

from meshroute.agent.loop import Agent
from meshroute.agent.views import health_view, peers_view
from meshroute.bus.memory import MemoryBroker, MemoryBus
from meshroute.core.clock import FakeClock
from meshroute.core.engine import AgentCore, CoreSettings
from meshroute.core.model import Header, Heartbeat
from meshroute.dataplane.fake import FakeDataplane

NETS = (ipaddress.ip_network("10.100.0.0/16"),)


def agent_with_peer(offset_ms: int, hop: str = "10.200.0.2") -> tuple[Agent, FakeClock]:
    clock = FakeClock(start=10.0, wall_ms=1_800_000_000_000)
    settings = CoreSettings(
        name="me", client_networks=NETS, next_hop=ipaddress.ip_address("10.200.0.1"),
        clock_offset_warning=1.0,
    )  # fmt: skip
    core = AgentCore(settings, epoch=clock.wall_ms(), wall_clock=clock.wall_ms)
    broker = MemoryBroker()
    bus = MemoryBus(broker, "me")
    agent = Agent(core, bus=bus, dataplane=FakeDataplane(), status_source=list, clock=clock)
    core.start(clock.monotonic())
    core.on_bus_up(clock.monotonic())
    sent = clock.wall_ms() + offset_ms
    header = Header("p1", 1, 1, clock=sent, sent_ms=sent)
    beat = Heartbeat(header, ipaddress.ip_address(hop), None, 0, 0, "0" * 16)
    core.on_message(beat, clock.monotonic())
    return agent, clock


def test_a_peer_clock_off_by_more_than_the_warning_is_shown():
    agent, _clock = agent_with_peer(offset_ms=2500)
    [peer] = peers_view(agent)["peers"]
    assert peer["clock_offset_ms"] == 2500
    health = health_view(agent)
    assert health["warnings"] == ["peer p1's clock is +2.500s off ours (clock_offset_warning 1s)"]
    near, _ = agent_with_peer(offset_ms=-400)
    assert health_view(near)["warnings"] == []


def test_a_refused_next_hop_is_shown_on_the_peer_and_in_health():
    agent, _clock = agent_with_peer(offset_ms=0, hop="10.100.0.9")  # a client's network
    [peer] = peers_view(agent)["peers"]
    assert "inside client_networks" in peer["next_hop_problem"]
    assert any("inside client_networks" in w for w in health_view(agent)["warnings"])


def test_health_is_unhealthy_when_our_own_messages_stop_coming_back():
    agent, clock = agent_with_peer(offset_ms=0)
    agent.bus.start(agent)
    clock.advance(30.0)  # nothing of ours came back through the broker meanwhile
    health = health_view(agent)
    assert not health["ok"]
    assert any(p.startswith("isolated: our own messages") for p in health["problems"])
