"""The agent settles bus messages only after applying them: one receipt per iteration.

The broker-level consequence (a crash loses nothing acked) is tested on a real
broker in tests/integration/test_ack_after_apply.py; here, the order of the agent's
calls: every route of the iteration's messages is in the dataplane before the one
``acknowledge``, which names the last message's receipt.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable

from meshroute.agent.loop import Agent, LoopSettings
from meshroute.bus.base import Envelope
from meshroute.core import codec
from meshroute.core.clock import SystemClock
from meshroute.core.engine import AgentCore, CoreSettings
from meshroute.core.model import ClaimRecord, Delta, Header, Heartbeat, Network, Route
from meshroute.dataplane.fake import FakeDataplane

HOP = ipaddress.ip_address("10.200.200.10")


class Log(list):
    pass


class LoggingBus:
    connected = True

    def __init__(self, log: Log) -> None:
        self.log = log

    def start(self, handler) -> None:
        pass

    def publish(self, body: bytes, *, msg_type: str, message_id: str, to: str | None = None):
        pass

    def acknowledge(self, receipt: object) -> None:
        self.log.append(("ack", receipt))

    def stop(self, timeout: float = 5.0) -> None:
        pass


class LoggingDataplane(FakeDataplane):
    def __init__(self, log: Log) -> None:
        super().__init__()
        self.log = log

    def apply(self, replace: Iterable[Route], delete: Iterable[Network]):
        result = super().apply(replace, delete)
        self.log.append(("routes", len(self.owned)))
        return result


def make_agent(log: Log) -> Agent:
    settings = CoreSettings(
        name="a",
        hold_time=600,
        sync_timeout=0.01,
        client_networks=(ipaddress.ip_network("10.64.0.0/10"),),
        next_hop=ipaddress.ip_address("10.200.200.1"),
        backbone_networks=(ipaddress.ip_network("10.200.200.0/24"),),
    )
    clock = SystemClock()
    core = AgentCore(settings, epoch=clock.wall_ms())
    agent = Agent(core, bus=LoggingBus(log), dataplane=LoggingDataplane(log),
                  status_source=lambda: [], clock=clock,
                  settings=LoopSettings(resync_interval=3600, tick=0.001))  # fmt: skip
    core.start(clock.monotonic())
    core.on_bus_up(clock.monotonic())
    return agent


def envelope(body: bytes, receipt: object | None) -> Envelope:
    return Envelope(body, "p", received_at=time.monotonic(), receipt=receipt)


def synced_agent(log: Log) -> tuple[Agent, int]:
    """An agent past its start-up sync window that has heard peer "p"; the log empty."""
    agent = make_agent(log)
    epoch = int(time.time() * 1000)
    beat = Heartbeat(Header("p", epoch, 1), HOP, None, 0, 0, "0" * 16)
    agent.on_message(envelope(codec.encode(beat), "r1"))
    agent._iterate()
    time.sleep(0.02)  # the start-up sync window ends
    agent._iterate()
    log.clear()
    return agent, epoch


def test_the_last_receipt_is_acknowledged_once_after_the_routes_are_applied():
    log = Log()
    agent, epoch = synced_agent(log)
    now = int(time.time())
    for i in range(3):
        address = ipaddress.ip_address(f"10.64.0.{i + 1}")
        record = ClaimRecord(address, f"c{i}", now, now * 1000)
        body = codec.encode(Delta(Header("p", epoch, 2 + i), address, record))
        agent.on_message(envelope(body, f"r{2 + i}"))
    agent._iterate()
    assert log == [("routes", 3), ("ack", "r4")]


def test_messages_without_receipts_are_not_acknowledged():
    log = Log()
    agent = make_agent(log)
    beat = Heartbeat(Header("p", int(time.time() * 1000), 1), HOP, None, 0, 0, "0" * 16)
    agent.on_message(envelope(codec.encode(beat), None))
    agent._iterate()
    assert not [entry for entry in log if entry[0] == "ack"]
