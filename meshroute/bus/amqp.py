"""The RabbitMQ bus (pika): one I/O thread, publisher confirms, reconnect forever.

Why ``SelectConnection`` and not ``BlockingConnection``: with confirms on, a
blocking channel waits one broker round trip per publish (tens per second over a
WAN backbone); the asynchronous connection pipelines publishes and takes the
broker's (multiple) acks as they come, so thousands of deltas per second fit.

Invariants (see docs/protocol.md for the wire side):

- One thread (``meshroute-amqp-<name>``) owns every pika object; other threads only
  append to the outbox under ``_lock`` and wake the ioloop with
  ``add_callback_threadsafe``. pika services broker heartbeats on that thread, so
  the handler must only enqueue (DESIGN rule 10).
- A message leaves the outbox when published and is forgotten only when the
  broker confirms it; a nack or a lost connection puts unconfirmed messages back at
  the head of the outbox, in order, to be re-sent after reconnect (so receivers may
  see duplicates, never a loss). Stale heartbeats (all but the newest) are dropped
  at reconnect. The outbox is bounded (oldest dropped, logged).
- ``on_connection(True)`` is reported once the queue is consumed, ``False`` once
  when that is lost; reconnects back off exponentially (0.2 s .. 5 s) and rotate
  through the URLs.
- The agent's queue is **exclusive** by default (see docs/reliability.md for the
  measurements behind that choice): it lives on the node the agent is connected
  to and dies with the connection or the node, so losing a cluster node never
  leaves a queue that nobody can declare (``404 home node ... is down``), and a
  reconnect to any other node re-creates it at once. Messages sent while it did
  not exist are lost by design: ``on_connection(True)`` makes the agent ask every
  peer for a snapshot. ``quorum`` (replicated, survives a node) and ``classic``
  (durable, the old design) remain selectable for comparison.
- The topology heals itself: every session declares the exchange, the queue and
  the binding; while consuming, the exchange and the binding are declared again
  every ``topology_check`` seconds (idempotent, one round trip), so an exchange
  deleted and re-created by someone else never leaves this queue unbound for
  longer than that. Any broker error on the channel (404 on publish included)
  ends the session and the next one declares everything again.
- ``Envelope.received_at`` is ``time.monotonic()`` taken on this thread when pika
  hands the message over (liveness is judged on arrival).
- For a handler with ``acknowledges = True`` (the agent) a delivery is acked only
  when the handler calls :meth:`AmqpBus.acknowledge` with its receipt (or a later
  one), i.e. once the agent has applied it: one ``basic.ack`` with
  ``multiple=True`` per agent loop iteration, not one per message. Any other
  handler's deliveries are acked one by one as it takes them. Up to ``prefetch``
  deliveries are unacked at a time (the broker keeps the rest, so a backlog waits
  in the broker, not in the agent's memory). A receipt of
  an earlier session is ignored: the broker has requeued (durable queue) or
  dropped (exclusive queue) that session's unacked messages.

Size (above 300 lines): every pika object belongs to one thread and its callbacks
chain into each other (open, channel, declare, consume, confirm, close): one file
keeps that thread's whole life in view.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pika
import pika.exceptions
import tenacity
from pika.adapters.select_connection import SelectConnection

from meshroute import __version__
from meshroute.bus.base import BusHandler, Envelope

log = logging.getLogger(__name__)

QUEUE_PREFIX = "meshroute."
QUEUE_KINDS = ("exclusive", "quorum", "classic")
# Unacked deliveries at a time (acks come once per agent loop iteration, after the
# apply). 1,000 and 20,000 drained a 20,000-event backlog equally fast
# (bench/bench_drain.py --prefetch, bench/README.md); the smaller window keeps a
# backlog in the broker rather than in the agent's memory.
PREFETCH = 1000


def queue_name(agent: str) -> str:
    """The queue of agent ``agent`` (also the routing key of direct messages to it)."""
    return QUEUE_PREFIX + agent


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``****`` (for logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:****@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class TlsSettings:
    """TLS for ``amqps://`` URLs (ignored for ``amqp://``)."""

    ca_file: Path | None = None
    """CA bundle to verify the broker with (None: the system's)."""
    cert_file: Path | None = None
    """Client certificate (PEM), when the broker asks for one."""
    key_file: Path | None = None
    """Private key of ``cert_file`` (PEM), unless it is in that file."""
    server_hostname: str | None = None
    """Name to verify the broker's certificate against (default: the URL's host)."""


@dataclass(frozen=True)
class QueueSettings:
    """How the agent's queue is declared (changing these needs the queue deleted)."""

    expires_ms: int = 600_000
    """A queue nobody consumes for this long is deleted by the broker (dead agent)."""
    message_ttl_ms: int = 30_000
    """Messages waiting longer than this are dropped: a returning agent resyncs."""
    kind: str = "exclusive"
    """``exclusive`` (default), ``quorum`` or ``classic`` (durable); see the module doc."""

    def __post_init__(self) -> None:
        if self.kind not in QUEUE_KINDS:
            raise ValueError(f"queue kind {self.kind!r}: expected one of {', '.join(QUEUE_KINDS)}")


@dataclass(frozen=True)
class Receipt:
    """Names one delivery: the session (connection) it came on and its tag there."""

    session: int
    tag: int


@dataclass
class _Outgoing:
    body: bytes
    msg_type: str
    exchange: str
    routing_key: str
    properties: pika.BasicProperties


class _SessionFailed(Exception):
    """A connection attempt that never got to consuming (or did so only briefly)."""


class AmqpBus:
    """The Bus protocol on RabbitMQ; see the module docstring for the invariants."""

    def __init__(
        self,
        urls: Sequence[str],
        name: str,
        exchange: str = "meshroute",
        *,
        heartbeat: int = 10,
        tls: TlsSettings | None = None,
        prefetch: int = PREFETCH,
        connect_timeout: float = 5,
        queue: QueueSettings | None = None,
        max_outbox: int = 100_000,
        max_in_flight: int = 10_000,
        declare_exchange: bool = True,
        topology_check: float = 3.0,
    ) -> None:
        if not urls:
            raise ValueError("AmqpBus needs at least one broker URL")
        self.name = name
        self.exchange = exchange
        self.queue = queue_name(name)
        self._params = [_parameters(u, name, heartbeat, tls, connect_timeout) for u in urls]
        self._urls = [mask_url(u) for u in urls]
        self._users = [p.credentials.username for p in self._params]
        self._prefetch = prefetch
        self._queue_settings = queue or QueueSettings()
        self._max_outbox = max_outbox
        self._max_in_flight = max_in_flight
        # False: only check that the exchange exists (passive declare needs no
        # configure permission, so an administrator can keep agents from deleting it).
        self._declare_exchange = declare_exchange
        self._topology_check = topology_check
        # Set when the broker refused our queue as declared (an older design's
        # durable queue of the same name): the next session deletes it first.
        self._replace_queue = False
        self._lock = threading.Lock()
        self._outbox: deque[_Outgoing] = deque()
        self._loop = None  # the current session's IOLoop, set/cleared under _lock
        self._flush_pending = False
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._handler: BusHandler | None = None
        self._handler_acknowledges = False
        self._conn: SelectConnection | None = None
        self._attempt = 0
        self._session_id = 0
        self._ack_upto = 0  # the highest tag the handler has settled (this session)
        self._ack_pending = False  # a _send_ack is scheduled on the ioloop
        self._reset_session()

    # -- Bus protocol --------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ready

    def start(self, handler: BusHandler) -> None:
        self._handler = handler
        self._handler_acknowledges = bool(getattr(handler, "acknowledges", False))
        self._thread = threading.Thread(target=self._run, name=f"meshroute-amqp-{self.name}")
        self._thread.daemon = True
        self._thread.start()

    def publish(
        self, body: bytes, *, msg_type: str, message_id: str, to: str | None = None
    ) -> None:
        # The user is per URL (all URLs normally name the same one); the one of the
        # URL in use is filled in when the message goes out.
        props = pika.BasicProperties(
            content_type="application/json",
            type=msg_type,
            app_id="meshroute",
            timestamp=int(time.time()),
            message_id=message_id,
            delivery_mode=pika.DeliveryMode.Transient,
        )
        exchange, key = (self.exchange, "") if to is None else ("", queue_name(to))
        with self._lock:
            self._outbox.append(_Outgoing(body, msg_type, exchange, key, props))
            if len(self._outbox) > self._max_outbox:
                lost = self._outbox.popleft()
                log.warning("%s: outbox full, dropped a %s message", self.name, lost.msg_type)
            self._schedule_flush_locked()

    def acknowledge(self, receipt: object) -> None:
        """Ack every delivery up to ``receipt`` (see the module doc); any thread."""
        if not isinstance(receipt, Receipt):
            raise TypeError(f"not a receipt of this bus: {receipt!r}")
        with self._lock:
            if receipt.session != self._session_id or receipt.tag <= self._ack_upto:
                return
            self._ack_upto = receipt.tag
            if self._loop is not None and not self._ack_pending:
                self._ack_pending = True
                self._loop.add_callback_threadsafe(self._send_ack)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_deadline = time.monotonic() + timeout
        self._stopping.set()
        with self._lock:  # else _session sees _stopping once its loop is published
            if self._loop is not None:
                self._loop.add_callback_threadsafe(self._begin_stop)
        if self._thread is not None:
            self._thread.join(max(0.0, self._stop_deadline - time.monotonic()) + 1.0)
        with self._lock:
            if self._outbox:
                log.warning("%s: stopped with %d unsent messages", self.name, len(self._outbox))

    # -- the I/O thread: sessions and reconnects --------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            retrying = tenacity.Retrying(
                wait=tenacity.wait_exponential(multiplier=0.2, max=5)
                + tenacity.wait_random(0, 0.1),
                stop=tenacity.stop_when_event_set(self._stopping),
                sleep=self._sleep,
                retry=tenacity.retry_if_exception_type(_SessionFailed),
                reraise=True,
            )
            try:
                retrying(self._session)
            except _SessionFailed:
                return  # stopping while the broker is unreachable

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)  # a stop ends the back-off at once

    def _session(self) -> None:
        if self._stopping.is_set():
            return
        index = self._attempt % len(self._params)
        self._attempt += 1
        self._reset_session(index)
        log.info("%s: connecting to %s", self.name, self._urls[index])
        conn = SelectConnection(
            self._params[index],
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed,
        )
        self._conn = conn
        with self._lock:
            self._loop = conn.ioloop
            if self._stopping.is_set():  # stop() came before the loop was published
                conn.ioloop.add_callback_threadsafe(self._begin_stop)
        try:
            conn.ioloop.start()
        finally:
            with self._lock:
                self._loop = None
                self._flush_pending = False
            conn.ioloop.close()
        if self._ready_since is None or time.monotonic() - self._ready_since < 1.0:
            raise _SessionFailed(self._urls[index])

    def _reset_session(self, index: int = 0) -> None:
        with self._lock:  # acknowledge() reads these from the agent's thread
            self._session_id += 1
            self._ack_upto = 0
            self._ack_pending = False
        self._acked = 0  # the highest tag acked to the broker (I/O thread only)
        self._index = index
        self._conn = None
        self._channel = None
        self._ready = False
        self._ready_since: float | None = None
        self._blocked = False
        self._closing = False
        self._unconfirmed: dict[int, _Outgoing] = {}
        self._tag = 0

    def _on_open(self, conn: SelectConnection) -> None:
        conn.add_on_connection_blocked_callback(lambda *_: self._set_blocked(True))
        conn.add_on_connection_unblocked_callback(lambda *_: self._set_blocked(False))
        conn.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, conn: SelectConnection, error: BaseException) -> None:
        reason, level = _reason(error), logging.INFO
        if _permanent(error):  # refused login, wrong vhost: only an operator fixes that,
            # so it is said once at ERROR (retries go on, at DEBUG, until it is fixed)
            repeat = reason == getattr(self, "_permanent_error", None)
            level, self._permanent_error = (logging.DEBUG if repeat else logging.ERROR), reason
        log.log(level, "%s: cannot connect to %s: %s", self.name, self._urls[self._index], reason)
        conn.ioloop.stop()

    def _on_channel_open(self, channel) -> None:
        # pika queues these RPCs and sends each after the previous one's reply.
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_cancel_callback(self._on_cancelled)
        channel.confirm_delivery(self._on_confirm)
        self._declare_exchange_on(channel)
        if self._replace_queue:
            log.warning("%s: deleting %s, declared differently before", self.name, self.queue)
            channel.queue_delete(self.queue)
        kind = self._queue_settings.kind
        channel.queue_declare(self.queue, durable=kind != "exclusive",
                              exclusive=kind == "exclusive",
                              arguments=self._queue_arguments())  # fmt: skip
        channel.queue_bind(self.queue, self.exchange)
        channel.basic_qos(prefetch_count=self._prefetch)
        channel.basic_consume(self.queue, self._on_delivery, callback=self._on_consuming)

    def _declare_exchange_on(self, channel) -> None:
        """The exchange, or a passive check of it (idempotent)."""
        channel.exchange_declare(
            self.exchange, "fanout", passive=not self._declare_exchange, durable=True
        )

    def _queue_arguments(self) -> dict[str, int | str]:
        settings = self._queue_settings
        args: dict[str, int | str] = {"x-message-ttl": settings.message_ttl_ms}
        if settings.kind != "exclusive":  # an exclusive queue dies with its connection
            args["x-expires"] = settings.expires_ms
        if settings.kind == "quorum":
            args["x-queue-type"] = "quorum"
        return args

    def _schedule_topology_check(self) -> None:
        if self._conn is not None and self._topology_check > 0:
            self._conn.ioloop.call_later(self._topology_check, self._check_topology)

    def _check_topology(self) -> None:
        """Declare the exchange and our binding again (someone may have deleted them).

        A broker error closes the channel, which ends the session: the next one
        declares everything. The next check is scheduled when this one is answered.
        """
        channel = self._channel
        if not self._ready or self._closing or channel is None or not channel.is_open:
            return
        self._declare_exchange_on(channel)
        channel.queue_bind(self.queue, self.exchange,
                           callback=lambda _frame: self._schedule_topology_check())  # fmt: skip

    def _on_consuming(self, _frame) -> None:
        self._ready = True
        self._ready_since = time.monotonic()
        log.info("%s: consuming %s on %s", self.name, self.queue, self._urls[self._index])
        self._schedule_topology_check()
        self._replace_queue = False
        self._requeue_unconfirmed()
        self._notify(True)
        self._flush()

    def _on_channel_closed(self, channel, reason: BaseException) -> None:
        self._channel = None
        if not self._closing:
            log.warning("%s: channel closed by the broker: %s%s", self.name, reason,
                        _advice(reason, self.queue))  # fmt: skip
        if not self._ready and _inequivalent(reason):
            self._replace_queue = True
        if self._conn is not None and self._conn.is_open:
            self._conn.close()

    def _on_cancelled(self, _frame) -> None:
        log.warning("%s: broker cancelled our consumer (queue deleted?)", self.name)
        if self._conn is not None and self._conn.is_open:
            self._conn.close()

    def _on_closed(self, conn: SelectConnection, reason: BaseException) -> None:
        was_ready = self._ready
        self._ready = False
        self._requeue_unconfirmed()
        log.info("%s: connection to %s closed: %s", self.name, self._urls[self._index], reason)
        if was_ready and not self._closing:  # a clean stop is no outage
            self._notify(False)
        conn.ioloop.stop()

    def _notify(self, up: bool) -> None:
        if self._handler is None:
            return
        try:
            self._handler.on_connection(up)
        except Exception:
            log.exception("%s: handler failed on on_connection(%s)", self.name, up)

    def _set_blocked(self, blocked: bool) -> None:
        log.warning("%s: broker %s publishing", self.name, "blocks" if blocked else "resumes")
        self._blocked = blocked
        if not blocked:
            self._flush()

    # -- the I/O thread: deliveries -----------------------------------------------------

    def _on_delivery(self, channel, method, props, body: bytes) -> None:
        envelope = Envelope(
            body=body,
            user_id=props.user_id,
            msg_type=props.type,
            message_id=props.message_id,
            received_at=time.monotonic(),
            receipt=Receipt(self._session_id, method.delivery_tag),
        )
        if self._handler is None:  # start() sets it before any connection exists
            return
        try:
            self._handler.on_message(envelope)
        except Exception:  # a handler bug must not kill the I/O thread
            # (a handler that acknowledges settles it with its next receipt)
            log.exception("%s: handler failed on a %s message", self.name, props.type)
        if not self._handler_acknowledges and channel.is_open:
            channel.basic_ack(method.delivery_tag)  # else redelivered after a reconnect

    def _send_ack(self) -> None:
        """One ``basic.ack`` for everything the handler settled since the last one."""
        with self._lock:
            self._ack_pending = False
            tag = self._ack_upto
        channel = self._channel
        if tag > self._acked and channel is not None and channel.is_open:
            channel.basic_ack(tag, multiple=True)  # tags only grow within a channel
            self._acked = tag

    # -- the I/O thread: publishing ---------------------------------------------------

    def _schedule_flush_locked(self) -> None:
        if self._loop is not None and not self._flush_pending:
            self._flush_pending = True
            self._loop.add_callback_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            self._flush_pending = False
            if not self._ready or self._blocked or self._channel is None:
                return
            room = self._max_in_flight - len(self._unconfirmed)
            batch = [self._outbox.popleft() for _ in range(min(room, len(self._outbox)))]
        user = self._users[self._index]
        for i, item in enumerate(batch):
            item.properties.user_id = user
            try:
                self._channel.basic_publish(
                    item.exchange, item.routing_key, item.body, item.properties
                )
            except pika.exceptions.AMQPError as exc:
                log.info("%s: publish failed (%s); will re-send", self.name, exc)
                with self._lock:
                    self._outbox.extendleft(reversed(batch[i:]))
                return
            self._tag += 1
            self._unconfirmed[self._tag] = item
        if self._closing:
            self._close_when_flushed()

    def _on_confirm(self, frame) -> None:
        method = frame.method
        if method.multiple:  # tags are in ascending (insertion) order
            done = []
            while self._unconfirmed and next(iter(self._unconfirmed)) <= method.delivery_tag:
                done.append(self._unconfirmed.pop(next(iter(self._unconfirmed))))
        else:
            one = self._unconfirmed.pop(method.delivery_tag, None)
            done = [] if one is None else [one]
        if isinstance(method, pika.spec.Basic.Nack):
            log.warning("%s: broker nacked %d messages; re-sending", self.name, len(done))
            with self._lock:
                self._outbox.extendleft(reversed(done))
        with self._lock:
            more = bool(self._outbox)
        if more:
            self._flush()
        elif self._closing:
            self._close_when_flushed()

    def _requeue_unconfirmed(self) -> None:
        """Put unconfirmed messages back in front, and keep only the newest heartbeat."""
        with self._lock:
            self._outbox.extendleft(reversed(list(self._unconfirmed.values())))
            self._unconfirmed.clear()
            beats = [i for i, m in enumerate(self._outbox) if m.msg_type == "heartbeat"]
            if len(beats) > 1:
                stale = set(beats[:-1])
                self._outbox = deque(m for i, m in enumerate(self._outbox) if i not in stale)

    # -- the I/O thread: stopping -------------------------------------------------------

    def _begin_stop(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._conn is None or not self._ready:
            self._close_now()
            return
        left = max(0.0, self._stop_deadline - time.monotonic())
        self._conn.ioloop.call_later(left, self._close_now)
        self._flush()

    def _close_when_flushed(self) -> None:
        with self._lock:
            pending = bool(self._outbox)
        if not pending and not self._unconfirmed:
            self._close_now()

    def _close_now(self) -> None:
        conn = self._conn
        if conn is not None and not (conn.is_closing or conn.is_closed):
            conn.close()
        elif self._loop_running():
            self._stop_loop()

    def _loop_running(self) -> bool:
        with self._lock:
            return self._loop is not None

    def _stop_loop(self) -> None:
        with self._lock:
            if self._loop is not None:
                self._loop.stop()


def _parameters(
    url: str, name: str, heartbeat: int, tls: TlsSettings | None, timeout: float
) -> pika.URLParameters:
    params = pika.URLParameters(url)
    if not params.credentials.username:
        raise ValueError(f"broker URL {mask_url(url)} names no user (needed for user_id)")
    params.client_properties = {
        "connection_name": f"meshroute agent {name}",
        "product": "meshroute",
        "version": __version__,
    }
    params.heartbeat = heartbeat
    params.connection_attempts = 1
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    if urlsplit(url).scheme == "amqps":
        params.ssl_options = _ssl_options(urlsplit(url).hostname or "", tls or TlsSettings())
    return params


def _ssl_options(host: str, tls: TlsSettings) -> pika.SSLOptions:
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None:
        key = str(tls.key_file) if tls.key_file else None
        context.load_cert_chain(str(tls.cert_file), key)
    return pika.SSLOptions(context, server_hostname=tls.server_hostname or host)


def _inequivalent(reason: BaseException) -> bool:
    """The broker refused our declare because the existing queue differs.

    406 for other arguments; 405 for a durable queue where we declare an exclusive
    one (405 also means "held by our previous connection": then the delete fails
    the same way and the retry goes on until the broker drops that connection).
    """
    code, text = getattr(reason, "reply_code", None), str(getattr(reason, "reply_text", ""))
    return (code == 406 and "inequivalent" in text) or code == 405


def _advice(reason: BaseException, queue: str) -> str:
    """What an operator should know about a channel error (empty if nothing)."""
    code = getattr(reason, "reply_code", None)
    text = str(getattr(reason, "reply_text", ""))
    if code == 404 and "home node" in text:
        return (
            f" (a durable queue {queue} left on a node that is down: it blocks this "
            "agent until that node is back or removed with `rabbitmqctl "
            "forget_cluster_node`; meshroute's own queues are exclusive and never do)"
        )
    if code == 405:
        return (
            f" ({queue} is still held by our previous connection, which the broker "
            "drops after its heartbeat timeout, or is a durable queue of an older "
            "meshroute; deleting it and retrying)"
        )
    return ""


_PERMANENT = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.AuthenticationError,
)


def _permanent(exc: BaseException) -> bool:
    """A refusal by the broker (login, vhost access) rather than a network problem."""
    error: BaseException | None = exc
    for _ in range(5):
        if error is None:
            return False
        if isinstance(error, _PERMANENT):
            return True
        if isinstance(error, pika.exceptions.ConnectionClosedByBroker):
            return error.reply_code in (403, 530)  # ACCESS_REFUSED, NOT_ALLOWED (vhost)
        inner = getattr(error, "exceptions", None)
        nested = error.args[0] if error.args else None
        error = inner[-1] if inner else nested if isinstance(nested, BaseException) else None
    return False


def _reason(error: BaseException) -> str:
    """Why a connection failed, in words: pika's workflow errors print as nothing."""
    for _ in range(5):  # pika nests: connection error > workflow error > connector error
        inner = getattr(error, "exceptions", None)
        if inner:
            error = inner[-1]
        elif error.args and isinstance(error.args[0], BaseException):
            error = error.args[0]
        else:
            break
    return f"{type(error).__name__}: {error}" if str(error) else repr(error)
