"""The Dataplane seam: the kernel routing table, restricted to routes meshroute owns.

Invariants every implementation keeps (DESIGN.md rule 4):

- Only routes with meshroute's route protocol number in the configured table are
  listed, replaced or deleted; nothing else is ever touched.
- ``apply`` is idempotent: replacing an identical route changes nothing, and deleting
  a route that is not there is success.
- One bad route (for example an unreachable next hop) fails alone: the rest of the
  batch is still applied and the failure is reported per prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from meshroute.core.model import Address, Network, Route, RouteKey


@dataclass
class ApplyResult:
    """What an apply did: counts of successes and the error text per failed prefix."""

    replaced: int = 0
    deleted: int = 0
    failed: dict[Network, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


class Dataplane(Protocol):
    def dump(self) -> Mapping[RouteKey, Address]:
        """Every owned route now in the kernel -> next hop; a host route is keyed by
        its address, any other prefix by itself (:func:`meshroute.core.model.route_key`)."""

    def apply(self, replace: Iterable[Route], delete: Iterable[RouteKey]) -> ApplyResult:
        """Replace (add or change) and delete owned routes, in batches. A route is
        named by its key (a host's address) or by its prefix, /32 and /128 included;
        ``failed`` names it by its prefix either way."""

    def close(self) -> None: ...
