"""The agent's event loop: OpenVPN events in, bus messages across, kernel routes out.

One :class:`Agent` per OpenVPN server. Every input arrives on one queue and is
handled on the agent's own thread, in order:

- bus envelopes and broker up/down, from the bus's I/O thread (which only enqueues:
  pika services heartbeats only while its thread runs, so no kernel work there);
- hook events, from the hook receiver's thread;
- status polls, from the poller thread (one short management connection per poll);
- CLI queries, from the control socket's threads (answered between events).

Two things do not wait for the loop, so that a busy loop (a huge snapshot) cannot
make a live mesh look dead: the bus thread records when each sender's message
arrived (liveness counts from arrival), and a keeper thread re-sends the last
heartbeat when the loop has not sent one for 1.5 announce intervals (nothing the
heartbeat describes can have changed meanwhile: only the loop changes it).

After draining what is queued the loop runs timers, publishes what the core asked
for, and reconciles the kernel once (level-triggered): only addresses whose claims
changed, or everything on a full resync (at start, every ``resync_interval``, after
any failed route, and when the start-up sync window ends). The kernel is written by
this thread only. Then, and only then, the bus messages of the iteration are
acknowledged to the bus (one receipt, the last: acks are cumulative), so a message
the broker considers delivered has been applied to the table and the kernel.

Size (above 300 lines): the one thread that owns the kernel and the core: the queue,
the handlers of each input, publishing and the reconcile step share that thread's
state. The reads of it are in readout.py, the answers in views.py and metrics.py; the
reconcile state is owned by :class:`~meshroute.core.reconcile.Reconciler`.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshroute.agent.views import health_view, peers_view, table_view
from meshroute.bus.base import Bus, Envelope
from meshroute.core import codec
from meshroute.core.clock import Clock
from meshroute.core.engine import AgentCore, CoreSettings
from meshroute.core.local import CLIENT_CONNECT, LEARN_ADDRESS, Session
from meshroute.core.model import Address, ClaimRecord, RouteKey
from meshroute.core.reconcile import KernelMirror, Plan, Reconciler
from meshroute.core.telemetry import Histogram, LogBudget, PeerHistory
from meshroute.dataplane.base import Dataplane
from meshroute.openvpn.events import HookEvent

if TYPE_CHECKING:
    from meshroute.openvpn.hook_receiver import HookStats

log = logging.getLogger(__name__)

KEEP_INTERVAL = 2.0  # seconds between two writes of our own claims (when they changed)

# Route changes named one per line at INFO, at most this many per window; the rest
# of a burst is one summary line (and every route at DEBUG).
ROUTE_LOG_LINES = 20
ROUTE_LOG_WINDOW = 10.0
# Hook arrivals waiting for a route change of their address: bounded, because most
# hooks change no route on this agent (the client is local: OpenVPN routes it).
MAX_PENDING_HOOKS = 10_000
# A route change this long after the address's last hook was not caused by it.
MAX_HOOK_TO_ROUTE_MS = 60_000

StatusSource = Callable[[], Sequence[Session]]


@dataclass(frozen=True)
class _BusState:
    up: bool


@dataclass(frozen=True)
class _Polled:
    sessions: Sequence[Session] | None
    fetched_at: float
    error: str | None = None


@dataclass(frozen=True)
class _Query:
    kind: str
    reply: Future


@dataclass
class AgentStats:
    started_at: float = 0.0
    decode_errors: int = 0
    internal_errors: int = 0
    hook_events: int = 0
    ignored_local: int = 0
    polls_ok: int = 0
    polls_failed: int = 0
    last_poll_at: float | None = None
    last_poll_error: str | None = None
    applies: int = 0
    apply_failures: int = 0
    last_apply_at: float | None = None
    last_apply_summary: str = ""
    full_resyncs: int = 0
    route_errors: dict[str, str] = field(default_factory=dict)
    # Latency (seconds): one apply; one status poll; a hook datagram received -> the
    # route of its address changed on this agent.
    apply_seconds: Histogram = field(default_factory=Histogram)
    poll_seconds: Histogram = field(default_factory=Histogram)
    hook_to_route_seconds: Histogram = field(default_factory=Histogram)
    peer_history: PeerHistory = field(default_factory=PeerHistory)
    hooks: HookStats | None = None  # the hook receiver's counters (set by the daemon)
    hook_received_ms: dict[RouteKey, int] = field(default_factory=dict)
    route_log: LogBudget = field(
        default_factory=lambda: LogBudget(ROUTE_LOG_LINES, ROUTE_LOG_WINDOW)
    )

    def note_hook(self, address: RouteKey, received_ms: int | None) -> None:
        """Remember when a hook for ``address`` arrived (for hook_to_route_seconds)."""
        if received_ms is None:
            return
        if len(self.hook_received_ms) >= MAX_PENDING_HOOKS:
            self.hook_received_ms.clear()  # old ones changed no route: nothing to measure
        self.hook_received_ms[address] = received_ms


@dataclass(frozen=True)
class LoopSettings:
    status_poll_interval: float = 10.0
    resync_interval: float = 30.0
    tick: float = 0.1
    retry_after_failure: float = 1.0


class Agent:
    """Wires the core to a bus, a dataplane, OpenVPN sources and a clock (all injected)."""

    acknowledges = True  # the bus acks a message only when _iterate has applied it

    def __init__(
        self,
        core: AgentCore,
        *,
        bus: Bus,
        dataplane: Dataplane,
        status_source: StatusSource,
        clock: Clock,
        settings: LoopSettings | None = None,
        keep_claims: Callable[[list[ClaimRecord]], None] | None = None,
    ) -> None:
        self.core = core
        self.bus = bus
        self.dataplane = dataplane
        self.status_source = status_source
        self.clock = clock
        self.settings = settings or LoopSettings()
        self.reconciler = Reconciler(self.settings.resync_interval)
        self._receipt: object | None = None  # the last message's, unacked until applied
        # Our own claims are kept (meshroute.agent.incarnation) when they changed, at most
        # every KEEP_INTERVAL and at the stop, for the stamps a restart should reuse.
        self._keep_claims = keep_claims
        self._kept_digest: str | None = None
        self._next_keep = 0.0
        self.stats = AgentStats()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._goodbye = False
        self._poll_now = threading.Event()
        self._own_hops = core.settings.own_hops
        self._threads: list[threading.Thread] = []
        # broker user -> when its latest message reached our bus (the bus thread
        # writes, the loop reads): liveness is judged on arrival, however busy we are.
        self._arrivals: dict[str, float] = {}
        self._arrivals_lock = threading.Lock()
        self._poll_requested_for: float | None = None
        # (when, body, message id) of the last heartbeat the loop published
        self._last_heartbeat: tuple[float, bytes, str] | None = None
        self.keeper_heartbeats = 0
        self.on_iteration: Callable[[Agent], None] | None = None  # the daemon's watchdog

    # --- inputs, from any thread ------------------------------------------------

    def on_message(self, envelope: Envelope) -> None:
        if envelope.user_id is not None:
            at = envelope.received_at
            with self._arrivals_lock:
                self._arrivals[envelope.user_id] = at if at is not None else self.clock.monotonic()
        self.inbox.put(envelope)

    def on_connection(self, up: bool) -> None:
        self.inbox.put(_BusState(up))

    def on_hook(self, event: HookEvent) -> None:
        self.inbox.put(event)

    def query(self, kind: str, timeout: float = 5.0) -> dict:
        """Answer a CLI query on the agent's thread (so the view is consistent)."""
        reply: Future = Future()
        self.inbox.put(_Query(kind, reply))
        return reply.result(timeout=timeout)

    def call_soon(self, func: Callable[[], None]) -> None:
        """Run ``func`` on the agent's thread (SimpleQueue.put is safe in signal handlers)."""
        self.inbox.put(func)

    def reconfigure(self, core_settings: CoreSettings, loop: LoopSettings) -> None:
        """Apply settings that can change at run time (on the agent's thread)."""
        self.core.reconfigure(core_settings, self.clock.monotonic())
        self.settings = loop
        self.reconciler.resync_interval = loop.resync_interval
        self.reconciler.queue_resync()  # client networks may have changed

    def request_stop(self, goodbye: bool = False) -> None:
        """Safe from a signal handler: only sets flags that the loop polls.

        By default an agent stops WITHOUT a goodbye: an agent stopping is not its
        clients leaving, peers keep our claims for the hold time, and a restart within
        it changes no route anywhere (DESIGN rule 5). ``goodbye=True`` is
        :meth:`leave`.
        """
        self._goodbye = goodbye
        self._stop.set()

    def leave(self) -> None:
        """Stop and say goodbye: every peer withdraws our clients' routes at once.

        For a server that is leaving the mesh or whose OpenVPN is gone for good
        (``meshroute leave``); never what a plain stop or restart does.
        """
        self.request_stop(goodbye=True)

    @property
    def mirror(self) -> KernelMirror:
        """The mirror of the kernel's owned routes (read by views and metrics)."""
        return self.reconciler.mirror

    @property
    def left(self) -> bool:
        """True once :meth:`leave` stopped the agent (it said goodbye)."""
        return self._stop.is_set() and self._goodbye

    def poll_now(self) -> None:
        self._poll_now.set()

    # --- life -------------------------------------------------------------------

    def run(self) -> None:
        """Run until :meth:`request_stop`; then say goodbye and close the bus."""
        now = self.clock.monotonic()
        self.stats.started_at = now
        self.core.start(now)
        self._start_poller()
        self._start_thread(self._keeper, "heartbeat-keeper")
        self.bus.start(self)
        log.info(
            "agent %s started (epoch %s, next hops %s)",
            self.core.name, self.core.epoch, ", ".join(map(str, self._own_hops)) or "none",
        )  # fmt: skip
        try:
            while not self._stop.is_set():
                self._iterate()
        finally:
            self._shutdown()

    def _iterate(self) -> None:
        try:
            first = self.inbox.get(timeout=0 if self.reconciler.busy else self.settings.tick)
        except queue.Empty:
            first = None
        batch = [first] if first is not None else []
        while len(batch) < 10_000:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        queries = [item for item in batch if isinstance(item, _Query)]
        receipt = None  # of the last bus message in the batch (bus order = inbox order)
        run: list[Envelope] = []  # consecutive bus messages, handled in one call
        for item in batch:
            if isinstance(item, Envelope):
                if item.receipt is not None:
                    receipt = item.receipt
                run.append(item)
                continue
            if run:
                self._handle_envelopes(run)
                run = []
            if not isinstance(item, _Query):
                self._handle_safely(item)
        if run:
            self._handle_envelopes(run)
        now = self.clock.monotonic()
        with self._arrivals_lock:
            arrivals, self._arrivals = self._arrivals, {}
        self.core.note_arrivals(arrivals)
        self.core.tick(now)
        self._publish()
        self._poll_if_due(now)
        self._reconcile(now)
        if receipt is not None:  # settled only once applied (every slice): one ack
            self._receipt = receipt
        if self._receipt is not None and not self.reconciler.busy:
            self.bus.acknowledge(self._receipt)
            self._receipt = None
        if now >= self._next_keep:
            self._keep_own_claims()
            self._next_keep = now + KEEP_INTERVAL
        for item in queries:  # answered after the reconcile, so "installed" is current
            self._answer(item)
        if self.on_iteration is not None:
            self.on_iteration(self)

    def _keep_own_claims(self) -> None:
        local = self.core.table.local
        if self._keep_claims is None or not self.core.local_known:
            return
        if local.digest != self._kept_digest:
            self._keep_claims(list(local.records.values()))
            self._kept_digest = local.digest

    def _shutdown(self) -> None:
        self._keep_own_claims()
        if self._goodbye:
            log.info("agent %s stopping: saying goodbye", self.core.name)
            self.core.stop()
            self._publish()
        else:
            log.info("agent %s stopping for a restart: no goodbye", self.core.name)
        self._poll_now.set()
        self.bus.stop(timeout=5.0)
        for thread in self._threads:
            thread.join(timeout=5.0)

    # --- handlers ---------------------------------------------------------------

    def _handle_safely(self, item: object) -> None:
        """One input, handled; a bug triggered by it is logged, never fatal to the loop."""
        try:
            self._handle(item)
        except Exception:
            self._internal_error(item)

    def _internal_error(self, item: object) -> None:
        """Called from an ``except`` block: count and log the bug, the loop goes on."""
        self.stats.internal_errors += 1
        log.exception("internal error handling %s (dropped; the agent goes on)",
                      type(item).__name__)  # fmt: skip

    def _handle(self, item: object) -> None:
        """Any input but a bus message (those go through :meth:`_handle_envelopes`)."""
        now = self.clock.monotonic()
        if isinstance(item, HookEvent):
            self._handle_hook(item, now)
        elif isinstance(item, _Polled):
            self._handle_poll(item)
        elif callable(item):
            item()
        elif isinstance(item, _BusState):
            if item.up:
                self.core.on_bus_up(now)
                self._poll_now.set()
            else:
                self.core.on_bus_down()

    def _handle_envelopes(self, envelopes: Iterable[Envelope]) -> None:
        """Bus messages in a row, in order, each decoded and applied on its own.

        One call per run instead of three frames per message (the drain's per-event
        Python: bench/bench_loop.py). Still one message at a time: a malformed body
        is refused and counted alone, a bug triggered by one message is logged and
        counted alone, and its batch-mates are applied as if it had not come.
        """
        max_claims = self.core.settings.max_claims_per_peer  # no setting changes in a run
        decode, refused = codec.decode, codec.CodecError
        for envelope in envelopes:
            # Liveness counts from arrival, not from now.
            at = envelope.received_at
            now = at if at is not None else self.clock.monotonic()
            try:
                message = decode(envelope.body, user_id=envelope.user_id, max_claims=max_claims)
            except refused as exc:
                self.stats.decode_errors += 1
                log.warning("refused a bus message from user %s: %s", envelope.user_id, exc)
                continue
            except Exception:
                self._internal_error(envelope)
                continue
            try:
                self.core.on_message(message, now)
            except Exception:
                self._internal_error(envelope)

    def _handle_hook(self, event: HookEvent, now: float) -> None:
        self.stats.hook_events += 1
        wall = self.clock.wall_ms()
        addresses = [a for a in (event.address, event.address6, event.subnet) if a is not None]
        for address in self._allowed(addresses, event.common_name):
            self.stats.note_hook(address, event.received_ms)
            if event.op in ("add", "update", "connect"):
                source = CLIENT_CONNECT if event.kind == "client-connect" else LEARN_ADDRESS
                since = event.connected_since
                cn = event.common_name or ""
                self.core.on_connect(address, cn, since, now=now, wall_ms=wall, source=source)
            else:
                self.core.on_disconnect(
                    address, event.common_name, now=now, connected_since=event.connected_since
                )

    def _handle_poll(self, polled: _Polled) -> None:
        self.stats.last_poll_at = polled.fetched_at
        if polled.sessions is None:
            self.stats.polls_failed += 1
            if polled.error != self.stats.last_poll_error:
                log.warning("status poll failed (claims kept as they are): %s", polled.error)
            self.stats.last_poll_error = polled.error
            return
        if self.stats.last_poll_error is not None:
            log.info("status poll works again")
        self.stats.polls_ok += 1
        self.stats.last_poll_error = None
        sessions = [s for s in polled.sessions if self._allowed([s.address], s.common_name)]
        self.core.on_poll(sessions, fetched_at=polled.fetched_at)

    def _allowed(self, addresses: Iterable[RouteKey], common_name: str | None) -> list[RouteKey]:
        ok = [a for a in addresses if self.core.table.admits(a)]
        for address in set(addresses) - set(ok):
            self.stats.ignored_local += 1
            log.warning(
                "client %s: %s is outside client_networks (a subnet: refused by "
                "routed_networks, docs/subnets.md); not announced", common_name, address,
            )  # fmt: skip
        return ok

    def _answer(self, query: _Query) -> None:
        views = {"table": table_view, "peers": peers_view, "health": health_view}
        try:
            query.reply.set_result(views[query.kind](self))
        except Exception as exc:  # a bad query must never stop the loop
            query.reply.set_exception(exc)

    # --- outputs ----------------------------------------------------------------

    def _publish(self) -> None:
        for out in self.core.take_outbox():
            message = out.message
            header = message.header
            body = codec.encode(message)
            message_id = f"{header.origin}-{header.epoch}-{header.seq}"
            self.bus.publish(body, msg_type=message.type, message_id=message_id, to=out.to)
            if message.type == "heartbeat" and out.to is None:
                self._last_heartbeat = (self.clock.monotonic(), body, message_id)

    def _poll_if_due(self, now: float) -> None:
        """The core wants an early status poll (a local session lost a contest)."""
        due = self.core.poll_due
        if due is not None and now >= due and self._poll_requested_for != due:
            self._poll_requested_for = due
            self._poll_now.set()

    def _reconcile(self, now: float) -> None:
        """One reconcile step (the plan is the reconciler's; the kernel work is here)."""
        try:
            plan = self.reconciler.plan(self.core, now, self.dataplane.dump, self._own_hops)
        except OSError as exc:
            log.error("cannot list owned routes: %s; retrying", exc)
            self.reconciler.retry_soon(now, self.settings.retry_after_failure)
            return
        self.stats.full_resyncs = self.reconciler.full_resyncs
        if plan:
            self._apply(plan, now)

    def _apply(self, plan: Plan, now: float) -> None:
        started = time.perf_counter()
        try:
            # The core names host routes by address; the dataplane speaks prefixes.
            result = self.dataplane.apply(plan.routes(), plan.deletes())
        except OSError as exc:  # the netlink socket itself failed: nothing is known
            self.stats.apply_failures += 1
            log.error("applying %s failed: %s; full resync in %.1fs", plan.summary(), exc,
                      self.settings.retry_after_failure)  # fmt: skip
            self.reconciler.retry_soon(now, self.settings.retry_after_failure)
            return
        took = time.perf_counter() - started
        self.reconciler.record(plan, result.failed)
        self.stats.applies += 1
        self.stats.apply_seconds.observe(took)
        self.stats.last_apply_at = now
        self.stats.last_apply_summary = plan.summary()
        self.stats.route_errors = {str(p): e for p, e in result.failed.items()}
        self._observe_hook_latency(plan)
        self._log_routes(plan, took, now)
        if result.failed:
            self.stats.apply_failures += 1
            log.error("%d route(s) failed; full resync in %.1fs", len(result.failed),
                      self.settings.retry_after_failure)  # fmt: skip
            self.reconciler.retry_soon(now, self.settings.retry_after_failure)

    def _observe_hook_latency(self, plan: Plan) -> None:
        pending = self.stats.hook_received_ms
        if not pending:
            return
        wall = self.clock.wall_ms()
        if len(pending) < len(plan.replace) + len(plan.delete):  # walk the smaller side
            deleted = set(plan.delete)
            changed = [a for a in pending if a in plan.replace or a in deleted]
        else:
            changed = [a for a in itertools.chain(plan.replace, plan.delete) if a in pending]
        for address in changed:
            received = pending.pop(address, None)
            if received is not None and wall - received <= MAX_HOOK_TO_ROUTE_MS:
                self.stats.hook_to_route_seconds.observe(max(0, wall - received) / 1000)

    def _log_routes(self, plan: Plan, took: float, now: float) -> None:
        """Each route change names address, client, owner and next hop (INFO, bounded)."""
        changes: Iterable[tuple[RouteKey, Address | None]] = itertools.chain(
            plan.replace.items(), ((a, None) for a in plan.delete)
        )
        total = len(plan.replace) + len(plan.delete)
        budget, detailed = self.stats.route_log, log.isEnabledFor(logging.DEBUG)
        for shown, (address, hop) in enumerate(changes):
            if budget.allow(now):
                log.info("%s", self._describe_route(address, hop))
            elif detailed:
                log.debug("%s", self._describe_route(address, hop))
            else:
                budget.suppressed += total - shown - 1  # allow() counted this one
                break
        left_out = budget.take_suppressed()
        summary = f"routes: {plan.summary()} ({took * 1e3:.1f} ms)"
        if left_out:
            summary += f"; {left_out} change(s) not listed (rate limit; every one at DEBUG)"
        log.info("%s", summary)

    def _describe_route(self, address: RouteKey, hop: Address | None) -> str:
        claim = self.core.table.winner(address)
        client = claim.record.common_name if claim else None
        if hop is not None:
            owner = claim.owner if claim else "?"
            return f"route {address}: via {hop} (client {client}, owner {owner})"
        if claim is None:
            return f"route {address}: withdrawn (no claim left)"
        if claim.owner == self.core.name:
            return f"route {address}: withdrawn (client {client} is local now)"
        return f"route {address}: withdrawn (client {client}, owner {claim.owner}: no next hop)"

    # --- status poller ----------------------------------------------------------

    def _start_poller(self) -> None:
        self._start_thread(self._poller, "status-poller")

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _keeper(self) -> None:
        """Re-send the last heartbeat while the loop is too busy to send one."""
        interval = self.core.settings.announce_interval
        while not self._stop.wait(interval / 4):
            last = self._last_heartbeat
            now = self.clock.monotonic()
            if last is None or now - last[0] < 1.5 * self.core.settings.announce_interval:
                continue
            self.keeper_heartbeats += 1
            self._last_heartbeat = (now, last[1], last[2])
            self.bus.publish(
                last[1], msg_type="heartbeat", message_id=f"{last[2]}-k{self.keeper_heartbeats}"
            )

    def _poller(self) -> None:
        while not self._stop.is_set():
            fetched_at = self.clock.monotonic()
            try:
                sessions = self.status_source()
                self.inbox.put(_Polled(list(sessions), fetched_at))
            except Exception as exc:  # any failure is reported, the poller goes on
                self.inbox.put(_Polled(None, fetched_at, str(exc)))
            self._poll_now.wait(self.settings.status_poll_interval)
            self._poll_now.clear()
