"""The agent's protocol logic as a pure state machine (no threads, no sockets).

:class:`AgentCore` turns inputs (bus messages, hook events, status polls, timer
ticks, broker up/down) into outgoing messages in :attr:`AgentCore.outbox` and
changes in its :class:`~meshroute.state.ClaimTable`. The I/O agent
(:mod:`meshroute.agent`) feeds it and carries out what it asks; simulations and
property tests drive many cores through an in-memory bus with a fake clock.

Life of an agent, and the invariants it keeps:

1. **Start.** A new epoch (wall clock ms). Once connected it asks every peer for a
   snapshot (``sync-request``); answers arrive as direct snapshots that also echo
   our previous epoch's claims. Routes toward peers are added as soon as snapshots
   arrive, but no route is deleted, and the first status poll is held back, until
   the sync window (``sync_timeout`` from the first broker connection) has passed:
   adopted routes stay until explained, and sessions found again keep their
   echoed stamps.
2. **Local state first.** Until the first status poll succeeded the agent does not
   know its own clients, so it sends no snapshot: peers are not synced to the new
   epoch and keep its previous epoch's claims meanwhile, so a restart changes no
   route anywhere. The first poll's snapshot goes to everyone.
3. **Running.** Local changes go out as deltas; a heartbeat every
   ``announce_interval`` carries a digest of the local claims; a peer whose view
   differs asks for a snapshot, which is sent to it alone.
4. **Isolation.** While the broker connection is down the table is frozen (nobody
   expires). On reconnect the agent asks everyone for snapshots and sends its own,
   so peers that expired it relearn it at once.
5. **Stop.** A goodbye, so peers withdraw at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshroute.local import CLIENT_CONNECT, Change, LocalClaims, Session
from meshroute.model import (
    Address,
    Delta,
    Goodbye,
    Header,
    Heartbeat,
    Message,
    Network,
    Snapshot,
    SyncRequest,
    address_key,
)
from meshroute.state import ClaimTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    """A message to publish: to every agent (``to`` None) or to one agent."""

    message: Message
    to: str | None = None


@dataclass(frozen=True)
class CoreSettings:
    name: str
    hold_time: float = 15.0
    announce_interval: float = 5.0
    sync_timeout: float = 3.0
    client_networks: tuple[Network, ...] = ()
    max_claims_per_peer: int = 65536
    next_hop: Address | None = None
    next_hop6: Address | None = None


@dataclass
class _Timers:
    next_heartbeat: float = 0.0
    sync_until: float = 0.0
    asked: dict[str, float] = field(default_factory=dict)  # peer -> when we last asked


class AgentCore:
    def __init__(self, settings: CoreSettings, *, epoch: int) -> None:
        self.settings = settings
        self.name = settings.name
        self.epoch = epoch
        self.table = ClaimTable(
            settings.name,
            hold_time=settings.hold_time,
            client_networks=settings.client_networks,
            max_claims_per_peer=settings.max_claims_per_peer,
        )
        self.local = LocalClaims(self.table, started_ms=epoch)
        self.outbox: list[Outgoing] = []
        self.local_known = False
        self.bus_up = False
        self._seq = 0
        self._state_seq = -1
        self._timers = _Timers()
        self._pending_snapshot_to: set[str] = set()
        self.synced = False  # the start-up sync window has passed: deletes are allowed
        self._pending_poll: tuple[list[Session], float] | None = None

    # --- lifecycle --------------------------------------------------------------

    def start(self, now: float) -> None:
        self._timers.sync_until = float("inf")  # the window opens with the broker
        self._timers.next_heartbeat = now
        self.table.freeze("not connected to the broker yet")

    def reconfigure(self, settings: CoreSettings) -> None:
        """New timers, client networks and cap (name and next hops need a restart)."""
        self.settings = settings
        self.table.hold_time = settings.hold_time
        self.table.client_networks = tuple(settings.client_networks)
        self.table.max_claims_per_peer = settings.max_claims_per_peer

    def stop(self) -> None:
        self._send(Goodbye(self._header()))

    def on_bus_up(self, now: float) -> None:
        self.bus_up = True
        if self._timers.sync_until == float("inf"):
            # The sync window counts from the first connection, not from the start:
            # a slow broker must not cost a restarted agent its peers' echoes.
            self._timers.sync_until = now + self.settings.sync_timeout
        self.table.thaw(now)
        self._send(SyncRequest(self._header(), target=None))
        if self.local_known:
            self._send_snapshot(to=None)

    def on_bus_down(self) -> None:
        self.bus_up = False
        self.table.freeze("broker connection lost")

    # --- inputs -----------------------------------------------------------------

    def on_message(self, message: Message, now: float) -> None:
        reaction = self.table.apply(message, now)
        if reaction.send_snapshot_to is not None:
            if self.local_known:
                self._send_snapshot(to=reaction.send_snapshot_to)
            else:
                self._pending_snapshot_to.add(reaction.send_snapshot_to)
        if reaction.request_sync_from is not None:
            self._ask(reaction.request_sync_from, now)

    def on_connect(
        self,
        address: Address,
        common_name: str,
        connected_since: int | None,
        *,
        now: float,
        wall_ms: int,
        source: str = CLIENT_CONNECT,
    ) -> None:
        changes = self.local.connected(
            address, common_name, connected_since, now=now, wall_ms=wall_ms, source=source
        )
        self._publish(changes)

    def on_disconnect(
        self,
        address: Address,
        common_name: str | None,
        *,
        now: float,
        connected_since: int | None = None,
    ) -> None:
        changes = self.local.disconnected(
            address, common_name, now=now, connected_since=connected_since
        )
        self._publish(changes)

    def on_poll(self, sessions: Iterable[Session], *, fetched_at: float) -> None:
        if not self.synced:
            # The first poll waits for the sync window: peers' answers echo the
            # stamps of our previous epoch, which the sessions found again keep.
            self._pending_poll = (list(sessions), fetched_at)
            return
        changes = self.local.poll(sessions, fetched_at=fetched_at)
        if not self.local_known:
            self.local_known = True
            log.info("local clients known (%d): announcing a snapshot", len(self.table.local))
            self._send_snapshot(to=None)
            for peer in sorted(self._pending_snapshot_to):
                self._send_snapshot(to=peer)
            self._pending_snapshot_to.clear()
            return
        self._publish(changes)

    def tick(self, now: float) -> list[str]:
        """Timers: heartbeat, end of the sync window, expiry. Returns expired peers."""
        self.synced = now >= self._timers.sync_until
        if self.synced and self._pending_poll is not None:
            sessions, fetched_at = self._pending_poll
            self._pending_poll = None
            self.on_poll(sessions, fetched_at=fetched_at)
        if now >= self._timers.next_heartbeat and self.bus_up:
            self._send_heartbeat()
            self._timers.next_heartbeat = now + self.settings.announce_interval
        return self.table.expire(now)

    # --- outputs ----------------------------------------------------------------

    def _header(self) -> Header:
        self._seq += 1
        return Header(self.name, self.epoch, self._seq)

    def _send(self, message: Message, to: str | None = None) -> None:
        self.outbox.append(Outgoing(message, to))

    def _publish(self, changes: list[Change]) -> None:
        for address, record in changes:
            header = self._header()
            self._state_seq = header.seq
            self._send(Delta(header, address, record))

    def _send_snapshot(self, to: str | None) -> None:
        header = self._header()
        if to is None:
            # Only what everyone received is "our state": a heartbeat announcing the
            # seq of a snapshot sent to one peer would make every other peer ask.
            self._state_seq = header.seq
        local = self.table.local.records
        claims = tuple(local[a] for a in sorted(local, key=address_key))
        echo = self.table.held_for(to) if to is not None else ()
        s = self.settings
        self._send(Snapshot(header, s.next_hop, s.next_hop6, claims, echo), to)  # type: ignore[arg-type]

    def _send_heartbeat(self) -> None:
        # Before the first poll this epoch has sent no snapshot, so no peer is synced
        # to it and none compares the (empty) digest: they keep our old claims.
        s = self.settings
        local = self.table.local
        self._send(
            Heartbeat(
                self._header(),
                s.next_hop,  # type: ignore[arg-type]
                s.next_hop6,  # type: ignore[arg-type]
                state_seq=max(self._state_seq, 0),
                count=len(local),
                digest=local.digest,
            )
        )

    def _ask(self, peer: str, now: float) -> None:
        """Ask one peer for a snapshot, at most once per announce interval."""
        last = self._timers.asked.get(peer)
        if last is not None and now - last < self.settings.announce_interval:
            return
        self._timers.asked[peer] = now
        self._send(SyncRequest(self._header(), target=peer), to=peer)

    def take_outbox(self) -> list[Outgoing]:
        out, self.outbox = self.outbox, []
        return out
