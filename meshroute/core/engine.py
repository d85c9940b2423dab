"""The agent's protocol logic as a pure state machine (no threads, no sockets).

:class:`AgentCore` turns inputs (bus messages, hook events, status polls, timer
ticks, broker up/down) into outgoing messages in :attr:`AgentCore.outbox` and
changes in its :class:`~meshroute.core.table.ClaimTable`. The I/O agent
(:mod:`meshroute.agent.loop`) feeds it and carries out what it asks; simulations and
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
   so peers that expired it relearn it at once. A link that dies silently (no FIN,
   no RST) leaves the connection "up": so a peer is expired only once our own
   messages have come back through the broker after its deadline (when a deadline
   passes we send a heartbeat at once, to ourselves as to everyone, and its echo
   decides). An agent that cannot hear itself expires nobody, however long.
5. **Time.** Every message carries our hybrid logical clock and wall clock; every
   message received is merged into the clock and updates the sender's offset
   estimate (:mod:`meshroute.core.hlc`). A local session that loses to a peer's claim
   while its client still talks to us re-asserts itself (:mod:`meshroute.core.local`):
   the core asks for an early status poll (:attr:`AgentCore.poll_due`) to see it.
6. **Deletes wait for knowledge.** A route toward a peer whose current state we
   have not received (restarted, not yet synced) is never deleted, nor, for a hold
   time after we start listening, one toward a next hop nobody has announced yet
   (a peer restarting at the same time as us): :meth:`AgentCore.keeps_route`.
7. **Stop.** For a restart nothing (peers keep our claims for the hold time);
   for leaving, a goodbye, so peers withdraw at once.

Size (above 300 lines): the life of an agent (start, local state first, running,
isolation, time, deletes, stop) is one state machine whose steps share its timers; the
numbered list above is the map of the file.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from meshroute.core.clock import SystemClock
from meshroute.core.hlc import HybridClock, OffsetEstimate
from meshroute.core.local import CLIENT_CONNECT, Change, LocalClaims, Session
from meshroute.core.model import (
    Address,
    ClaimRecord,
    Delta,
    Goodbye,
    Header,
    Heartbeat,
    Message,
    Network,
    RouteKey,
    Snapshot,
    SyncRequest,
    address_key,
)
from meshroute.core.table import ClaimTable

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
    routed_networks: tuple[Network, ...] = ()  # subnets behind clients (empty: none)
    max_claims_per_peer: int = 65536
    next_hop: Address | None = None
    next_hop6: Address | None = None
    max_clock_skew: float = 300.0
    clock_offset_warning: float = 1.0
    backbone_networks: tuple[Network, ...] = ()
    reserved_hops: tuple[Address, ...] = ()  # the broker's addresses: never a next hop

    @property
    def own_hops(self) -> tuple[Address, ...]:
        return tuple(h for h in (self.next_hop, self.next_hop6) if h is not None)


# After a local session loses to a peer's claim, poll this soon: Last Ref has a
# resolution of one second, so a poll sooner could not show a later packet.
CONTEST_POLL_DELAY = 1.5
# At most one probe heartbeat (to learn whether we still hear ourselves) this often.
PROBE_INTERVAL = 0.5


@dataclass
class _Timers:
    next_heartbeat: float = 0.0
    sync_until: float = 0.0
    asked: dict[str, float] = field(default_factory=dict)  # peer -> when we last asked


class AgentCore:
    def __init__(
        self,
        settings: CoreSettings,
        *,
        epoch: int,
        wall_clock: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.epoch = epoch
        wall = wall_clock if wall_clock is not None else SystemClock().wall_ms
        self.clock = HybridClock(wall, int(settings.max_clock_skew * 1000))
        self.table = ClaimTable(
            settings.name,
            hold_time=settings.hold_time,
            client_networks=settings.client_networks,
            max_claims_per_peer=settings.max_claims_per_peer,
            clock=self.clock,
            backbone_networks=settings.backbone_networks,
            reserved_hops=settings.own_hops + settings.reserved_hops,
            routed_networks=settings.routed_networks,
        )
        self.local = LocalClaims(self.table, started_ms=epoch)
        self.heard_self_at: float | None = None  # our own latest message came back
        self.listening_since: float | None = None  # first broker connection
        self.poll_due: float | None = None  # an early status poll is wanted then
        self.full_resync_wanted = False  # a peer's state arrived: re-judge held routes
        self._last_probe = float("-inf")
        self._own_transit = OffsetEstimate()  # our own messages: sent -> back, one clock
        self._hearing_since: float | None = None  # hearing the bus without a break since
        self._unknown_released = False  # routes toward unknown hops no longer kept
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

    def remember(self, records: Iterable[ClaimRecord]) -> None:
        """Our own claims as we kept them before a restart (meshroute.agent.incarnation):
        sessions found again by the first poll keep these stamps, as with echoes, and
        until that poll they are held as provisional local claims."""
        records = list(records)
        self.table.keep_echo(records)
        self.local.provisional(records)

    def start(self, now: float) -> None:
        self._timers.sync_until = float("inf")  # the window opens with the broker
        self._timers.next_heartbeat = now
        self.table.freeze("not connected to the broker yet")

    def reconfigure(self, settings: CoreSettings, now: float) -> None:
        """New timers, client and routed networks and cap (name and next hops need a
        restart).

        Peers' claims are judged again under the new networks and cap; our own
        claims now outside the client (or routed) networks are withdrawn.
        """
        self.settings = settings
        self.table.hold_time = settings.hold_time
        self.table.set_policy(
            settings.client_networks,
            settings.max_claims_per_peer,
            now,
            routed_networks=settings.routed_networks,
        )
        outside = [a for a in self.table.local.records if not self.table.admits(a)]
        for address in outside:
            self._publish(self.local.disconnected(address, None, now=now))

    def stop(self) -> None:
        self._send(Goodbye(self._header()))

    def on_bus_up(self, now: float) -> None:
        self.bus_up = True
        if self.listening_since is None:
            self.listening_since = now
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
        """A validated message that arrived (on the bus thread) at monotonic ``now``."""
        header = message.header
        if header.origin == self.name:
            if header.epoch == self.epoch:  # our own, back through the broker
                self.heard_self_at = max(self.heard_self_at or now, now)
                if header.sent_ms is not None:
                    self._own_transit.add(header.sent_ms, self.clock.wall())
            return
        # A message changes its sender's view alone (table.apply touches no other
        # peer), so only the sender can have become synced: no walk over every peer.
        was_synced = self._peer_synced(header.origin)
        reaction = self.table.apply(message, now)
        if isinstance(message, Snapshot) and message.echo and not self.local_known:
            self.local.provisional(message.echo)
        if self.table.contested:
            self._note_contests(now)
        if not was_synced and self._peer_synced(header.origin):
            self.full_resync_wanted = True
        if reaction.send_snapshot_to is not None:
            if self.local_known:
                self._send_snapshot(to=reaction.send_snapshot_to)
            else:
                self._pending_snapshot_to.add(reaction.send_snapshot_to)
        if reaction.request_sync_from is not None:
            self._ask(reaction.request_sync_from, now)

    def note_arrivals(self, arrivals: Mapping[str, float]) -> None:
        """Broker users whose messages reached our bus (not yet processed), and when."""
        for name, at in arrivals.items():
            if name == self.name:
                self.heard_self_at = max(self.heard_self_at or at, at)
            else:
                self.table.note_arrival(name, at)

    def isolated(self, now: float) -> str | None:
        """Why we cannot hear the bus now (None if we can): shown in health."""
        if not self.bus_up:
            return "not connected to the broker"
        limit = 2 * self.settings.announce_interval + 1.0
        since = self.heard_self_at if self.heard_self_at is not None else self.listening_since
        if since is not None and now - since > limit:
            return f"our own messages have not come back through the broker for {now - since:.1f}s"
        return None

    def keeps_route(self, now: float) -> Callable[[RouteKey, Address], bool]:
        """Which routes (address, next hop) must not be deleted now, though unwanted.

        During the start-up sync window, every one. After it, those toward a peer
        whose current state we have not received (it restarted and has sent no
        snapshot yet), and, until we have heard the bus for a whole hold time without
        a break, those toward a next hop no peer has announced (a peer that
        restarted with us and has not spoken yet). Never one for an address whose
        client connected here since we started (a local fact: the route is wrong).
        """
        ours = self.local.fresh  # a session of ours newer than our start: a local fact
        if not self.synced:  # the sync window: adopted routes stay until explained
            return lambda address, hop: address not in ours
        peers = self.table.peers.values()
        unsynced = {h for p in peers if not p.synced for h in (p.next_hop, p.next_hop6) if h}
        if self._unknown_released:
            return lambda address, hop: hop in unsynced and address not in ours
        # Until we have heard the bus for a whole hold time without a break (frozen
        # or isolated, we cannot tell a dead peer from our own deafness): "unknown"
        # is a hop no peer has announced since we started (a peer that said goodbye
        # or expired meanwhile was known: its routes go).
        known = self.table.hops_seen
        return lambda address, hop: address not in ours and (hop in unsynced or hop not in known)

    def _note_hearing(self, now: float) -> None:
        if self.isolated(now) is not None:
            self._hearing_since, self._unknown_released = None, False
            return
        if self._hearing_since is None:
            self._hearing_since = now
        if not self._unknown_released and now - self._hearing_since > self.settings.hold_time:
            self._unknown_released = True  # a silent unknown hop is now a dead one
            self.full_resync_wanted = True

    def _peer_synced(self, name: str) -> bool:
        peer = self.table.peers.get(name)
        return peer is not None and peer.synced

    def _note_contests(self, now: float) -> None:
        contested = self.table.contested
        if not contested:
            return
        wall = self.clock.wall()
        for address in contested:
            if self.local.contest(address, wall) and self.poll_due is None:
                self.poll_due = now + CONTEST_POLL_DELAY
        contested.clear()

    def on_connect(
        self,
        address: RouteKey,
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
        address: RouteKey,
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
        if self.poll_due is not None and fetched_at >= self.poll_due:
            self.poll_due = None
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
        self._note_contests(fetched_at)

    def _correct_clock(self) -> None:
        """Stamp in mesh time: our wall clock less how far it runs ahead of the median
        of our peers' clocks (ourselves counted as 0). One liar moves the median by
        one place at most, and the correction is bounded by max_clock_skew."""
        # A peer's estimate is its offset less the least transit delay of its messages;
        # our own messages' round trip through the broker (one clock, no offset) has
        # the same two legs, so adding its least delay back removes that bias.
        bias = self._own_transit.offset_ms or 0  # minus the least own transit, <= 0
        offsets = [p.offset.offset_ms for p in self.table.peers.values()]
        known = [o - bias for o in offsets if o is not None]
        self.clock.correct(int(statistics.median([0, *known])))

    def tick(self, now: float) -> list[str]:
        """Timers: heartbeat, end of the sync window, expiry. Returns expired peers."""
        self._correct_clock()
        self.synced = now >= self._timers.sync_until
        if self.synced and self._pending_poll is not None:
            sessions, fetched_at = self._pending_poll
            self._pending_poll = None
            self.on_poll(sessions, fetched_at=fetched_at)
        if now >= self._timers.next_heartbeat and self.bus_up:
            self._send_heartbeat()
            self._timers.next_heartbeat = now + self.settings.announce_interval
        heard = self.heard_self_at if self.heard_self_at is not None else float("-inf")
        expired = self.table.expire(now, heard_until=heard)
        self._note_hearing(now)
        if expired:
            self.full_resync_wanted = True
        if self.table.overdue and self.bus_up and now - self._last_probe >= PROBE_INTERVAL:
            # A deadline passed but we have not heard ourselves since: ask the broker.
            self._last_probe = now
            self._send_heartbeat()
        return expired

    # --- outputs ----------------------------------------------------------------

    def _header(self) -> Header:
        self._seq += 1
        clock = self.clock.now()
        return Header(self.name, self.epoch, self._seq, clock=clock, sent_ms=self.clock.wall())

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
                count=local.hosts,
                digest=local.digest,
                subnet_count=local.subnets,
                subnet_digest=local.subnet_digest,
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
