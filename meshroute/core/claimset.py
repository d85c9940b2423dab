"""Claim sets, and what one agent knows of one peer (pure).

A :class:`ClaimSet` is address -> record (a subnet claim keyed by its network) with
order-independent digests kept up to date in O(1) per change: one of the host
claims and one of the subnet claims, apart (the heartbeat carries both; an agent
that predates subnets checks only the first), so a heartbeat can describe thousands of claims in 16
hex digits and a receiver can compare its view without walking it. The agent's own
claims are one; each :class:`PeerView` holds another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from meshroute.core.hlc import OffsetEstimate
from meshroute.core.model import Address, ClaimRecord, RouteKey

_NETWORKS = (IPv4Network, IPv6Network)  # a subnet claim's key


def record_hash(record: ClaimRecord) -> int:
    """A 64-bit hash of one claim record (blake2b of ``address|cn|since|stamp``)."""
    # !s: str() itself, not format(): the same text, without __format__'s parsing.
    text = f"{record.address!s}|{record.common_name}|{record.connected_since}|{record.stamp}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class ClaimSet:
    """address -> record, with order-independent digests kept up to date in O(1).

    A digest is the sum mod 2**64 of the records' 64-bit hashes (the heartbeat's
    ``digest``, 16 hex digits): adding or removing one record is one addition. Host
    and subnet claims are summed and counted apart (``digest``/``hosts``,
    ``subnet_digest``/``subnets``).
    """

    def __init__(self) -> None:
        self.records: dict[RouteKey, ClaimRecord] = {}
        self._sum = 0
        self._subnet_sum = 0
        self.subnets = 0

    def set(self, record: ClaimRecord) -> ClaimRecord | None:
        old = self.records.get(record.address)
        if old is not None:
            self._add(old, -1)
        self.records[record.address] = record
        self._add(record, 1)
        return old

    def remove(self, address: RouteKey) -> ClaimRecord | None:
        old = self.records.pop(address, None)
        if old is not None:
            self._add(old, -1)
        return old

    def _add(self, record: ClaimRecord, sign: int) -> None:
        if isinstance(record.address, _NETWORKS):
            self._subnet_sum += sign * record_hash(record)
            self.subnets += sign
        else:
            self._sum += sign * record_hash(record)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def hosts(self) -> int:
        return len(self.records) - self.subnets

    @property
    def digest(self) -> str:
        return f"{self._sum % 2**64:016x}"

    @property
    def subnet_digest(self) -> str:
        return f"{self._subnet_sum % 2**64:016x}"

    def digest_with(self, other: ClaimSet) -> str:
        """The host digest of the union of two disjoint sets (what the owner announces)."""
        return f"{(self._sum + other._sum) % 2**64:016x}"

    def subnet_digest_with(self, other: ClaimSet) -> str:
        """The subnet digest of the union of two disjoint sets."""
        return f"{(self._subnet_sum + other._subnet_sum) % 2**64:016x}"


@dataclass
class PeerView:
    """What this agent knows of one peer in its current epoch.

    ``claims`` are the peer's admitted claims (they take part in winners and
    routes); ``refused`` the ones policy refused (outside the client networks, over
    the per-peer cap, stamped too far ahead), kept only so that the peer's heartbeat
    digest can still be compared (it describes everything the peer sent) and so
    that a config change can admit them again. ``next_hop``/``next_hop6`` are the
    admitted next hops (None when refused: no route goes toward a refused hop);
    ``announced_hops`` what the peer last said.
    """

    name: str
    epoch: int
    last_seen: float
    next_hop: Address | None = None
    next_hop6: Address | None = None
    claims: ClaimSet = field(default_factory=ClaimSet)
    versions: dict[RouteKey, int] = field(default_factory=dict)
    snapshot_seq: int = -1
    max_seq: int = -1
    synced: bool = False
    refused: ClaimSet = field(default_factory=ClaimSet)
    refused_overflow: bool = False  # more refused claims than we keep: no digest check
    over_cap: bool = False  # sent more claims than max_claims_per_peer (quarantined)
    announced_hops: tuple[Address | None, Address | None] = (None, None)
    hop_problem: str | None = None  # why an announced next hop was refused
    offset: OffsetEstimate = field(default_factory=OffsetEstimate)

    def next_hop_for(self, address: RouteKey) -> Address | None:
        return self.next_hop if address.version == 4 else self.next_hop6
