"""Desired routes against the kernel's owned routes: the plan of changes (pure).

Level-triggered, after Calico felix's route table: events only change the claim
table and mark addresses dirty; one apply step turns the dirty set (or, on a full
resync, everything) into a :class:`Plan` of replaces and deletes that the dataplane
carries out.

:class:`RouteSync` keeps a mirror of what the kernel holds so that a small change
costs a small plan. The mirror is only trusted between full resyncs: a failed
route (after a short delay) or the resync timer makes the next plan a full one
from a fresh kernel dump.

Host routes are named by their client address here (``address -> next hop``, the
claims' own address objects, as :meth:`~meshroute.state.ClaimTable.desired_hops`
gives them): hashing an address is cheaper than hashing a prefix, and an
``IPv4Network`` costs ~500 bytes where the mirror of 100,000 routes must stay small.
Prefixes exist only at the dataplane's edge: :meth:`RouteSync.plan_full` reads a
dump keyed by prefix, and :meth:`Plan.routes` / :meth:`Plan.deletes` make the
prefixes of the changes only. An owned route that is not a host route (never ours;
added by hand with our protocol) is a *stray*: kept apart and always deleted.

``allow_delete=False`` (a starting agent that has not heard its peers yet) plans
adds and changes only: an adopted route that is not yet explained stays in place
until the agent knows enough to decide. ``keep`` narrows deletes further, by next
hop: a route toward a peer whose current state has not arrived yet (it restarted
at the same time as us) is kept (:meth:`meshroute.core.AgentCore.keeps_route`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from meshroute.model import Address, Network, Route, host_address, host_prefix


@dataclass(frozen=True, slots=True)
class Plan:
    """Host routes to replace (address -> next hop) and to delete; strays to delete.

    ``replace`` is a dict (never changed once planned) rather than a tuple of pairs:
    a first plan holds every route, and 100,000 pairs would cost 5 MiB more.
    """

    replace: Mapping[Address, Address] = field(default_factory=dict)
    delete: tuple[Address, ...] = ()
    strays: tuple[Network, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.replace or self.delete or self.strays)

    def summary(self) -> str:
        deletes = len(self.delete) + len(self.strays)
        return f"{len(self.replace)} to add or change, {deletes} to delete"

    def routes(self) -> list[Route]:
        """The replaces as the dataplane takes them (prefixes made here, for changes only)."""
        return [Route(host_prefix(address), hop) for address, hop in self.replace.items()]

    def deletes(self) -> list[Network]:
        """The deletes as the dataplane takes them."""
        return [host_prefix(address) for address in self.delete] + list(self.strays)


Keep = Callable[[Address], bool]  # next hop -> its routes must not be deleted now


def _keep_nothing(hop: Address) -> bool:
    return False


def diff(
    desired: Mapping[Address, Address],
    actual: Mapping[Address, Address],
    *,
    allow_delete: bool = True,
    keep: Keep = _keep_nothing,
) -> Plan:
    """The changes that turn ``actual`` into ``desired`` (both address -> next hop)."""
    replace = {a: hop for a, hop in desired.items() if actual.get(a) != hop}
    if not allow_delete:
        return Plan(replace, ())
    delete = tuple(a for a, hop in actual.items() if a not in desired and not keep(hop))
    return Plan(replace, delete)


def diff_some(
    addresses: Iterable[Address],
    desired: Mapping[Address, Address],
    actual: Mapping[Address, Address],
    *,
    allow_delete: bool = True,
    keep: Keep = _keep_nothing,
) -> Plan:
    """Like :func:`diff`, restricted to ``addresses`` (``desired`` may hold only those)."""
    replace: dict[Address, Address] = {}
    delete: list[Address] = []
    for address in addresses:
        want, have = desired.get(address), actual.get(address)
        if want is not None and want != have:
            replace[address] = want
        elif want is None and have is not None and allow_delete and not keep(have):
            delete.append(address)
    return Plan(replace, tuple(delete))


class RouteSync:
    """A mirror of the owned routes in the kernel, and whether it can be trusted.

    ``installed`` holds the owned host routes (address -> next hop); ``strays`` the
    owned routes that are not host routes (prefix -> next hop), which no plan keeps.
    """

    def __init__(self) -> None:
        self.installed: dict[Address, Address] = {}
        self.strays: dict[Network, Address] = {}
        self.full_resync_needed = True

    def plan_full(
        self,
        kernel: Mapping[Network, Address],
        desired: Mapping[Address, Address],
        *,
        allow_delete: bool = True,
        keep: Keep = _keep_nothing,
    ) -> Plan:
        """Plan from a fresh dump of the kernel; the mirror becomes that dump."""
        self.installed, self.strays = {}, {}
        for prefix, hop in kernel.items():
            address = host_address(prefix)
            if address is None:
                self.strays[prefix] = hop
            else:
                self.installed[address] = hop
        self.full_resync_needed = False
        plan = diff(desired, self.installed, allow_delete=allow_delete, keep=keep)
        if not allow_delete or not self.strays:
            return plan
        return Plan(plan.replace, plan.delete, tuple(self.strays))

    def plan_some(
        self,
        addresses: Iterable[Address],
        desired: Mapping[Address, Address],
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
        failed_hosts = {host_address(prefix) for prefix in failed}
        for address, hop in plan.replace.items():
            if address in failed_hosts:
                self.installed.pop(address, None)
            else:
                self.installed[address] = hop
        for address in plan.delete:
            if address not in failed_hosts:
                self.installed.pop(address, None)
        for prefix in plan.strays:
            if prefix not in failed:
                self.strays.pop(prefix, None)
