"""This agent's own claims: OpenVPN hook events and status polls merged (pure).

Two sources report the local server's clients. Hooks (learn-address, client-connect,
client-disconnect) are immediate but can be missed (agent down, datagram lost);
the management interface's ``status 3`` is slow but complete. Hooks change the
claims at once; each poll reconciles: a client the hooks missed is added, one that
is gone is removed.

Stamps (see :mod:`meshroute.core.model`): the stamp orders competing claims for one
address on every agent.

- A session reported by a **hook** is happening now, so it must beat every claim
  this agent has seen for the address (a stale session on the old server):
  ``max(now_ms, connected_since_ms, highest known stamp + 1)`` (a hybrid logical
  clock: wall time when clocks agree, causal order when they do not).
- A session found by the agent's **first poll** after it started, and older than
  the start, is one it may have published before a restart: it takes the stamp
  its peers echoed back for that very session (same address, client and
  ``connected_since``), so the restart changes nothing anywhere; with no echo,
  ``connected_since * 1000``.
- Any other session found by a poll (the hooks missed it) started since the
  previous poll or the start. It beats the sessions that started before it, but
  not newer ones (the client may already have moved on):
  ``max(connected_since_ms, highest stamp among older sessions + 1)``.
- A session keeps its stamp for its whole life; a later poll only fills in the real
  ``connected_since`` of a session first seen by ``learn-address``. One exception:
- A session **re-asserts** itself (takes a stamp above every claim known for its
  address) when a peer's claim beats it and OpenVPN's ``Last Ref`` then shows the
  client sending here *after* this agent learned of that claim. Both times are on
  this server's own clock, so the evidence is skew-free: the competing session had
  started before we heard of it, a client talks to one server at a time, and a
  session here that still hears from its client afterwards is the live one. A stale
  session (the client moved away) hears nothing after the contest and never
  re-asserts, so the two cannot ping-pong. This is what makes the live session win
  when the wall clocks are skewed further than the time between two sessions.

Every stamp comes from the agent's hybrid logical clock (:mod:`meshroute.core.hlc`): a
hook's session is stamped above everything the agent has heard, and no stamp is
ever further ahead than the wall clock plus ``max_clock_skew``.

Subnets behind a client (``iroute``) are sessions of their own, keyed by the subnet,
with the client's name and times: the same stamps and rules. When a hook says a
client's session ended (client-disconnect names the client), the subnets of that
session go with it at once, as its address does; ``learn-address delete`` (late)
and the next poll would remove them too.

Race guards: a poll's answer is as old as the moment it was fetched. It never
removes a claim observed after that moment, and never re-adds a client that a hook
reported gone after that moment.

Size (above 300 lines): the stamp rules above are the whole file: hooks, polls, the
first poll after a start and re-assertion all decide the same stamps and must be read
together.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace

from meshroute.core.model import ClaimRecord, RouteKey, is_subnet
from meshroute.core.table import ClaimTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """One client session as the local OpenVPN server reports it, or a subnet behind
    it (``iroute``: ``address`` is then the subnet, with the client's name and times).

    ``last_ref`` is OpenVPN's ``Last Ref (time_t)`` for the address: when the server
    last received a packet from the client, on the server's own clock (None when
    the status does not give it).
    """

    address: RouteKey
    common_name: str
    connected_since: int
    last_ref: int | None = None


@dataclass
class _Entry:
    observed_at: float  # monotonic time this session was first reported
    since_estimated: bool  # connected_since guessed (learn-address has none)


Change = tuple[RouteKey, ClaimRecord | None]

CLIENT_CONNECT = "client-connect"
LEARN_ADDRESS = "learn-address"

# A learn-address this soon after the same client's client-connect is that session.
SAME_SESSION_WINDOW = 2.0

# Two re-assertions of one address closer than this: two live sessions (log it).
REASSERT_WARN_WINDOW = 60.0


class LocalClaims:
    """Keeps the table's local claims in line with hooks and polls.

    Every method returns the changes it made (address, new record or None), which
    the agent publishes as deltas.
    """

    def __init__(self, table: ClaimTable, started_ms: int = 0) -> None:
        self.table = table
        self.started_s = started_ms // 1000
        self._entries: dict[RouteKey, _Entry] = {}
        self._removed_at: dict[RouteKey, float] = {}
        self._polled = False
        # address -> our wall clock (ms) when a peer's claim first beat our session
        self._contested_at: dict[RouteKey, int] = {}
        # Sessions known to have started since this agent started (a hook said so, or
        # a poll found one newer than the start): live local facts, which may delete
        # a route toward a peer at once. Sessions found again after a restart, or
        # held provisionally from echoes, may be stale: they wait like anything else.
        self.fresh: set[RouteKey] = set()
        self._reasserted_at: dict[RouteKey, float] = {}

    def provisional(self, echo: Iterable[ClaimRecord]) -> None:
        """Before our first poll: hold the claims our peers echo back as ours.

        A restarted agent learns its own clients only from its first status poll,
        which waits for the sync window; meanwhile a peer's stale claim for one of
        our clients would win here and route our own client away. The first poll
        confirms these (same session: same stamp) or drops them; nothing is
        published before it (the first snapshot is authoritative).
        """
        if self._polled:
            return
        for record in echo:
            current = self.table.local.records.get(record.address)
            if self.table.admits(record.address) and (
                current is None or current.stamp < record.stamp
            ):
                self.table.set_local(record)

    def contest(self, address: RouteKey, wall_ms: int) -> bool:
        """A peer's claim for ``address`` changed while we hold a session for it.

        Records when our session first lost (True if it just did: a status poll
        soon can show whether the client still talks to us); forgets it once our
        session wins again or is gone.
        """
        winner = self.table.winner(address)
        if address not in self.table.local.records or (
            winner is not None and winner.owner == self.table.self_name
        ):
            self._contested_at.pop(address, None)
            return False
        if address in self._contested_at:
            return False
        self._contested_at[address] = wall_ms
        return True

    def connected(
        self,
        address: RouteKey,
        common_name: str,
        connected_since: int | None,
        *,
        now: float,
        wall_ms: int,
        source: str = CLIENT_CONNECT,
    ) -> list[Change]:
        """A hook says a client session started here now.

        OpenVPN runs ``client-connect`` once per session, then ``learn-address add``
        for the same session. So a client-connect always starts a new session; a
        learn-address for the client whose client-connect came within
        :data:`SAME_SESSION_WINDOW` is that same session, otherwise a new one (the
        client-connect hook is not configured, or was lost).
        """
        current = self.table.local.records.get(address)
        entry = self._entries.get(address)
        same_session = (
            source == LEARN_ADDRESS
            and current is not None
            and current.common_name == common_name
            and entry is not None
            and now - entry.observed_at < SAME_SESSION_WINDOW
        )
        if same_session:
            return []
        clock = self.table.clock
        if connected_since is not None and clock.cap(
            clock.mesh_time(connected_since * 1000)
        ) < clock.mesh_time(connected_since * 1000):
            connected_since = None  # a time further ahead than our clock may go: not believed
        since = connected_since if connected_since is not None else wall_ms // 1000
        # This server's times, in mesh time (the stamp's scale: meshroute.core.hlc).
        now_mesh, since_mesh = clock.mesh_time(wall_ms), clock.mesh_time(since * 1000)
        floor = max(self.table.max_stamp(address), now_mesh - 1, since_mesh - 1)
        record = ClaimRecord(address, common_name, since, clock.stamp_above(floor))
        self._entries[address] = _Entry(observed_at=now, since_estimated=connected_since is None)
        self._removed_at.pop(address, None)
        self._contested_at.pop(address, None)  # a contest of an earlier session is not ours
        self.fresh.add(address)
        return self._set(record)

    def disconnected(
        self,
        address: RouteKey,
        common_name: str | None,
        *,
        now: float,
        connected_since: int | None = None,
    ) -> list[Change]:
        """A hook says a session ended (client-disconnect, learn-address delete).

        ``common_name`` None (learn-address delete has none) removes whatever is
        there; otherwise only a claim of that client is removed, and only if it is
        that session: a client that reconnected here has a newer session, which a
        late disconnect of the old one must not remove.
        """
        current = self.table.local.records.get(address)
        if current is None or (common_name is not None and current.common_name != common_name):
            return []
        entry = self._entries.get(address)
        known_since = entry is not None and not entry.since_estimated
        if (
            connected_since is not None
            and known_since
            and connected_since != current.connected_since
        ):
            return []  # the end of an older session of this client
        log.debug("client %s at %s: session ended (hook): withdrawn", current.common_name, address)
        changes = self._remove(address, now)
        if common_name is not None and not is_subnet(address):
            for key, record in list(self.table.local.records.items()):
                if (
                    is_subnet(key)
                    and record.common_name == common_name
                    and record.connected_since <= current.connected_since
                ):
                    changes += self._remove(key, now)
        return changes

    def _remove(self, address: RouteKey, now: float) -> list[Change]:
        self._forget(address)
        self._removed_at[address] = now
        self.table.remove_local(address)
        return [(address, None)]

    def _forget(self, address: RouteKey) -> None:
        self._entries.pop(address, None)
        self._contested_at.pop(address, None)
        self.fresh.discard(address)

    def poll(self, sessions: Iterable[Session], *, fetched_at: float) -> list[Change]:
        """Reconcile with a full status list fetched at monotonic time ``fetched_at``."""
        changes: list[Change] = []
        seen: set[RouteKey] = set()
        for session in sessions:
            seen.add(session.address)
            changes += self._poll_one(session, fetched_at)
        for address in [a for a in self.table.local.records if a not in seen]:
            entry = self._entries.get(address)
            if entry is None or entry.observed_at < fetched_at:
                log.info(
                    "client %s at %s: not in OpenVPN's status any more (no hook said so): "
                    "withdrawn", self.table.local.records[address].common_name, address,
                )  # fmt: skip
                self._forget(address)
                self.table.remove_local(address)
                changes.append((address, None))
        self._removed_at = {a: t for a, t in self._removed_at.items() if t >= fetched_at}
        self._polled = True
        return changes

    def _poll_one(self, session: Session, fetched_at: float) -> list[Change]:
        address = session.address
        if self._removed_at.get(address, float("-inf")) >= fetched_at:
            return []  # a hook said it is gone after this status was taken
        current = self.table.local.records.get(address)
        entry = self._entries.get(address)
        if current is not None and current.common_name == session.common_name:
            if current.connected_since == session.connected_since:
                return self._reassert_if_live(current, session, fetched_at)
            if (
                entry is not None
                and entry.since_estimated
                and session.connected_since <= current.connected_since
            ):
                # learn-address guessed the time (when the hook came, on this server's
                # clock: the session started no later); keep the session's stamp. A
                # session that started after the guess is a later one of the client.
                entry.since_estimated = False
                since = session.connected_since
                return self._set(ClaimRecord(address, session.common_name, since, current.stamp))
            if session.connected_since < current.connected_since:
                return []  # an older view of a session we already know is newer
        stamp = self.table.clock.mesh_time(session.connected_since * 1000)
        echo = self.table.echoed.get(address) if not self._polled else None
        if echo is not None and (echo.common_name, echo.connected_since) == (
            session.common_name,
            session.connected_since,
        ):
            stamp = echo.stamp  # our own session from before a restart
        elif self._polled or session.connected_since >= self.started_s:
            stamp = max(stamp, self._older_than(address, session.connected_since) + 1)
            self.fresh.add(address)
        stamp = self.table.clock.cap(stamp)
        record = ClaimRecord(address, session.common_name, session.connected_since, stamp)
        self._entries[address] = _Entry(observed_at=fetched_at, since_estimated=False)
        self._contested_at.pop(address, None)  # a new session: earlier contests were not its
        return self._set(record)

    def _reassert_if_live(
        self, current: ClaimRecord, session: Session, fetched_at: float
    ) -> list[Change]:
        """Re-stamp our session above its rivals if the client talked to us after it lost."""
        address = current.address
        contested_at = self._contested_at.get(address)
        if contested_at is None or session.last_ref is None:
            return []
        if session.last_ref * 1000 <= contested_at:
            return []  # no packet from the client since we heard of the rival session
        del self._contested_at[address]
        winner = self.table.winner(address)
        if winner is None or winner.owner == self.table.self_name:
            return []
        stamp = self.table.clock.stamp_above(self.table.max_stamp(address))
        last = self._reasserted_at.get(address)
        self._reasserted_at[address] = fetched_at
        if last is not None and fetched_at - last < REASSERT_WARN_WINDOW:
            log.warning(
                "client %s at %s is live here and on %s: two clients with one address? "
                "(re-asserted twice within %.0fs)", session.common_name, address,
                winner.owner, REASSERT_WARN_WINDOW,
            )  # fmt: skip
        else:
            log.info(
                "client %s at %s: lost to %s's claim, but still sends here (last packet "
                "at %d): re-asserting", session.common_name, address, winner.owner,
                session.last_ref,
            )  # fmt: skip
        return self._set(replace(current, stamp=stamp))

    def _older_than(self, address: RouteKey, since: int) -> int:
        """The highest stamp of claims for ``address`` from sessions older than ``since``.

        A session found by a poll beats only sessions that started in an earlier
        second: the client may have moved on since (its newer session elsewhere must
        keep winning), and within one second the hook's millisecond stamp is the
        better witness.
        """
        holders = self.table.claims_for(address).values()
        return max((r.stamp for r in holders if r.connected_since < since), default=-1)

    def _set(self, record: ClaimRecord) -> list[Change]:
        return [(record.address, record)] if self.table.set_local(record) else []
