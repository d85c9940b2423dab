"""Desired routes against the kernel's owned routes: the plan of changes (pure).

Level-triggered, after Calico felix's route table: events only change the claim
table and mark addresses dirty; one apply step turns the dirty set (or, on a full
resync, everything) into a :class:`Plan` of replaces and deletes that the dataplane
carries out.

:class:`KernelMirror` keeps a mirror of what the kernel holds so that a small change
costs a small plan. The mirror is only trusted between full resyncs: a failed
route (after a short delay) or the resync timer makes the next plan a full one
from a fresh kernel dump.

Routes are named by their :data:`~meshroute.core.model.RouteKey` here (``key -> next
hop``, the claims' own objects, as :meth:`~meshroute.core.table.ClaimTable.desired_hops`
gives them): a host route by its client address, a subnet route by its network.
Hashing an address is cheaper than hashing a prefix, and an ``IPv4Network`` costs
~500 bytes where the mirror of 100,000 host routes must stay small. No host prefix
object is made at all: the dump is keyed the same way, :meth:`Plan.routes` /
:meth:`Plan.deletes` hand the keys to the dataplane, which encodes a key's address
and prefix length (:func:`~meshroute.core.model.key_parts`).
An owned route nobody wants (a subnet whose claim is gone, or one added by hand
with our protocol) is deleted like any other, under the same ``allow_delete`` and
``keep`` rules.

``allow_delete=False`` (a starting agent that has not heard its peers yet) plans
adds and changes only: an adopted route that is not yet explained stays in place
until the agent knows enough to decide. ``keep`` narrows deletes further, by next
hop: a route toward a peer whose current state has not arrived yet (it restarted
at the same time as us) is kept, neither deleted nor moved to another next hop,
unless its address is now one of our own clients
(:meth:`meshroute.core.engine.AgentCore.keeps_route`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING

from meshroute.core.model import Address, Network, Route, RouteKey, route_key

if TYPE_CHECKING:
    from meshroute.core.engine import AgentCore


@dataclass(frozen=True, slots=True)
class Plan:
    """Routes to replace (key -> next hop) and to delete, named by their keys.

    ``replace`` is a dict (never changed once planned) rather than a tuple of pairs:
    a first plan holds every route, and 100,000 pairs would cost 5 MiB more.
    """

    replace: Mapping[RouteKey, Address] = field(default_factory=dict)
    delete: tuple[RouteKey, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.replace or self.delete)

    def summary(self) -> str:
        return f"{len(self.replace)} to add or change, {len(self.delete)} to delete"

    def routes(self) -> list[Route]:
        """The replaces as the dataplane takes them, named by their keys (no prefix
        objects: building an ``IPv4Network`` per route was 16 % of a join's CPU)."""
        return [Route(key, hop) for key, hop in self.replace.items()]

    def deletes(self) -> list[RouteKey]:
        """The deletes as the dataplane takes them (their keys)."""
        return list(self.delete)


Keep = Callable[[RouteKey, Address], bool]  # (key, next hop) -> must not be deleted now


def _keep_nothing(address: RouteKey, hop: Address) -> bool:
    return False


def diff(
    desired: Mapping[RouteKey, Address],
    actual: Mapping[RouteKey, Address],
    *,
    allow_delete: bool = True,
    keep: Keep = _keep_nothing,
) -> Plan:
    """The changes that turn ``actual`` into ``desired`` (both address -> next hop)."""
    replace = {
        a: hop
        for a, hop in desired.items()
        if (have := actual.get(a)) != hop and (have is None or not keep(a, have))
    }
    if not allow_delete:
        return Plan(replace, ())
    delete = tuple(a for a, hop in actual.items() if a not in desired and not keep(a, hop))
    return Plan(replace, delete)


def diff_some(
    addresses: Iterable[RouteKey],
    desired: Mapping[RouteKey, Address],
    actual: Mapping[RouteKey, Address],
    *,
    allow_delete: bool = True,
    keep: Keep = _keep_nothing,
) -> Plan:
    """Like :func:`diff`, restricted to ``addresses`` (``desired`` may hold only those)."""
    replace: dict[RouteKey, Address] = {}
    delete: list[RouteKey] = []
    for address in addresses:
        want, have = desired.get(address), actual.get(address)
        if want is not None and want != have:
            if have is None or not keep(address, have):
                replace[address] = want
        elif want is None and have is not None and allow_delete and not keep(address, have):
            delete.append(address)
    return Plan(replace, tuple(delete))


class KernelMirror:
    """A mirror of the owned routes in the kernel, and whether it can be trusted.

    ``installed`` holds the owned routes (key -> next hop): host and subnet routes.
    """

    def __init__(self) -> None:
        self.installed: dict[RouteKey, Address] = {}
        self.full_resync_needed = True

    def plan_full(
        self,
        kernel: Mapping[RouteKey, Address],
        desired: Mapping[RouteKey, Address],
        *,
        allow_delete: bool = True,
        keep: Keep = _keep_nothing,
    ) -> Plan:
        """Plan from a fresh dump of the kernel; the mirror becomes that dump.

        ``kernel`` is keyed as :meth:`meshroute.dataplane.base.Dataplane.dump` keys it:
        a host route by its address, anything else by its prefix (the same keys as
        the claims').

        Speed and memory (a no-change resync of 20,000 routes within 1.5x ``ip route
        show``; 100,000 routes in a small agent): one look-up per desired route, no
        pass over the dump for deletes when every dumped key was found desired, and
        when the kernel holds exactly what is desired the mirror is a copy of
        ``desired`` (the claims' own key objects, hashes reused), so the dump's
        100,000 fresh address objects (~9 MiB) are not kept.
        """
        kernel = _host_keys(kernel)
        replace: dict[RouteKey, Address] = {}
        found = differs = 0
        for key, want in desired.items():
            have = kernel.get(key)
            if have is None:
                replace[key] = want
                continue
            found += 1
            if have is not want and have != want:
                differs += 1
                if not keep(key, have):
                    replace[key] = want
        if found == len(kernel) == len(desired) and not differs:
            self.installed = dict(desired)  # the kernel holds just that
        else:
            self.installed = dict(kernel)
        self.full_resync_needed = False
        if not allow_delete or found == len(kernel):  # every dumped route is desired
            return Plan(replace, ())
        delete = tuple(a for a, hop in kernel.items() if a not in desired and not keep(a, hop))
        return Plan(replace, delete)

    def plan_some(
        self,
        addresses: Iterable[RouteKey],
        desired: Mapping[RouteKey, Address],
        *,
        allow_delete: bool = True,
        keep: Keep = _keep_nothing,
    ) -> Plan:
        return diff_some(addresses, desired, self.installed, allow_delete=allow_delete, keep=keep)

    def record(self, plan: Plan, failed: Mapping[Network, str]) -> None:
        """Update the mirror with what succeeded (a failed prefix counts as absent).

        ``failed`` is the dataplane's answer, keyed by prefix. The caller schedules a
        full resync after failures (with a delay, so that a next hop that stays
        unreachable does not cost a kernel dump every tick).
        """
        failed_keys = {route_key(prefix) for prefix in failed}
        for key, hop in plan.replace.items():
            if key in failed_keys:
                self.installed.pop(key, None)
            else:
                self.installed[key] = hop
        for key in plan.delete:
            if key not in failed_keys:
                self.installed.pop(key, None)


def _host_keys(kernel: Mapping[RouteKey, Address]) -> Mapping[RouteKey, Address]:
    """``kernel`` with a /32 or /128 prefix key named by its address (a dataplane's
    dump does that already: then ``kernel`` itself, nothing copied)."""
    if not any(isinstance(key, (IPv4Network, IPv6Network)) for key in kernel):
        return kernel
    return {
        route_key(key) if isinstance(key, (IPv4Network, IPv6Network)) else key: hop
        for key, hop in kernel.items()
    }


class Reconciler:
    """The one owner of reconcile state, after felix's route table: the mirror of the
    kernel (:class:`KernelMirror`), when the next full resync is due, and the plan to
    make now. The agent's loop and the simulator both drive one per agent:
    :meth:`plan` (the core and a kernel dump are passed in), apply the plan,
    :meth:`record` what the kernel said, :meth:`retry_soon` after a failure.

    A full plan from a fresh dump at start, when the core's sync window ends, when
    the core asks for one (a peer's state arrived, a peer expired), after a failure
    and every ``resync_interval``; otherwise a plan for the addresses whose claims
    changed. What may be deleted is the core's call (:meth:`AgentCore.keeps_route`).

    Slices: a plan of more than ``slice_size`` routes (a join, a peer's snapshot, a
    resync after drift) is handed out ``slice_size`` routes per call, deletes first;
    the rest waits as keys only (:attr:`busy` meanwhile) and each later slice is
    planned afresh from the current claims and the mirror, together with whatever
    changed since, so a change that arrives meanwhile wins and the mirror is right
    after every slice. Why: a first apply of 100,000 routes held 100,000 routes'
    worth of plan, routes and requests at once (glibc kept the heap) and blocked the
    loop for seconds (DESIGN.md rule 10; docs/performance.md). A full resync starts
    the slices over from its own dump; a periodic one waits until they are done.
    """

    def __init__(self, resync_interval: float, slice_size: int = 10_000) -> None:
        self.mirror = KernelMirror()
        self.resync_interval = resync_interval
        self.slice_size = slice_size
        self.next_resync = 0.0
        self.full_resyncs = 0
        self._was_synced = False
        self._pending: list[RouteKey] = []  # keys of a large plan not handed out yet
        self._pending_at = 0

    @property
    def busy(self) -> bool:
        """True while slices of a large plan are still to come (call :meth:`plan` soon)."""
        return self._pending_at < len(self._pending)

    def queue_resync(self) -> None:
        self.mirror.full_resync_needed = True

    def plan(
        self,
        core: AgentCore,
        now: float,
        dump: Callable[[], Mapping[RouteKey, Address]],
        own_hops: Iterable[Address],
    ) -> Plan:
        """The changes to make now (empty: nothing to do). ``dump`` may raise OSError."""
        if core.synced and not self._was_synced:
            self._was_synced = True
            self.queue_resync()  # deletes were held back until now
        if core.full_resync_wanted:
            core.full_resync_wanted = False
            self.queue_resync()
        table, keep = core.table, core.keeps_route(now)
        if self.mirror.full_resync_needed or (now >= self.next_resync and not self.busy):
            table.take_dirty()
            # The full plan covers every waiting key; dropped before the dump, so a
            # failing dump leaves the loop at its normal pace (not busy) while it retries.
            self._pending, self._pending_at = [], 0
            kernel = dump()
            self.next_resync = now + self.resync_interval
            self.full_resyncs += 1
            plan = self.mirror.plan_full(kernel, table.desired_hops(own_hops), keep=keep)
            return self._first_slice(plan)
        dirty = table.take_dirty()
        if self.busy:
            keys = self._next_keys()
            keys.update(dirty)
        elif dirty:
            keys = dirty
        else:
            return Plan()
        plan = self.mirror.plan_some(keys, table.desired_hops_for(keys, own_hops), keep=keep)
        return self._first_slice(plan)

    def _first_slice(self, plan: Plan) -> Plan:
        """``plan`` itself if small; else its first slice (deletes first), the keys of
        the rest queued behind those still waiting."""
        if len(plan.replace) + len(plan.delete) <= self.slice_size:
            return plan
        keys = [*plan.delete, *plan.replace]
        first = set(keys[: self.slice_size])
        self._pending = [*self._pending[self._pending_at :], *keys[self.slice_size :]]
        self._pending_at = 0
        return Plan(
            {key: hop for key, hop in plan.replace.items() if key in first},
            tuple(key for key in plan.delete if key in first),
        )

    def _next_keys(self) -> set[RouteKey]:
        start = self._pending_at
        self._pending_at = min(start + self.slice_size, len(self._pending))
        keys = set(self._pending[start : self._pending_at])
        if not self.busy:
            self._pending, self._pending_at = [], 0  # done: free the keys
        return keys

    def record(self, plan: Plan, failed: Mapping[Network, str]) -> None:
        self.mirror.record(plan, failed)

    def retry_soon(self, now: float, delay: float) -> None:
        """A full resync within ``delay`` (after a failed route or netlink call)."""
        self.next_resync = min(self.next_resync, now + delay)
