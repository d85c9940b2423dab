"""Desired routes against the kernel's owned routes: the plan of changes (pure).

Level-triggered, after Calico felix's route table: events only change the claim
table and mark addresses dirty; one apply step turns the dirty set (or, on a full
resync, everything) into a :class:`Plan` of replaces and deletes that the dataplane
carries out.

:class:`RouteSync` keeps a mirror of what the kernel holds so that a small change
costs a small plan. The mirror is only trusted between full resyncs: a failed
route (after a short delay) or the resync timer makes the next plan a full one
from a fresh kernel dump.

``allow_delete=False`` (a starting agent that has not heard its peers yet) plans
adds and changes only: an adopted route that is not yet explained stays in place
until the agent knows enough to decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshroute.model import Address, Network, Route


@dataclass(frozen=True)
class Plan:
    replace: tuple[Route, ...] = ()
    delete: tuple[Network, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.replace or self.delete)

    def summary(self) -> str:
        return f"{len(self.replace)} to add or change, {len(self.delete)} to delete"


def diff(
    desired: Mapping[Network, Address],
    actual: Mapping[Network, Address],
    *,
    allow_delete: bool = True,
) -> Plan:
    """The changes that turn ``actual`` into ``desired``."""
    replace = tuple(
        Route(prefix, hop) for prefix, hop in desired.items() if actual.get(prefix) != hop
    )
    delete = tuple(p for p in actual if p not in desired) if allow_delete else ()
    return Plan(replace, delete)


def diff_some(
    prefixes: Iterable[Network],
    desired: Mapping[Network, Address],
    actual: Mapping[Network, Address],
    *,
    allow_delete: bool = True,
) -> Plan:
    """Like :func:`diff`, restricted to ``prefixes`` (``desired`` may hold only those)."""
    replace: list[Route] = []
    delete: list[Network] = []
    for prefix in prefixes:
        want, have = desired.get(prefix), actual.get(prefix)
        if want is not None and want != have:
            replace.append(Route(prefix, want))
        elif want is None and have is not None and allow_delete:
            delete.append(prefix)
    return Plan(tuple(replace), tuple(delete))


class RouteSync:
    """A mirror of the owned routes in the kernel, and whether it can be trusted."""

    def __init__(self) -> None:
        self.installed: dict[Network, Address] = {}
        self.full_resync_needed = True

    def plan_full(
        self,
        kernel: Mapping[Network, Address],
        desired: Mapping[Network, Address],
        *,
        allow_delete: bool = True,
    ) -> Plan:
        """Plan from a fresh dump of the kernel; the mirror becomes that dump."""
        self.installed = dict(kernel)
        self.full_resync_needed = False
        return diff(desired, self.installed, allow_delete=allow_delete)

    def plan_some(
        self,
        prefixes: Iterable[Network],
        desired: Mapping[Network, Address],
        *,
        allow_delete: bool = True,
    ) -> Plan:
        return diff_some(prefixes, desired, self.installed, allow_delete=allow_delete)

    def record(self, plan: Plan, failed: Mapping[Network, str]) -> None:
        """Update the mirror with what succeeded (a failed prefix counts as absent).

        The caller schedules a full resync after failures (with a delay, so that a
        next hop that stays unreachable does not cost a kernel dump every tick).
        """
        for route in plan.replace:
            if route.prefix in failed:
                self.installed.pop(route.prefix, None)
            else:
                self.installed[route.prefix] = route.next_hop
        for prefix in plan.delete:
            if prefix not in failed:
                self.installed.pop(prefix, None)
