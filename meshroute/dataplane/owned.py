"""The set of route keys the dataplane owns in the kernel, kept small.

:class:`~meshroute.dataplane.netlink.NetlinkDataplane` asks one question per route it
adds: is this prefix already ours (replace it) or not (add it exclusively, so that a
route someone else holds is never overwritten: DESIGN.md rule 4)? At 100,000 host
routes a plain ``set`` of addresses cost ~7 MiB (a 4 MiB table plus, after a resync,
the dump's own address integers; docs/performance.md). OpenVPN hands out client
addresses from pools, so owned IPv4 hosts crowd into few /24s: here each /24 is one
integer used as a 256-bit mask (``block -> mask``), a few hundred entries for
100,000 hosts. IPv6 hosts and subnets (few) stay in a plain set.

Invariant: membership is exactly that of a set of the keys added and not discarded
since the last :meth:`OwnedKeys.replace_all` (tests/unit/test_owned_keys.py).
Worst case (every IPv4 host in a /24 of its own) ~100 bytes a key, as a set costs.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address

from meshroute.core.model import RouteKey


class OwnedKeys:
    """Route keys, IPv4 hosts as bits of per-/24 masks, anything else in a set."""

    __slots__ = ("_blocks", "_other")

    def __init__(self, keys: Iterable[RouteKey] = ()) -> None:
        self._blocks: dict[int, int] = {}
        self._other: set[RouteKey] = set()
        self.replace_all(keys)

    def replace_all(self, keys: Iterable[RouteKey]) -> None:
        """Exactly ``keys`` from now on (the keys of a fresh dump)."""
        blocks: dict[int, int] = {}
        other: set[RouteKey] = set()
        for key in keys:
            if type(key) is IPv4Address:
                number = int(key)
                blocks[number >> 8] = blocks.get(number >> 8, 0) | 1 << (number & 255)
            else:
                other.add(key)
        self._blocks, self._other = blocks, other

    def __contains__(self, key: object) -> bool:
        if type(key) is IPv4Address:
            number = int(key)
            return bool(self._blocks.get(number >> 8, 0) >> (number & 255) & 1)
        return key in self._other

    def add(self, key: RouteKey) -> None:
        if type(key) is IPv4Address:
            number = int(key)
            block = number >> 8
            self._blocks[block] = self._blocks.get(block, 0) | 1 << (number & 255)
        else:
            self._other.add(key)

    def discard(self, key: RouteKey) -> None:
        if type(key) is IPv4Address:
            number = int(key)
            block = number >> 8
            mask = self._blocks.get(block, 0) & ~(1 << (number & 255))
            if mask:
                self._blocks[block] = mask
            else:
                self._blocks.pop(block, None)
        else:
            self._other.discard(key)

    def __len__(self) -> int:
        return sum(mask.bit_count() for mask in self._blocks.values()) + len(self._other)
