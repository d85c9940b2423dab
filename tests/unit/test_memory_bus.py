"""The in-process bus: fanout, direct, partitions, queues that outlive agents, faults."""

from __future__ import annotations

import random
import threading
import time

import pytest

from meshroute.bus.base import Envelope
from meshroute.bus.memory import (
    Action,
    Arrivals,
    Delivery,
    MemoryBroker,
    MemoryBus,
    RandomFaults,
)


class Recorder:
    """A handler that records what it is given (and may publish back)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.envelopes: list[Envelope] = []
        self.connection: list[bool] = []
        self.on_body = None
        self.got = threading.Event()

    def on_message(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)
        self.bodies.append(envelope.body)
        if self.on_body is not None:
            self.on_body(envelope.body)
        self.got.set()

    def on_connection(self, up: bool) -> None:
        self.connection.append(up)


def _agents(broker: MemoryBroker, *names: str) -> dict[str, tuple[MemoryBus, Recorder]]:
    agents = {}
    for name in names:
        bus, rec = MemoryBus(broker, name), Recorder()
        bus.start(rec)
        agents[name] = (bus, rec)
    return agents


def _send(bus: MemoryBus, body: bytes, to: str | None = None) -> None:
    bus.publish(body, msg_type="delta", message_id=body.decode(), to=to)


def test_fanout_reaches_everyone_including_the_sender_in_order():
    broker = MemoryBroker()
    agents = _agents(broker, "a", "b", "c")
    for i in range(3):
        _send(agents["a"][0], b"m%d" % i)
    assert broker.deliver_all() == 3 * 3 + 3  # messages + one on_connection(True) each
    for _, rec in agents.values():
        assert rec.connection == [True]
        assert rec.bodies == [b"m0", b"m1", b"m2"]
    envelope = agents["b"][1].envelopes[0]
    assert (envelope.user_id, envelope.msg_type, envelope.message_id) == ("a", "delta", "m0")


def test_nothing_is_delivered_until_pumped():
    broker = MemoryBroker()
    agents = _agents(broker, "a", "b")
    _send(agents["a"][0], b"x")
    assert agents["b"][1].bodies == [] and broker.queued("b") == 1
    assert agents["b"][0].drain() == 2
    assert agents["b"][1].bodies == [b"x"] and agents["a"][1].bodies == []


def test_direct_message_reaches_one_agent_and_unknown_names_vanish():
    broker = MemoryBroker()
    agents = _agents(broker, "a", "b", "c")
    _send(agents["a"][0], b"to-b", to="b")
    _send(agents["a"][0], b"to-nobody", to="zz")
    broker.deliver_all()
    assert agents["b"][1].bodies == [b"to-b"]
    assert agents["a"][1].bodies == [] and agents["c"][1].bodies == []


def test_user_id_is_the_name_unless_given():
    broker = MemoryBroker()
    evil, rec = MemoryBus(broker, "evil", user_id="a"), Recorder()
    evil.start(rec)
    _send(evil, b"x")
    broker.deliver_all()
    assert rec.envelopes[0].user_id == "a"


def test_inject_delivers_forged_envelopes():
    broker = MemoryBroker()
    agents = _agents(broker, "a")
    broker.inject(Envelope(body=b"junk", user_id=None))
    broker.deliver_all()
    assert agents["a"][1].envelopes == [Envelope(body=b"junk", user_id=None)]


def test_partition_freezes_delivery_and_outbox_then_heal_resumes_in_order():
    broker = MemoryBroker()
    agents = _agents(broker, "a", "b")
    broker.deliver_all()
    broker.partition("a")
    _send(agents["a"][0], b"from-a-while-cut")
    _send(agents["b"][0], b"from-b-while-a-cut")
    broker.deliver_all()
    (bus_a, rec_a), (_, rec_b) = agents["a"], agents["b"]
    assert rec_a.connection == [True, False] and not bus_a.connected
    assert rec_a.bodies == []  # held in a's queue
    assert rec_b.bodies == [b"from-b-while-a-cut"]  # a's message still in a's outbox
    _send(bus_a, b"second-while-cut")
    broker.heal("a")
    broker.deliver_all()
    assert rec_a.connection == [True, False, True]
    assert rec_b.bodies[1:] == [b"from-a-while-cut", b"second-while-cut"]
    assert rec_a.bodies == [b"from-b-while-a-cut", b"from-a-while-cut", b"second-while-cut"]


def test_queue_outlives_a_stopped_agent_until_deleted():
    broker = MemoryBroker()
    agents = _agents(broker, "a", "b")
    agents["b"][0].stop()
    _send(agents["a"][0], b"while-b-down")
    broker.deliver_all()
    assert broker.queued("b") == 1
    new_bus, new_rec = _agents(broker, "b")["b"]
    broker.deliver_all()
    assert new_rec.bodies == [b"while-b-down"]
    new_bus.stop()
    broker.delete_queue("b")
    _send(agents["a"][0], b"after-expiry")
    assert broker.queued("b") == 0


def test_two_agents_with_one_name_are_refused():
    broker = MemoryBroker()
    _agents(broker, "a")
    with pytest.raises(ValueError, match="already started"):
        MemoryBus(broker, "a").start(Recorder())


def test_fault_drop_duplicate_delay():
    def fault(delivery: Delivery) -> Action:
        body = delivery.envelope.body
        if delivery.recipient != "b":
            return Action.DELIVER
        return {b"1": Action.DELAY, b"2": Action.DROP, b"3": Action.DUPLICATE}.get(
            body, Action.DELIVER
        )

    broker = MemoryBroker(fault=fault)
    agents = _agents(broker, "a", "b")
    for body in (b"1", b"2", b"3", b"4"):
        _send(agents["a"][0], body)
    broker.deliver_all()
    assert agents["b"][1].bodies == [b"3", b"3", b"4", b"1"]
    assert agents["a"][1].bodies == [b"1", b"2", b"3", b"4"]
    assert [d.envelope.body for d in broker.published] == [b"1", b"2", b"3", b"4"]


def test_handler_errors_do_not_stop_delivery():
    broker = MemoryBroker()
    agents = _agents(broker, "a")
    rec = agents["a"][1]

    def explode(body: bytes) -> None:
        if body == b"bad":
            raise RuntimeError("handler bug")

    rec.on_body = explode
    _send(agents["a"][0], b"bad")
    _send(agents["a"][0], b"good")
    broker.deliver_all()
    assert rec.bodies == [b"bad", b"good"]


def test_handler_may_publish_and_ping_pong_terminates():
    broker = MemoryBroker()
    agents = _agents(broker, "a", "b")
    bus_b, rec_b = agents["b"]
    rec_b.on_body = lambda body: body == b"ping" and _send(bus_b, b"pong", to="a")
    _send(agents["a"][0], b"ping", to="b")
    broker.deliver_all()
    assert agents["a"][1].bodies == [b"pong"]


def test_endless_loop_is_reported():
    broker = MemoryBroker()
    agents = _agents(broker, "a")
    bus, rec = agents["a"]
    rec.on_body = lambda body: _send(bus, body)
    _send(bus, b"echo")
    with pytest.raises(RuntimeError, match="still in flight"):
        broker.deliver_all(max_rounds=50)


def test_threaded_mode_delivers_on_the_bus_thread():
    broker = MemoryBroker(threaded=True)
    agents = _agents(broker, "a", "b")
    rec_b = agents["b"][1]
    threads: list[str] = []
    rec_b.on_body = lambda body: threads.append(threading.current_thread().name)
    _send(agents["a"][0], b"x")
    assert rec_b.got.wait(2)
    deadline = time.monotonic() + 2
    while not agents["a"][1].bodies and time.monotonic() < deadline:
        time.sleep(0.005)
    assert agents["a"][1].bodies == [b"x"]
    assert threads == ["meshroute-membus-b"]
    assert rec_b.connection == [True]
    for bus, _ in agents.values():
        bus.stop(1)
        assert bus._thread is not None and not bus._thread.is_alive()


class _Now:
    """A settable clock for the broker's timed delays."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_timed_delays_arrive_when_due_and_reorder():
    delays = {b"1": (0.5,), b"2": (0.0,), b"3": (0.2, 0.7), b"4": ()}
    now = _Now()
    broker = MemoryBroker(clock=now, fault=lambda d: Arrivals(delays[d.envelope.body]))
    agents = _agents(broker, "a", "b")
    for body in (b"1", b"2", b"3", b"4"):
        _send(agents["a"][0], body)
    bus_b, rec_b = agents["b"]
    bus_b.drain()
    assert rec_b.bodies == [b"2"]  # due at once; "4" has no copy: dropped
    assert broker.queued("b") == 3 and broker.in_flight() == 6  # a's own copies too
    now.t += 0.3
    assert broker.release_due() == 2  # "3" for a and for b
    bus_b.drain()
    assert rec_b.bodies == [b"2", b"3"]
    now.t += 0.3
    broker.release_due()
    bus_b.drain()
    assert rec_b.bodies == [b"2", b"3", b"1"]
    broker.deliver_all()  # flushes the rest without waiting for the clock
    assert rec_b.bodies == [b"2", b"3", b"1", b"3"]
    assert broker.in_flight() == 0


def test_timed_copies_wait_for_a_partitioned_agent():
    now = _Now()
    broker = MemoryBroker(clock=now, fault=lambda d: Arrivals((1.0,)))
    agents = _agents(broker, "a", "b")
    broker.partition("b")
    _send(agents["a"][0], b"x")
    now.t += 2
    broker.release_due()
    agents["b"][0].drain()
    assert agents["b"][1].bodies == [] and broker.queued("b") == 1
    broker.heal("b")
    agents["b"][0].drain()
    assert agents["b"][1].bodies == [b"x"]


def test_random_faults_are_seeded_and_calm_delivers_in_order():
    def run(seed: int) -> list[bytes]:
        now = _Now()
        faults = RandomFaults(random.Random(seed), drop=0.3, duplicate=0.3, max_delay=1.0)
        broker = MemoryBroker(clock=now, fault=faults)
        agents = _agents(broker, "a", "b")
        for i in range(50):
            _send(agents["a"][0], b"%d" % i)
            now.t += 0.1
            broker.release_due()
            agents["b"][0].drain()
        faults.calm()
        _send(agents["a"][0], b"last")
        broker.deliver_all()
        return agents["b"][1].bodies

    first = run(7)
    assert first == run(7)
    assert first.count(b"last") == 1  # calm: at once (still-delayed copies may follow)
    received = [int(b) for b in first if b != b"last"]
    assert len(set(received)) < 50  # some dropped
    assert len(received) > len(set(received))  # some duplicated
    assert received != sorted(received)  # some reordered
    assert RandomFaults(random.Random(1))(None) is Action.DELIVER  # type: ignore[arg-type]


def test_threaded_mode_delivers_timed_copies_when_due():
    broker = MemoryBroker(threaded=True, fault=lambda d: Arrivals((0.05,)))
    agents = _agents(broker, "a", "b")
    started = time.monotonic()
    _send(agents["a"][0], b"x")
    assert agents["b"][1].got.wait(2)
    assert time.monotonic() - started >= 0.05
    for bus, _ in agents.values():
        bus.stop(1)


def test_silent_partition_tells_the_agent_nothing_and_loses_what_it_sends():
    broker = MemoryBroker()
    agents = _agents(broker, "a", "b")
    broker.deliver_all()
    (bus_a, rec_a), (_, rec_b) = agents["a"], agents["b"]
    broker.partition("a", silent=True)
    _send(bus_a, b"into-the-void")
    _send(agents["b"][0], b"for-a-later")
    broker.deliver_all()
    assert bus_a.connected and rec_a.connection == [True]
    assert rec_a.bodies == [] and rec_b.bodies == [b"for-a-later"]
    broker.heal("a")
    broker.deliver_all()
    assert rec_a.connection == [True]
    assert rec_a.bodies == [b"for-a-later"] and rec_b.bodies == [b"for-a-later"]
