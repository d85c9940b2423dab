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
  goes out, then queued messages flow again.
- Deterministic by default: nothing is delivered until the test calls
  :meth:`MemoryBroker.deliver_all` or :meth:`MemoryBus.drain`; handler calls then
  happen on the calling thread, one at a time. ``threaded=True`` instead gives
  every bus its own delivery thread, like the AMQP bus.
- A ``fault`` callable sees every delivery and may drop, duplicate or delay it
  (a delayed message is delivered after everything else in flight: a reorder; in
  threaded mode, after everything else in its queue).
"""

from __future__ import annotations

import enum
import logging
import threading
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


Fault = Callable[[Delivery], Action]


@dataclass
class _Queue:
    messages: deque[Envelope] = field(default_factory=deque)
    delayed: list[Envelope] = field(default_factory=list)


class MemoryBroker:
    """The hub. Thread-safe; handlers are always called without its lock held."""

    def __init__(self, *, fault: Fault | None = None, threaded: bool = False) -> None:
        self.fault = fault
        self.threaded = threaded
        self.published: list[Delivery] = []  # what was sent (recipient "*" = fanout)
        self._lock = threading.RLock()
        self._queues: dict[str, _Queue] = {}
        self._buses: dict[str, MemoryBus] = {}
        self._partitioned: set[str] = set()

    # -- test controls -------------------------------------------------------------

    def partition(self, name: str) -> None:
        """Cut agent ``name`` off the broker (its connection is lost)."""
        with self._lock:
            self._partitioned.add(name)
            bus = self._buses.get(name)
        if bus is not None:
            bus._connection_changed(False)

    def heal(self, name: str) -> None:
        with self._lock:
            self._partitioned.discard(name)
            bus = self._buses.get(name)
        if bus is not None:
            bus._connection_changed(True)

    def delete_queue(self, name: str) -> None:
        """The agent's queue expires: queued messages are gone, fanout skips it."""
        with self._lock:
            if name not in self._buses:
                self._queues.pop(name, None)

    def inject(self, envelope: Envelope, *, to: str | None = None, sender: str = "?") -> None:
        """Route an arbitrary envelope (forged, malformed, without user_id)."""
        self._route(sender, envelope, to)

    def deliver_all(self, max_rounds: int = 10_000) -> int:
        """Deliver until nothing is in flight (delayed messages last); returns the count."""
        total = 0
        for _ in range(max_rounds):
            delivered = sum(bus.drain() for bus in self._started())
            total += delivered
            if not delivered and not self._release_delayed():
                return total
        raise RuntimeError(f"messages still in flight after {max_rounds} rounds (a loop?)")

    def queued(self, name: str) -> int:
        """How many messages wait in agent ``name``'s queue (delayed ones included)."""
        with self._lock:
            q = self._queues.get(name)
            return 0 if q is None else len(q.messages) + len(q.delayed)

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

    def _enqueue(self, queue: _Queue, delivery: Delivery) -> None:
        action = self.fault(delivery) if self.fault else Action.DELIVER
        if action is Action.DROP:
            log.debug("fault: dropped %s -> %s", delivery.sender, delivery.recipient)
        elif action is Action.DELAY:
            queue.delayed.append(delivery.envelope)
        else:
            copies = 2 if action is Action.DUPLICATE else 1
            queue.messages.extend([delivery.envelope] * copies)

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
                    self._wakeup.wait()
                self._kicked = False
            while self.drain() or self.broker._release_delayed(self.name):
                pass
