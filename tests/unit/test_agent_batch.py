"""The loop handles an iteration's bus messages as one run: each one still alone.

A run of envelopes is decoded and applied in one call (fewer frames per event,
bench/bench_loop.py), but a malformed body, a forged identity or an internal
error in one message refuses that message alone, counted by its reason: its
batch-mates are applied, in order, and the iteration's one ack still comes after
the routes (tests/unit/test_agent_acks.py).
"""

from __future__ import annotations

import ipaddress
import time

from test_agent_acks import Log, envelope, synced_agent

from meshroute.agent.loop import Agent
from meshroute.bus.base import Envelope
from meshroute.core import codec
from meshroute.core.model import ClaimRecord, Delta, Header


def delta_body(epoch: int, seq: int, last_octet: int, origin: str = "p") -> bytes:
    now = int(time.time())
    address = ipaddress.ip_address(f"10.64.0.{last_octet}")
    record = ClaimRecord(address, f"c{last_octet}", now, now * 1000)
    return codec.encode(Delta(Header(origin, epoch, seq), address, record))


def routed(agent: Agent) -> set[str]:
    return {str(a) for a in agent.mirror.installed}


def test_a_malformed_body_in_a_batch_is_refused_alone_and_counted():
    log = Log()
    agent, epoch = synced_agent(log)
    bodies = [
        delta_body(epoch, 2, 1),
        b'{"v":1,"type":"delta"',  # cut short: not JSON
        delta_body(epoch, 3, 2),
        delta_body(epoch, 4, 3).replace(b'"10.64.0.3"', b'"10.64.0.300"'),  # no address
        delta_body(epoch, 5, 4),
        b'{"v":1,"v":1}',  # a duplicate key: two parsers could see two messages
        delta_body(epoch, 6, 5),
    ]
    for i, body in enumerate(bodies):
        agent.on_message(envelope(body, f"r{i}"))
    agent._iterate()
    assert routed(agent) == {"10.64.0.1", "10.64.0.2", "10.64.0.4", "10.64.0.5"}
    assert agent.stats.decode_errors == 3
    assert agent.stats.internal_errors == 0
    assert log == [("routes", 4), ("ack", "r6")]  # the routes first, then one ack


def test_a_forged_origin_in_a_batch_is_refused_alone():
    log = Log()
    agent, epoch = synced_agent(log)
    agent.on_message(envelope(delta_body(epoch, 2, 1), "r1"))
    forged = Envelope(delta_body(epoch, 3, 2, origin="q"), "p", received_at=time.monotonic())
    agent.on_message(forged)  # broker user p, body says q: refused
    agent.on_message(envelope(delta_body(epoch, 4, 3), "r3"))
    agent._iterate()
    assert routed(agent) == {"10.64.0.1", "10.64.0.3"}
    assert agent.stats.decode_errors == 1


def test_an_internal_error_on_one_message_spares_its_batch_mates():
    log = Log()
    agent, epoch = synced_agent(log)
    core_on_message = agent.core.on_message

    def failing(message, now):
        if message.header.seq == 3:
            raise RuntimeError("a bug triggered by one message")
        core_on_message(message, now)

    agent.core.on_message = failing  # type: ignore[method-assign]
    for seq, octet in ((2, 1), (3, 2), (4, 3)):
        agent.on_message(envelope(delta_body(epoch, seq, octet), f"r{seq}"))
    agent._iterate()
    assert routed(agent) == {"10.64.0.1", "10.64.0.3"}
    assert agent.stats.internal_errors == 1
    assert agent.stats.decode_errors == 0
    assert log[-1] == ("ack", "r4")


def test_other_inputs_between_bus_messages_keep_their_place():
    log = Log()
    agent, epoch = synced_agent(log)
    seen: list[set[str]] = []
    agent.on_message(envelope(delta_body(epoch, 2, 1), "r1"))
    agent.call_soon(lambda: seen.append(set(map(str, agent.core.table.addresses()))))
    agent.on_message(envelope(delta_body(epoch, 3, 2), "r2"))
    agent._iterate()
    assert seen == [{"10.64.0.1"}]  # after the first message, before the second
    assert routed(agent) == {"10.64.0.1", "10.64.0.2"}
