"""Functional-tier fixtures: a throwaway network namespace with reachable next hops.

Each test gets its own namespace ``mrt-dp-<pid>-<n>`` holding lo and a veth pair
(both ends inside): v0 has 192.0.2.1/24 and 2001:db8::1/64 (nodad), so next hops
192.0.2.2 / 2001:db8::2 are reachable. The namespace is deleted in ``finally``, also
when the test fails. The root namespace is never changed.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from meshroute.core.model import Address, Network

HOP4 = ipaddress.IPv4Address("192.0.2.2")
HOP6 = ipaddress.IPv6Address("2001:db8::2")


@dataclass(frozen=True)
class Netns:
    """A namespace and an independent observer of its routes (iproute2, not netlink.py)."""

    name: str

    def ip(self, *args: str) -> str:
        command = ["ip", "-n", self.name, *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed: {done.stderr.strip()}")
        return done.stdout

    def routes(self, *selector: str, family: str = "") -> list[dict[str, object]]:
        """``ip -j route show SELECTOR`` (both families unless ``family`` is -4 or -6)."""
        found: list[dict[str, object]] = []
        for option in [family] if family else ["-4", "-6"]:
            try:
                found += json.loads(self.ip("-j", option, "route", "show", *selector) or "[]")
            except AssertionError as exc:
                if "FIB table does not exist" not in str(exc):
                    raise
        return found

    def route_map(self, *selector: str, family: str = "") -> dict[Network, Address]:
        """prefix -> gateway of the routes ``ip`` lists for ``selector``."""
        return {
            ipaddress.ip_network(str(r["dst"])): ipaddress.ip_address(str(r["gateway"]))
            for r in self.routes(*selector, family=family)
            if "gateway" in r
        }


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll instead of sleeping: the IPv6 prefix route follows link-up asynchronously."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("namespace setup did not converge")
        time.sleep(0.01)


@pytest.fixture(scope="session")
def _netns_numbers() -> Iterator[int]:
    return itertools.count()


@pytest.fixture
def netns(_netns_numbers: Iterator[int]) -> Iterator[Netns]:
    ns = Netns(f"mrt-dp-{os.getpid()}-{next(_netns_numbers)}")
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    try:
        ns.ip("link", "set", "lo", "up")
        ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ns.ip("addr", "add", "192.0.2.1/24", "dev", "v0")
        ns.ip("addr", "add", "2001:db8::1/64", "dev", "v0", "nodad")
        ns.ip("link", "set", "v0", "up")
        ns.ip("link", "set", "v1", "up")
        _wait_for(lambda: ns.ip("-6", "route", "show", "2001:db8::/64").strip() != "")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "delete", ns.name], check=False)
