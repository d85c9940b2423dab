"""A large plan is applied in slices, one per loop iteration, and still converges.

The Reconciler hands the loop at most ``slice_size`` routes per plan (a join of
100,000 claims must not hold 100,000 routes' worth of requests at once, nor block
the loop for seconds: docs/performance.md). After every slice the mirror is what
the kernel holds; the rest is re-planned against the current claims, so a change
that arrives meanwhile wins; a failed route is reported for itself; bus messages
are acknowledged only once every slice is applied.
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
from meshroute.core.model import (
    ClaimRecord,
    Delta,
    Header,
    Heartbeat,
    Route,
    RouteKey,
    Snapshot,
    route_key,
)
from meshroute.dataplane.fake import FakeDataplane

HOP = ipaddress.IPv4Address("10.200.200.10")
CLAIMS, SLICE = 25_000, 10_000  # the first test: the default slice size
SMALL, SMALL_SLICE = 2_500, 1_000  # the others (quicker)
BASE = int(ipaddress.IPv4Address("10.64.0.1"))


class Bus:
    connected = True

    def __init__(self) -> None:
        self.acks: list[object] = []

    def start(self, handler: object) -> None:
        pass

    def publish(self, body: bytes, *, msg_type: str, message_id: str, to: str | None = None):
        pass

    def acknowledge(self, receipt: object) -> None:
        self.acks.append(receipt)

    def stop(self, timeout: float = 5.0) -> None:
        pass


class CountingDataplane(FakeDataplane):
    """Records how many routes each apply carried."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def apply(self, replace: Iterable[Route], delete: Iterable[RouteKey]):
        replace, delete = list(replace), list(delete)
        self.sizes.append(len(replace) + len(delete))
        return super().apply(replace, delete)


def make_agent(slice_size: int = SMALL_SLICE) -> tuple[Agent, Bus, CountingDataplane]:
    settings = CoreSettings(
        name="a",
        hold_time=600,
        sync_timeout=0.01,
        client_networks=(ipaddress.ip_network("10.64.0.0/10"),),
        next_hop=ipaddress.ip_address("10.200.200.1"),
        backbone_networks=(ipaddress.ip_network("10.200.200.0/24"),),
        max_claims_per_peer=65536,
    )
    clock = SystemClock()
    core = AgentCore(settings, epoch=clock.wall_ms())
    bus, dataplane = Bus(), CountingDataplane()
    agent = Agent(core, bus=bus, dataplane=dataplane, status_source=lambda: [], clock=clock,
                  settings=LoopSettings(resync_interval=3600, tick=0.001))  # fmt: skip
    core.start(clock.monotonic())
    core.on_bus_up(clock.monotonic())
    if slice_size != SLICE:
        agent.reconciler.slice_size = slice_size
    return agent, bus, dataplane


def address(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(BASE + i)


def envelope(body: bytes, origin: str, receipt: str) -> Envelope:
    return Envelope(body, origin, received_at=time.monotonic(), receipt=receipt)


def join_peer(agent: Agent, origin: str, hop: ipaddress.IPv4Address, count: int) -> int:
    """A peer heartbeats, the sync window ends; then its snapshot (receipt "snap")."""
    epoch = int(time.time() * 1000)
    beat = Heartbeat(Header(origin, epoch, 1), hop, None, 0, 0, "0" * 16)
    agent.on_message(envelope(codec.encode(beat), origin, "beat"))
    agent._iterate()
    time.sleep(0.02)
    agent._iterate()
    now = int(time.time())
    claims = tuple(ClaimRecord(address(i), f"c{i}", now, now * 1000) for i in range(count))
    snapshot = Snapshot(Header(origin, epoch, 2), hop, None, claims)
    agent.on_message(envelope(codec.encode(snapshot), origin, "snap"))
    return epoch


def kernel(dataplane: FakeDataplane) -> dict[RouteKey, ipaddress.IPv4Address]:
    return {route_key(prefix): hop for prefix, hop in dataplane.owned.items()}  # type: ignore[misc]


def test_a_large_plan_is_applied_in_slices_and_acked_at_the_end() -> None:
    agent, bus, dataplane = make_agent(SLICE)
    join_peer(agent, "p", HOP, CLAIMS)
    dataplane.sizes.clear()
    iterations = 0
    while iterations == 0 or agent.reconciler.busy:
        agent._iterate()
        iterations += 1
        assert agent.mirror.installed == kernel(dataplane)  # after every slice
        if agent.reconciler.busy:
            assert "snap" not in bus.acks
        assert iterations < 10
    assert dataplane.sizes == [SLICE, SLICE, CLAIMS - 2 * SLICE]
    assert kernel(dataplane) == {address(i): HOP for i in range(CLAIMS)}
    assert bus.acks[-1] == "snap"
    agent._iterate()
    assert len(dataplane.sizes) == 3  # nothing more to do


def test_a_change_arriving_between_slices_wins() -> None:
    agent, _, dataplane = make_agent()
    epoch = join_peer(agent, "p", HOP, SMALL)
    agent._iterate()  # the first slice is in
    installed = kernel(dataplane)
    assert len(installed) == SMALL_SLICE
    first = next(iter(installed))  # applied already
    last = next(address(i) for i in range(SMALL) if address(i) not in installed)  # not yet
    for seq, gone in enumerate((first, last), start=3):
        body = codec.encode(Delta(Header("p", epoch, seq), gone, None))
        agent.on_message(envelope(body, "p", f"d{seq}"))
    while agent.reconciler.busy:
        agent._iterate()
        assert agent.mirror.installed == kernel(dataplane)
    agent._iterate()
    want = {address(i): HOP for i in range(SMALL) if address(i) not in (first, last)}
    assert kernel(dataplane) == want
    assert max(dataplane.sizes) <= SMALL_SLICE


def test_a_failed_route_in_a_slice_fails_alone_and_is_retried() -> None:
    agent, _, dataplane = make_agent()
    broken = address(SMALL - 5)
    dataplane.fail_prefix(ipaddress.ip_network(f"{broken}/32"), "ENETUNREACH (test)")
    join_peer(agent, "p", HOP, SMALL)
    while True:
        agent._iterate()
        assert agent.mirror.installed == kernel(dataplane)
        if not agent.reconciler.busy:
            break
    assert list(agent.stats.route_errors) == [f"{broken}/32"]
    assert len(kernel(dataplane)) == SMALL - 1
    dataplane.clear_failures()
    agent.reconciler.retry_soon(0.0, 0.0)  # the retry's full resync, now
    while True:
        agent._iterate()
        if not agent.reconciler.busy:
            break
    assert kernel(dataplane) == {address(i): HOP for i in range(SMALL)}


def test_a_full_resync_is_sliced_too() -> None:
    agent, _, dataplane = make_agent()
    join_peer(agent, "p", HOP, SMALL)
    while True:
        agent._iterate()
        if not agent.reconciler.busy:
            break
    for prefix in list(dataplane.owned):  # drift: every route deleted by hand
        dataplane.delete_by_hand(prefix)
    dataplane.sizes.clear()
    agent.reconciler.queue_resync()
    while True:
        agent._iterate()
        assert agent.mirror.installed == kernel(dataplane)
        if not agent.reconciler.busy:
            break
    assert dataplane.sizes == [SMALL_SLICE, SMALL_SLICE, SMALL - 2 * SMALL_SLICE]
    assert kernel(dataplane) == {address(i): HOP for i in range(SMALL)}


def test_a_second_large_change_meanwhile_keeps_the_slices_full() -> None:
    """Many deltas arrive while slices are pending: their routes are planned with the
    next slice and queue behind the rest, and every slice still carries
    ``slice_size`` routes (none wasted on keys that were planned elsewhere)."""
    agent, _, dataplane = make_agent()
    epoch = join_peer(agent, "p", HOP, SMALL)
    agent._iterate()  # the first slice
    more = SMALL - SMALL_SLICE  # as many again as are still pending
    now = int(time.time())
    for i in range(more):
        added = address(SMALL + i)
        record = ClaimRecord(added, f"d{i}", now, now * 1000)
        body = codec.encode(Delta(Header("p", epoch, 3 + i), added, record))
        agent.on_message(envelope(body, "p", f"d{i}"))
    while True:
        agent._iterate()
        assert agent.mirror.installed == kernel(dataplane)
        if not agent.reconciler.busy:
            break
    assert kernel(dataplane) == {address(i): HOP for i in range(SMALL + more)}
    assert dataplane.sizes == [SMALL_SLICE] * ((SMALL + more) // SMALL_SLICE), dataplane.sizes


def test_a_failing_dump_while_slices_wait_does_not_spin_the_loop() -> None:
    """A full resync is due while slices wait and the kernel cannot be listed: the
    loop must go back to its normal pace (busy would make it poll the inbox without
    waiting, and retry the failing dump and log the error as fast as the CPU allows);
    once the dump works the full plan covers the keys that were waiting."""
    agent, _, dataplane = make_agent()
    join_peer(agent, "p", HOP, SMALL)
    agent._iterate()  # the first slice is in, the rest waits
    assert agent.reconciler.busy
    real_dump = dataplane.dump

    def broken_dump():
        raise OSError("netlink dump failed (test)")

    dataplane.dump = broken_dump  # type: ignore[method-assign]
    agent.reconciler.queue_resync()
    agent._iterate()
    assert not agent.reconciler.busy
    dataplane.dump = real_dump  # type: ignore[method-assign]
    agent.reconciler.retry_soon(0.0, 0.0)
    while True:
        agent._iterate()
        assert agent.mirror.installed == kernel(dataplane)
        if not agent.reconciler.busy:
            break
    assert kernel(dataplane) == {address(i): HOP for i in range(SMALL)}
