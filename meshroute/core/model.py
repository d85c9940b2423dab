"""Value types shared by every layer: addresses, claims, routes and bus messages.

Everything here is immutable and built on :mod:`ipaddress` types. Nothing here does
I/O; the codec (bytes <-> messages), the claim table and the reconciler all speak
these types. The types an agent holds once per claim or route (``ClaimRecord``,
``Claim``, ``Route``, ``Header``) are slotted: an agent holds 100,000 claims within
the DESIGN.md memory target, and an instance ``__dict__`` would cost ~300 bytes each.

Inside the core a host route is named by its client address (the claim's own
address object); :func:`host_prefix` makes the /32 or /128 prefix only where the
dataplane needs one. A subnet behind a client (OpenVPN ``iroute``) is named by its
network, always shorter than a host prefix: a claim's ``address`` is a
:data:`RouteKey`, an ``Address`` for a host and a ``Network`` for a subnet, never
a /32 or /128 network (:func:`parse_destination` makes that so), so host claims
keep their compact form and one key names one route everywhere.

Vocabulary (one word for one thing, in code, docs, CLI and metrics):

- **agent**: one meshroute daemon, next to one OpenVPN server; named by ``name``.
- **claim**: "client address A is connected to agent O" with the common name, the
  session's ``connected_since`` and an order ``stamp``; or "subnet S is behind
  client CN, connected to agent O" (a **subnet claim**, same fields).
- **stamp**: the integer that orders competing claims for one address. The claim with
  the highest ``(stamp, owner)`` wins on every agent, because every agent compares the
  same two fields carried by the claims themselves (never local arrival order).
- **epoch**: changes at every agent start: a persisted incarnation that never goes
  back, ``max(start time in ms, previous epoch + 1)``; ``seq`` increases per message
  within an epoch.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TypeAlias

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOL_VERSION = 1


def parse_address(text: str) -> Address:
    """Parse one host address (no prefix length); raises ValueError naming the text."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None


def host_prefix(address: Address) -> Network:
    """The host route prefix for an address: /32 for IPv4, /128 for IPv6.

    Built from the integer: ``ip_network(address)`` formats the address as text and
    parses it back, about 3x slower. A scoped IPv6 address (never from the bus: the
    codec refuses scopes) keeps its scope, as ``ip_network`` does.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv4Network(int(address))
    if address.scope_id is None:
        return ipaddress.IPv6Network(int(address))
    return ipaddress.ip_network(address)


def host_address(prefix: Network) -> Address | None:
    """The address of a host route prefix (/32, /128); None for any other prefix."""
    return prefix.network_address if prefix.prefixlen == prefix.max_prefixlen else None


RouteKey: TypeAlias = Address | Network
"""How a route (and the claims for it) is named between the dataplane and the core:
a host route (/32, /128) by its address, any other prefix (a subnet) by itself.
The kernel dump yields these keys directly, so a resync of 100,000 host routes
builds no prefix objects."""


def route_key(prefix: Network) -> RouteKey:
    """The key of an owned route's prefix (its address for a host route)."""
    address = host_address(prefix)
    return prefix if address is None else address


def key_parts(key: RouteKey) -> tuple[Address, int]:
    """A route key's destination address and prefix length, with no prefix object
    built: ``(address, 32 or 128)`` for a host, ``(network address, length)`` for a
    subnet. What the dataplane encodes (an ``IPv4Network`` costs ~1 us to make)."""
    if isinstance(key, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return key.network_address, key.prefixlen
    return key, key.max_prefixlen


def address_key(address: RouteKey) -> tuple[int, ...]:
    """Sort key for mixed IPv4/IPv6 addresses and subnets (they do not compare with
    each other): a subnet sorts after the host address it starts with."""
    if isinstance(address, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return (address.version, int(address.network_address), address.prefixlen)
    return (address.version, int(address))


def is_subnet(key: RouteKey) -> bool:
    """True for a subnet claim's key (a network), False for a host address."""
    return isinstance(key, (ipaddress.IPv4Network, ipaddress.IPv6Network))


def route_prefix(key: RouteKey) -> Network:
    """The prefix of the route a key names: /32 or /128 for a host, else the subnet."""
    if isinstance(key, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return key
    return host_prefix(key)


def parse_destination(text: str) -> RouteKey:
    """A host address, or a subnet ``ADDR/LEN`` with no host bits set (strict).

    A full-length prefix (/32, /128) is the host address itself, so that one route
    has one key. Raises ValueError naming the text.
    """
    text = text.strip()
    if "/" not in text:
        return parse_address(text)
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"not a subnet: {text!r} ({exc})") from None
    return route_key(network)


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    """One client session (or a subnet behind it) as its owner reports it on the bus.

    ``address`` is the client's address, or the subnet for a subnet claim (see the
    module docstring). ``connected_since`` is the OpenVPN server's own
    ``Connected Since (time_t)`` (s).
    ``stamp`` orders competing sessions for the same address (hybrid logical clock
    in ms: see :mod:`meshroute.core.table`).
    """

    address: RouteKey
    common_name: str
    connected_since: int
    stamp: int


MAX_COMMON_NAME = 255
"""The longest common name meshroute takes anywhere (hooks, status, bus): one limit,
applied where data enters, so that no agent announces a name its peers refuse."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim as the claim table holds it: a record plus the agent that owns it."""

    owner: str
    record: ClaimRecord

    @property
    def address(self) -> RouteKey:
        return self.record.address


@dataclass(frozen=True, slots=True)
class Route:
    """A route meshroute owns: ``prefix via next_hop`` in the configured table.

    ``prefix`` is a :data:`RouteKey` (a host's address stands for its /32 or /128,
    as :meth:`meshroute.core.reconcile.Plan.routes` passes it) or any prefix."""

    prefix: RouteKey
    next_hop: Address


# --- bus messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """Fields every message carries. ``origin`` must equal the broker user.

    ``clock`` is the sender's hybrid logical clock and ``sent_ms`` its wall clock
    when it sent the message (ms; None from a sender that does not send them):
    receivers merge the first into their own clock and estimate the sender's clock
    offset from the second (:mod:`meshroute.core.hlc`).
    """

    origin: str
    epoch: int
    seq: int
    clock: int | None = None
    sent_ms: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """The origin's full set of claims as of ``seq`` (authoritative for all <= seq).

    Sent to everyone once an agent knows its local clients, and to one agent in
    answer to its sync-request. An answer carries ``echo``: the requester's own
    claims as the sender holds them, so a restarted agent recovers the stamps of
    the sessions it finds again (and publishes exactly what its peers already hold).
    """

    header: Header
    next_hop: ipaddress.IPv4Address | None
    next_hop6: ipaddress.IPv6Address | None
    claims: tuple[ClaimRecord, ...]
    echo: tuple[ClaimRecord, ...] = ()
    type: str = field(default="snapshot", init=False)


@dataclass(frozen=True)
class Delta:
    """One address (or subnet) changed at the origin: ``claim`` is the new record,
    None = gone."""

    header: Header
    address: RouteKey
    claim: ClaimRecord | None
    type: str = field(default="delta", init=False)


@dataclass(frozen=True)
class Heartbeat:
    """Periodic liveness and a digest of the origin's claims (small: N^2 deliveries).

    ``state_seq`` is the seq of the origin's last snapshot/delta; ``count`` and
    ``digest`` describe its host claims, ``subnet_count`` and ``subnet_digest`` its
    subnet claims (apart, so that an agent that predates subnets, which ignores
    them, still finds its view of the host claims complete: docs/protocol.md), so a
    receiver can detect a loss and ask.
    """

    header: Header
    next_hop: ipaddress.IPv4Address | None
    next_hop6: ipaddress.IPv6Address | None
    state_seq: int
    count: int
    digest: str
    subnet_count: int = 0
    subnet_digest: str = "0" * 16
    type: str = field(default="heartbeat", init=False)


@dataclass(frozen=True)
class SyncRequest:
    """Ask ``target`` (or every agent when None) for a snapshot, sent to the origin."""

    header: Header
    target: str | None
    type: str = field(default="sync-request", init=False)


@dataclass(frozen=True)
class Goodbye:
    """Clean shutdown: peers drop the origin's claims at once."""

    header: Header
    type: str = field(default="goodbye", init=False)


Message: TypeAlias = Snapshot | Delta | Heartbeat | SyncRequest | Goodbye

MESSAGE_TYPES: tuple[str, ...] = ("snapshot", "delta", "heartbeat", "sync-request", "goodbye")
