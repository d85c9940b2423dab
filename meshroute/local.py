"""This agent's own claims: OpenVPN hook events and status polls merged (pure).

Two sources report the local server's clients. Hooks (learn-address, client-connect,
client-disconnect) are immediate but can be missed (agent down, datagram lost);
the management interface's ``status 3`` is slow but complete. Hooks change the
claims at once; each poll reconciles: a client the hooks missed is added, one that
is gone is removed.

Stamps (see :mod:`meshroute.model`): the stamp orders competing claims for one
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
  ``connected_since`` of a session first seen by ``learn-address``.

Race guards: a poll's answer is as old as the moment it was fetched. It never
removes a claim observed after that moment, and never re-adds a client that a hook
reported gone after that moment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshroute.model import Address, ClaimRecord
from meshroute.state import ClaimTable


@dataclass(frozen=True)
class Session:
    """One client session as the local OpenVPN server reports it."""

    address: Address
    common_name: str
    connected_since: int


@dataclass
class _Entry:
    observed_at: float  # monotonic time this session was first reported
    since_estimated: bool  # connected_since guessed (learn-address has none)


Change = tuple[Address, ClaimRecord | None]

CLIENT_CONNECT = "client-connect"
LEARN_ADDRESS = "learn-address"

# A learn-address this soon after the same client's client-connect is that session.
SAME_SESSION_WINDOW = 2.0


class LocalClaims:
    """Keeps the table's local claims in line with hooks and polls.

    Every method returns the changes it made (address, new record or None), which
    the agent publishes as deltas.
    """

    def __init__(self, table: ClaimTable, started_ms: int = 0) -> None:
        self.table = table
        self.started_s = started_ms // 1000
        self._entries: dict[Address, _Entry] = {}
        self._removed_at: dict[Address, float] = {}
        self._polled = False

    def connected(
        self,
        address: Address,
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
        since = connected_since if connected_since is not None else wall_ms // 1000
        stamp = max(wall_ms, since * 1000, self.table.max_stamp(address) + 1)
        record = ClaimRecord(address, common_name, since, stamp)
        self._entries[address] = _Entry(observed_at=now, since_estimated=connected_since is None)
        self._removed_at.pop(address, None)
        return self._set(record)

    def disconnected(
        self,
        address: Address,
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
        self._entries.pop(address, None)
        self._removed_at[address] = now
        self.table.remove_local(address)
        return [(address, None)]

    def poll(self, sessions: Iterable[Session], *, fetched_at: float) -> list[Change]:
        """Reconcile with a full status list fetched at monotonic time ``fetched_at``."""
        changes: list[Change] = []
        seen: set[Address] = set()
        for session in sessions:
            seen.add(session.address)
            changes += self._poll_one(session, fetched_at)
        for address in [a for a in self.table.local.records if a not in seen]:
            entry = self._entries.get(address)
            if entry is None or entry.observed_at < fetched_at:
                self._entries.pop(address, None)
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
                return []
            if entry is not None and entry.since_estimated:
                # learn-address guessed the time; keep the session's stamp.
                entry.since_estimated = False
                since = session.connected_since
                return self._set(ClaimRecord(address, session.common_name, since, current.stamp))
            if session.connected_since < current.connected_since:
                return []  # an older view of a session we already know is newer
        stamp = session.connected_since * 1000
        echo = self.table.echoed.get(address) if not self._polled else None
        if echo is not None and (echo.common_name, echo.connected_since) == (
            session.common_name,
            session.connected_since,
        ):
            stamp = echo.stamp  # our own session from before a restart
        elif self._polled or session.connected_since >= self.started_s:
            stamp = max(stamp, self._older_than(address, session.connected_since) + 1)
        record = ClaimRecord(address, session.common_name, session.connected_since, stamp)
        self._entries[address] = _Entry(observed_at=fetched_at, since_estimated=False)
        return self._set(record)

    def _older_than(self, address: Address, since: int) -> int:
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
