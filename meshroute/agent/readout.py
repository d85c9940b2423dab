"""A read-only window on a running agent, for the control socket's views and the metrics.

Invariants:

- This is the one place that knows the agent's insides (its core, claim table,
  route mirror, stats and bus). :mod:`meshroute.agent.views` and
  :mod:`meshroute.agent.metrics` read the agent through a :class:`Readout` and
  nothing else, so a change in how the loop holds its state changes this file,
  not the views or the metrics.
- Read only: mappings come as :class:`types.MappingProxyType`; no method changes
  the agent. The objects inside (a peer's :class:`~meshroute.core.claimset.PeerView`)
  are the live ones: read them, never write them.
- Built and read on the agent's own thread (queries run in ``Agent.query``, the
  metrics snapshot through ``Agent.call_soon``): each answer is one consistent
  moment. A :class:`Readout` is not kept across iterations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshroute.agent.loop import Agent, AgentStats
    from meshroute.core.claimset import PeerView
    from meshroute.core.model import Address, Claim, ClaimRecord, Network, RouteKey
    from meshroute.core.table import Counters


class Readout:
    """What views and metrics may see of one agent, at the moment they ask."""

    __slots__ = ("_agent",)

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    # -- who and when
    @property
    def name(self) -> str:
        return self._agent.core.name

    @property
    def epoch(self) -> int:
        return self._agent.core.epoch

    def monotonic(self) -> float:
        return self._agent.clock.monotonic()

    def wall_now(self) -> float:
        """Seconds since the epoch (the agent's clock)."""
        return self._agent.clock.wall_ms() / 1000

    # -- the protocol's state
    @property
    def synced(self) -> bool:
        """The start-up sync with the peers is over (deletes are allowed)."""
        return self._agent.core.synced

    @property
    def local_known(self) -> bool:
        return self._agent.core.local_known

    def isolated(self, now: float) -> str | None:
        return self._agent.core.isolated(now)

    @property
    def clock_offset_warning(self) -> float:
        return self._agent.core.settings.clock_offset_warning

    # -- the claim table
    def addresses(self) -> Iterable[RouteKey]:
        return self._agent.core.table.addresses()

    def winner(self, address: RouteKey) -> Claim | None:
        return self._agent.core.table.winner(address)

    def claims_for(self, address: RouteKey) -> Mapping[str, ClaimRecord]:
        return self._agent.core.table.claims_for(address)

    def allowed(self, address: Address) -> bool:
        return self._agent.core.table.allowed(address)

    def subnet_problem(self, subnet: Network) -> str | None:
        return self._agent.core.table.subnet_problem(subnet)

    @property
    def peers(self) -> Mapping[str, PeerView]:
        return MappingProxyType(self._agent.core.table.peers)

    @property
    def departed(self) -> Mapping[str, tuple[int, float]]:
        return MappingProxyType(self._agent.core.table.departed)

    @property
    def local_claims(self) -> int:
        return len(self._agent.core.table.local)

    @property
    def frozen(self) -> bool:
        return self._agent.core.table.frozen

    @property
    def hold_time(self) -> float:
        return self._agent.core.table.hold_time

    @property
    def counters(self) -> Counters:
        return self._agent.core.table.counters

    # -- the kernel (the mirror of our owned routes) and the broker
    @property
    def installed(self) -> Mapping[RouteKey, Address]:
        """Owned routes in the kernel: address or subnet -> next hop."""
        return MappingProxyType(self._agent.mirror.installed)

    @property
    def broker_connected(self) -> bool:
        return bool(self._agent.bus.connected)

    # -- what the loop counts
    @property
    def stats(self) -> AgentStats:
        return self._agent.stats

    def event_counters(self) -> dict[str, int]:
        """The counters both the health view and the metrics show, by one name each."""
        stats, table = self._agent.stats, self._agent.core.table.counters
        return {
            "hook_events": stats.hook_events,
            "polls_ok": stats.polls_ok,
            "polls_failed": stats.polls_failed,
            "bus_decode_errors": stats.decode_errors,
            "internal_errors": stats.internal_errors,
            "stale_messages": table.stale,
            "refused_claims": table.refused_claims,
            "expired_peers": table.expired_peers,
        }
