"""Liveness that a busy agent cannot fake (issue 12.6), on real agent threads.

Two agents on the threaded in-memory bus. One agent's loop is held busy (as a huge
snapshot would hold it) for longer than the hold time: its peer must not expire it
(the keeper re-sends its heartbeat) and it must not expire its peer (arrivals are
recorded by the bus thread, not when the loop gets round to them).
"""

from __future__ import annotations

import ipaddress
import threading
import time

from meshroute.agent.loop import Agent, LoopSettings
from meshroute.bus.memory import MemoryBroker, MemoryBus
from meshroute.core.clock import SystemClock
from meshroute.core.engine import AgentCore, CoreSettings
from meshroute.dataplane.fake import FakeDataplane
from tests.fakes import poll

NETS = (ipaddress.ip_network("10.100.0.0/16"),)
HOLD = 1.5


def start(broker: MemoryBroker, name: str, index: int) -> tuple[Agent, threading.Thread]:
    settings = CoreSettings(
        name=name,
        hold_time=HOLD,
        announce_interval=0.2,
        sync_timeout=0.2,
        client_networks=NETS,
        next_hop=ipaddress.ip_address(f"10.200.0.{index}"),
    )
    agent = Agent(
        AgentCore(settings, epoch=time.time_ns() // 1_000_000),
        bus=MemoryBus(broker, name),
        dataplane=FakeDataplane(),
        status_source=list,
        clock=SystemClock(),
        settings=LoopSettings(status_poll_interval=0.2, resync_interval=5.0, tick=0.02),
    )
    thread = threading.Thread(target=agent.run, name=f"agent-{name}", daemon=True)
    thread.start()
    return agent, thread


def test_a_busy_loop_neither_expires_nor_is_expired():
    broker = MemoryBroker(threaded=True)
    a, ta = start(broker, "a", 1)
    b, tb = start(broker, "b", 2)
    try:
        poll(lambda: "b" in a.core.table.peers and "a" in b.core.table.peers, 5.0, "peers")
        a.call_soon(lambda: time.sleep(2.5 * HOLD))  # a's loop is stuck for 3.75 s
        time.sleep(2.5 * HOLD + 0.5)
        assert b.core.table.counters.expired_peers == 0, "b expired a while a was busy"
        assert a.core.table.counters.expired_peers == 0, "a expired b after its stall"
        assert a.keeper_heartbeats > 0
    finally:
        for agent, thread in ((a, ta), (b, tb)):
            agent.request_stop(goodbye=False)
            thread.join(5)
