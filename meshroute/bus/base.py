"""The Bus seam: what the agent needs from a message bus, and nothing more.

Two implementations: :mod:`meshroute.bus.amqp` (pika, RabbitMQ) and
:mod:`meshroute.bus.memory` (in-process, for unit tests and simulations).

Invariants every implementation keeps:

- ``publish`` is thread-safe and never blocks on the network; messages published
  from one thread reach every other agent's queue in publish order.
- ``handler.on_message`` is called from the bus's own thread, one message at a
  time; it must only enqueue (the agent does all real work on its own thread).
- A handler with ``acknowledges = True`` (the agent) settles messages itself: one
  that carries a ``receipt`` is settled with the broker only when the handler
  passes that receipt (or a later one of the same bus) to ``acknowledge``, which
  it does once the message has been applied: receipts are ordered, and
  acknowledging one settles every earlier one. For any other handler the bus
  settles each message once the handler has taken it. A bus that redelivers what was not
  acknowledged (a durable queue after a crash) therefore never loses an applied
  message's successors, and redelivery is harmless (the core drops what it has).
- ``handler.on_connection(False)`` is called whenever the bus loses its broker and
  ``on_connection(True)`` once it is consuming again (after any reconnect).
- The bus moves bytes: encoding, validation and identity checks live in the codec
  and the agent. ``Envelope.user_id`` is the broker-authenticated sender when the
  broker provides it (RabbitMQ validates ``user_id`` against the connection's user).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Envelope:
    """One received message: the body plus what the broker says about its sender."""

    body: bytes
    user_id: str | None
    msg_type: str | None = None
    message_id: str | None = None
    received_at: float | None = None
    """Monotonic time the bus thread took the message off the wire (None: not
    recorded). Liveness is judged on arrival, never on when the busy agent thread
    got round to it (DESIGN rule 6)."""
    receipt: object | None = field(default=None, compare=False)
    """What to hand to :meth:`Bus.acknowledge` once the message is applied (None:
    nothing to settle, as for the in-memory bus)."""


class BusHandler(Protocol):
    # (optional) ``acknowledges = True``: the handler calls Bus.acknowledge itself

    def on_message(self, envelope: Envelope) -> None: ...

    def on_connection(self, up: bool) -> None: ...


class Bus(Protocol):
    @property
    def connected(self) -> bool: ...

    def start(self, handler: BusHandler) -> None:
        """Connect (in the background) and start consuming; returns at once."""

    def publish(
        self, body: bytes, *, msg_type: str, message_id: str, to: str | None = None
    ) -> None:
        """Queue a message: to every agent (fanout), or to agent ``to`` only."""

    def acknowledge(self, receipt: object) -> None:
        """Settle every message delivered up to ``receipt`` (thread-safe, never blocks).

        Called by the agent after the messages were applied; a receipt of an earlier
        connection is ignored (the broker has requeued or dropped those already)."""

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what is queued (within ``timeout``), close, and join the thread."""
