"""A stateful in-memory dataplane for tests, with failure injection.

It models the kernel table the way :class:`~meshroute.dataplane.netlink.NetlinkDataplane`
sees it, so the agent's tests exercise the same outcomes:

- ``owned`` holds meshroute's routes (prefix -> next hop); ``foreign`` holds routes of
  other protocols or tables, which ``apply`` never changes (tests assert that).
- A prefix not yet owned is added "exclusively": a foreign route in the same table with
  the same metric blocks it with an EEXIST error for that prefix, as in the kernel.
- Deletes run before replaces; deleting a missing route is success; one failing prefix
  never stops the rest.
- ``applied_replaces`` / ``applied_deletes`` record only real changes (an identical
  replace changes nothing, like the kernel); ``replace_requests`` / ``delete_requests``
  record every request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshroute.core.model import Address, Network, Route, RouteKey, route_key, route_prefix
from meshroute.dataplane.base import ApplyResult


@dataclass(frozen=True)
class ForeignRoute:
    """A route meshroute does not own. ``metric=None`` means the kernel default, which
    is also meshroute's, so such a route in our table blocks our route to its prefix."""

    prefix: Network
    next_hop: Address
    protocol: int
    table: int
    metric: int | None = None


class FakeDataplane:
    """Implements the Dataplane protocol in memory; see the module docstring."""

    def __init__(
        self,
        owned: Mapping[Network, Address] | None = None,
        foreign: Iterable[ForeignRoute] = (),
        *,
        table: int = 254,
        protocol: int = 201,
    ) -> None:
        self.table, self.protocol = table, protocol
        self.owned: dict[Network, Address] = dict(owned or {})
        self.foreign: list[ForeignRoute] = list(foreign)
        self.closed = False
        self._next_dump_error: Exception | None = None
        self._next_apply_error: Exception | None = None
        self._failing_prefixes: dict[Network, str] = {}
        self._failing_next_hops: dict[Address, str] = {}
        self.reset_counters()

    # --- the Dataplane protocol ---------------------------------------------------

    def dump(self) -> Mapping[RouteKey, Address]:
        """Keyed as the real dump is: a host route by its address (``owned`` itself,
        the fake kernel, stays keyed by prefix for tests to read)."""
        self.dump_calls += 1
        if self._next_dump_error is not None:
            error, self._next_dump_error = self._next_dump_error, None
            raise error
        return {route_key(prefix): hop for prefix, hop in self.owned.items()}

    def apply(self, replace: Iterable[Route], delete: Iterable[RouteKey]) -> ApplyResult:
        self.apply_calls += 1
        if self._next_apply_error is not None:
            error, self._next_apply_error = self._next_apply_error, None
            raise error
        result = ApplyResult()
        for key in delete:
            self._delete(route_prefix(key), result)
        for route in replace:  # ``owned`` stays keyed by prefix for tests to read
            self._replace(route_prefix(route.prefix), route.next_hop, result)
        return result

    def close(self) -> None:
        self.closed = True

    # --- failure injection and drift ----------------------------------------------

    def fail_next_dump(self, error: Exception) -> None:
        """The next ``dump`` raises ``error`` (once)."""
        self._next_dump_error = error

    def fail_next_apply(self, error: Exception) -> None:
        """The next ``apply`` raises ``error`` before changing anything (a socket error)."""
        self._next_apply_error = error

    def fail_prefix(self, prefix: Network, error_text: str) -> None:
        """Replacing or deleting ``prefix`` fails with ``error_text`` until cleared."""
        self._failing_prefixes[prefix] = error_text

    def fail_next_hop(self, next_hop: Address, error_text: str = "ENETUNREACH") -> None:
        """Every route via ``next_hop`` fails (an unreachable backbone) until cleared."""
        self._failing_next_hops[next_hop] = error_text

    def clear_failures(self) -> None:
        self._failing_prefixes.clear()
        self._failing_next_hops.clear()

    def delete_by_hand(self, prefix: Network) -> None:
        """Drift: an operator deletes an owned route behind meshroute's back."""
        del self.owned[prefix]

    def reset_counters(self) -> None:
        self.dump_calls = 0
        self.apply_calls = 0
        self.applied_replaces: list[Route] = []
        self.applied_deletes: list[Network] = []
        self.replace_requests: list[Route] = []
        self.delete_requests: list[Network] = []

    @property
    def changes(self) -> int:
        """How many owned routes ``apply`` really added, changed or removed."""
        return len(self.applied_replaces) + len(self.applied_deletes)

    # --- internals ----------------------------------------------------------------

    def _delete(self, prefix: Network, result: ApplyResult) -> None:
        self.delete_requests.append(prefix)
        if prefix in self._failing_prefixes:
            result.failed[prefix] = f"delete {prefix}: {self._failing_prefixes[prefix]}"
            return
        if self.owned.pop(prefix, None) is not None:
            self.applied_deletes.append(prefix)
        result.deleted += 1

    def _replace(self, prefix: Network, next_hop: Address, result: ApplyResult) -> None:
        route = Route(prefix, next_hop)
        self.replace_requests.append(route)
        error = self._replace_error(prefix, next_hop)
        if error is not None:
            result.failed[prefix] = f"{prefix} via {next_hop}: {error}"
            return
        if self.owned.get(prefix) != next_hop:
            self.owned[prefix] = next_hop
            self.applied_replaces.append(route)
        result.replaced += 1

    def _replace_error(self, prefix: Network, next_hop: Address) -> str | None:
        if prefix.prefixlen == 0:
            return "refusing a default route"
        if prefix in self._failing_prefixes:
            return self._failing_prefixes[prefix]
        if next_hop in self._failing_next_hops:
            return self._failing_next_hops[next_hop]
        if prefix not in self.owned and self._blocked(prefix):
            return f"EEXIST; a foreign route holds this prefix in table {self.table}"
        return None

    def _blocked(self, prefix: Network) -> bool:
        return any(
            f.prefix == prefix and f.table == self.table and f.metric is None for f in self.foreign
        )
