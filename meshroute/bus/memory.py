"""In-process bus for unit tests and simulations: a broker hub and one bus per agent.

It models what the agent can observe of RabbitMQ (see docs/protocol.md):

- A fanout publish reaches the queue of every agent name that ever started,
  including the sender's own; ``to=`` reaches one agent's queue, or nothing.
- Queues belong to names and outlive buses (like the durable ``meshroute.<name>``
  queue): messages for a stopped or partitioned agent wait for it;
  :meth:`MemoryBroker.delete_queue` models the queue expiring.
- ``partition(name)`` is that agent losing its broker connection: its handler gets
  ``on_connection(False)``, nothing is delivered to it, and what it publishes waits
  in its outbox; ``heal(name)`` delivers ``on_connection(True)``, then the outbox
  goes out, then queued messages flow again. ``partition(name, silent=True)`` is
  a link that dies without the agent being told: nothing reaches it and what it
  publishes is lost.
- Deterministic by default: nothing is delivered until the test calls
  :meth:`MemoryBroker.deliver_all` or :meth:`MemoryBus.drain`; handler calls then
  happen on the calling thread, one at a time. ``threaded=True`` instead gives
  every bus its own delivery thread, like the AMQP bus.
- A ``fault`` callable sees every delivery and may drop, duplicate or delay it.
  It answers an :class:`Action` (``DELAY``: delivered after everything else in
  flight, a reorder; in threaded mode, after everything else in its queue) or
  :class:`Arrivals`: one delay in seconds per copy that arrives (none: dropped),
  measured on the broker's ``clock``; a copy joins its queue once it is due
  (:meth:`MemoryBroker.release_due`), so copies with different delays reorder.
  :class:`RandomFaults` is the seeded drop/duplicate/delay model that simulations
  use (``tests/sim.py``): the one fault model of the bus seam.

Size (above 300 lines): the broker, its queues and the bus seam's one fault model
(partitions, delays, drops, redelivery) in one place, so a test of any tier reads one
file to know what the fake can and cannot do.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from meshroute.bus.base import BusHandler, Envelope

log = logging.getLogger(__name__)


class Action(enum.Enum):
    DELIVER = "deliver"
    DROP = "drop"
    DUPLICATE = "duplicate"
    DELAY = "delay"


@dataclass(frozen=True)
class Delivery:
    """One message on its way from ``sender`` into ``recipient``'s queue."""

    sender: str
    recipient: str
    envelope: Envelope


@dataclass(frozen=True)
class Arrivals:
    """The copies of one delivery that arrive, each after its own delay (seconds)."""

    delays: tuple[float, ...]


Fault = Callable[[Delivery], "Action | Arrivals"]


@dataclass
class RandomFaults:
    """A seeded fault model: each delivery is dropped with probability ``drop``,
    else arrives twice with probability ``duplicate``; each copy is delayed by a
    uniform draw from ``[0, max_delay]`` seconds (independent draws reorder).

    Mutable, so a test or simulation can change the weather between steps; all
    zero delivers at once, in order.
    """

    rng: random.Random
    drop: float = 0.0
    duplicate: float = 0.0
    max_delay: float = 0.0

    def __call__(self, delivery: Delivery) -> Action | Arrivals:
        if not (self.drop or self.duplicate or self.max_delay):
            return Action.DELIVER
        if self.rng.random() < self.drop:
            return Action.DROP
        copies = 2 if self.rng.random() < self.duplicate else 1
        return Arrivals(tuple(self.rng.uniform(0, self.max_delay) for _ in range(copies)))

    def calm(self) -> None:
        """No more faults from now on (what is already delayed stays delayed)."""
        self.drop = self.duplicate = self.max_delay = 0.0


@dataclass
class _Queue:
    messages: deque[Envelope] = field(default_factory=deque)
    delayed: list[Envelope] = field(default_factory=list)
    timed: list[tuple[float, int, Envelope]] = field(default_factory=list)  # a heap


class MemoryBroker:
    """The hub. Thread-safe; handlers are always called without its lock held."""

    def __init__(
        self,
        *,
        fault: Fault | None = None,
        threaded: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.fault = fault
        self.threaded = threaded
        self.clock = clock  # monotonic seconds, for Arrivals delays (default: time.monotonic)
        self._arrival_order = itertools.count()
        self.published: list[Delivery] = []  # what was sent (recipient "*" = fanout)
        self._lock = threading.RLock()
        self._queues: dict[str, _Queue] = {}
        self._buses: dict[str, MemoryBus] = {}
        self._partitioned: set[str] = set()
        self._silent: set[str] = set()  # cut without the agent being told

    # -- test controls -------------------------------------------------------------

    def partition(self, name: str, *, silent: bool = False) -> None:
        """Cut agent ``name`` off the broker (its connection is lost).

        ``silent``: the link dies without FIN or RST. The agent is not told
        (its bus stays "connected"), nothing reaches it, and what it publishes is
        lost on the dead link.
        """
        with self._lock:
            self._partitioned.add(name)
            if silent:
                self._silent.add(name)
            bus = self._buses.get(name)
        if bus is not None and not silent:
            bus._connection_changed(False)

    def heal(self, name: str) -> None:
        with self._lock:
            self._partitioned.discard(name)
            was_silent = name in self._silent
            self._silent.discard(name)
            bus = self._buses.get(name)
        if bus is not None and (not was_silent or not bus.connected):
            bus._connection_changed(True)  # (an agent that started while cut connects now)

    def delete_queue(self, name: str) -> None:
        """The agent's queue expires: queued messages are gone, fanout skips it."""
        with self._lock:
            if name not in self._buses:
                self._queues.pop(name, None)

    def inject(self, envelope: Envelope, *, to: str | None = None, sender: str = "?") -> None:
        """Route an arbitrary envelope (forged, malformed, without user_id)."""
        self._route(sender, envelope, to)

    def deliver_all(self, max_rounds: int = 10_000) -> int:
        """Deliver until nothing is in flight (delayed messages last); returns the count.

        Timed copies (:class:`Arrivals`) come last of all, in order of their due
        times, without waiting for the clock: this flushes everything.
        """
        total = 0
        for _ in range(max_rounds):
            delivered = sum(bus.drain() for bus in self._started())
            total += delivered
            if not delivered and not self._release_delayed() and not self._release_timed():
                return total
        raise RuntimeError(f"messages still in flight after {max_rounds} rounds (a loop?)")

    def queued(self, name: str) -> int:
        """How many messages wait in agent ``name``'s queue (delayed ones included)."""
        with self._lock:
            q = self._queues.get(name)
            return 0 if q is None else len(q.messages) + len(q.delayed) + len(q.timed)

    def release_due(self) -> int:
        """Move every timed copy that is due by the broker's clock into its queue.

        Copies join their queue in order of their due times (ties: in order sent).
        Returns how many were released.
        """
        before = self.in_flight()
        self._release_timed(until=self._now())
        return before - self.in_flight()

    def in_flight(self) -> int:
        """How many copies are delayed (timed or not) in all queues."""
        with self._lock:
            return sum(len(q.delayed) + len(q.timed) for q in self._queues.values())

    # -- used by MemoryBus -----------------------------------------------------------

    def _attach(self, bus: MemoryBus) -> bool:
        with self._lock:
            if bus.name in self._buses:
                raise ValueError(f"an agent named {bus.name!r} is already started")
            self._buses[bus.name] = bus
            self._queues.setdefault(bus.name, _Queue())
            return bus.name not in self._partitioned

    def _detach(self, bus: MemoryBus) -> None:
        with self._lock:
            if self._buses.get(bus.name) is bus:
                del self._buses[bus.name]

    def _is_up(self, name: str) -> bool:
        with self._lock:
            return name in self._buses and name not in self._partitioned

    def _route(self, sender: str, envelope: Envelope, to: str | None) -> None:
        with self._lock:
            self.published.append(Delivery(sender, to or "*", envelope))
            if sender in self._silent:
                return  # lost on a dead link the sender does not know about
            recipients = [to] if to is not None else list(self._queues)
            woken = []
            for name in recipients:
                queue = self._queues.get(name)
                if queue is not None:  # unroutable direct messages vanish, as in AMQP
                    self._enqueue(queue, Delivery(sender, name, envelope))
                    woken.append(self._buses.get(name))
        for bus in woken:
            if bus is not None:
                bus._wake()

    def _now(self) -> float:
        return self.clock() if self.clock is not None else time.monotonic()

    def _enqueue(self, queue: _Queue, delivery: Delivery) -> None:
        action = self.fault(delivery) if self.fault else Action.DELIVER
        if isinstance(action, Arrivals):
            self._enqueue_timed(queue, delivery, action)
        elif action is Action.DROP:
            log.debug("fault: dropped %s -> %s", delivery.sender, delivery.recipient)
        elif action is Action.DELAY:
            queue.delayed.append(delivery.envelope)
        else:
            copies = 2 if action is Action.DUPLICATE else 1
            queue.messages.extend([delivery.envelope] * copies)

    def _enqueue_timed(self, queue: _Queue, delivery: Delivery, arrivals: Arrivals) -> None:
        if not arrivals.delays:
            log.debug("fault: dropped %s -> %s", delivery.sender, delivery.recipient)
        now = self._now()
        for delay in arrivals.delays:
            entry = (now + delay, next(self._arrival_order), delivery.envelope)
            heapq.heappush(queue.timed, entry)
        while queue.timed and queue.timed[0][0] <= now:  # due now: straight in
            queue.messages.append(heapq.heappop(queue.timed)[2])

    def _take(self, name: str) -> Envelope | None:
        with self._lock:
            queue = self._queues.get(name)
            if name in self._partitioned or queue is None or not queue.messages:
                return None
            return queue.messages.popleft()

    def _ready(self, name: str) -> int:
        with self._lock:
            queue = self._queues.get(name)
            return 0 if queue is None else len(queue.messages)

    def _release_delayed(self, name: str | None = None) -> bool:
        with self._lock:
            queues = self._queues.values() if name is None else [self._queues.get(name)]
            released = [q for q in queues if q is not None and q.delayed]
            for q in released:
                q.messages.extend(q.delayed)
                q.delayed.clear()
        return bool(released)

    def _release_timed(self, name: str | None = None, until: float | None = None) -> bool:
        """Release timed copies due by ``until`` (None: all of them) into their queues."""
        with self._lock:
            queues = self._queues.values() if name is None else [self._queues.get(name)]
            released = False
            for queue in queues:
                while queue is not None and queue.timed:
                    if until is not None and queue.timed[0][0] > until:
                        break
                    queue.messages.append(heapq.heappop(queue.timed)[2])
                    released = True
        return released

    def _next_due(self, name: str) -> float | None:
        with self._lock:
            queue = self._queues.get(name)
            return queue.timed[0][0] if queue is not None and queue.timed else None

    def _started(self) -> list[MemoryBus]:
        with self._lock:
            return list(self._buses.values())


class MemoryBus:
    """One agent's end of a :class:`MemoryBroker` (implements the Bus protocol)."""

    def __init__(self, broker: MemoryBroker, name: str, user_id: str | None = None) -> None:
        self.broker = broker
        self.name = name
        self.user_id = user_id if user_id is not None else name  # broker-authenticated
        self._handler: BusHandler | None = None
        self._outbox: deque[tuple[Envelope, str | None]] = deque()
        self._events: deque[bool] = deque()  # connection changes not yet delivered
        self._connected = False
        self._lock = threading.Lock()
        self._deliver_lock = threading.Lock()  # one handler call at a time
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False
        self._kicked = False

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self, handler: BusHandler) -> None:
        self._handler = handler
        self._running = True
        if self.broker._attach(self):
            self._connection_changed(True)
        if self.broker.threaded:
            self._thread = threading.Thread(
                target=self._run, name=f"meshroute-membus-{self.name}", daemon=True
            )
            self._thread.start()

    def publish(
        self, body: bytes, *, msg_type: str, message_id: str, to: str | None = None
    ) -> None:
        envelope = Envelope(
            body=body, user_id=self.user_id, msg_type=msg_type, message_id=message_id
        )
        with self._lock:
            if not self._connected or self._outbox:  # keep order behind the outbox
                self._outbox.append((envelope, to))
                return
        self.broker._route(self.name, envelope, to)

    def acknowledge(self, receipt: object) -> None:
        """Nothing to settle: the in-memory broker delivers once, without receipts."""

    def stop(self, timeout: float = 5.0) -> None:
        """Leave the broker; anything still in the outbox is lost (logged)."""
        if self._outbox:
            log.warning("%s: stopping with %d unsent messages", self.name, len(self._outbox))
        self._running = False
        self.broker._detach(self)
        self._connected = False
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def drain(self) -> int:
        """Deliver what is queued for this bus now, on the calling thread.

        Only what was queued when called: messages the handlers publish meanwhile
        wait for the next call (so a publish loop cannot spin inside one drain).
        """
        count = 0
        with self._deliver_lock:
            with self._lock:
                budget = len(self._events) + self.broker._ready(self.name)
            while count < budget and self._running and self._handler is not None:
                if not self._deliver_one(self._handler):
                    break
                count += 1
        return count

    # -- internals ---------------------------------------------------------------------

    def _deliver_one(self, handler: BusHandler) -> bool:
        with self._lock:
            event = self._events.popleft() if self._events else None
        if event is not None:
            handler.on_connection(event)
            if event:
                self._flush_outbox()
            return True
        envelope = self.broker._take(self.name)
        if envelope is None:
            return False
        try:
            handler.on_message(envelope)
        except Exception:  # a handler bug must not kill the delivery loop (as in AMQP)
            log.exception("%s: handler failed on a %s message", self.name, envelope.msg_type)
        return True

    def _connection_changed(self, up: bool) -> None:
        with self._lock:
            if self._connected == up:
                return
            self._connected = up
            self._events.append(up)
        self._wake()

    def _flush_outbox(self) -> None:
        while True:
            with self._lock:
                if not self._connected or not self._outbox:
                    return
                envelope, to = self._outbox.popleft()
            self.broker._route(self.name, envelope, to)

    def _wake(self) -> None:
        with self._wakeup:
            self._kicked = True
            self._wakeup.notify_all()

    def _run(self) -> None:
        while self._running:
            with self._wakeup:
                while not self._kicked and self._running:
                    due = self.broker._next_due(self.name)
                    timeout = None if due is None else max(0.0, due - self.broker._now())
                    if not self._wakeup.wait(timeout) and due is not None:
                        break  # a timed copy is due
                self._kicked = False
            while (
                self.drain()
                or self.broker._release_delayed(self.name)
                or self.broker._release_timed(self.name, until=self.broker._now())
            ):
                pass
