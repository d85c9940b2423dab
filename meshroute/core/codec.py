"""Bus messages <-> bytes: JSON wire format v1 with strict validation (pure).

``encode`` trusts its input (the agent builds messages from validated state);
``decode`` trusts nothing (DESIGN rule 9). Invariants:

- ``decode`` raises only :class:`CodecError` (a ``ValueError``) for any input bytes,
  with a message naming the field and what is wrong; it never returns a message
  whose ``origin`` differs from the broker-authenticated ``user_id``.
- Every integer on the wire is a real JSON integer (no bool, no float) in
  ``0 .. 2**63-1``; addresses are bare host addresses (no prefix, no scope).
- Unknown top-level and claim fields are ignored (forward compatibility within v1);
  a higher ``v`` is refused. See docs/protocol.md.
- Subnet claims (``iroute``) travel apart from host claims, so that an agent that
  predates them can never read one as a host route: in a snapshot in the lists
  ``subnets`` and ``subnet_echo`` (an older agent ignores unknown fields), in a
  delta as ``address`` ``"ADDR/LEN"`` (an older agent refuses the whole delta:
  not a bare host address), in a heartbeat as ``subnet_count``/``subnet_digest``
  beside the host-only ``count``/``digest`` (all omitted when there are none, so
  an agent without subnets sends exactly what it sent before). A subnet is
  strict (no host bits), shorter than a host prefix, and never in a host list.
- ``encode`` output is canonical: compact separators, UTF-8, fixed field set.

Size (above 300 lines): one small validating function per field and message type: the
wire format v1 read top to bottom, each check named after what it refuses.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from meshroute.core.model import (
    MAX_COMMON_NAME,
    PROTOCOL_VERSION,
    Address,
    ClaimRecord,
    Delta,
    Goodbye,
    Header,
    Heartbeat,
    Message,
    RouteKey,
    Snapshot,
    SyncRequest,
    is_subnet,
    route_key,
)

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_CLAIMS = 262_144
MAX_INT = 2**63 - 1
AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
DIGEST = re.compile(r"[0-9a-f]{16}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class CodecError(ValueError):
    """A message body that is not a valid, authentic v1 message."""


# --- encode -------------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """The canonical JSON body of ``msg`` (compact, UTF-8)."""
    h = msg.header
    obj: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "type": msg.type,
        "origin": h.origin,
        "epoch": h.epoch,
        "seq": h.seq,
    }
    if h.clock is not None:
        obj["clock"] = h.clock
    if h.sent_ms is not None:
        obj["sent_ms"] = h.sent_ms
    obj.update(_ENCODERS[msg.type](msg))
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _claim_obj(record: ClaimRecord) -> dict[str, Any]:
    return {
        "address": str(record.address),
        "cn": record.common_name,
        "since": record.connected_since,
        "stamp": record.stamp,
    }


def _opt_str(value: object | None) -> str | None:
    return None if value is None else str(value)


def _snapshot_obj(m: Snapshot) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "next_hop": _opt_str(m.next_hop),
        "next_hop6": _opt_str(m.next_hop6),
        "claims": [_claim_obj(c) for c in m.claims if not is_subnet(c.address)],
        "echo": [_claim_obj(c) for c in m.echo if not is_subnet(c.address)],
    }
    for name, records in (("subnets", m.claims), ("subnet_echo", m.echo)):
        subnets = [_claim_obj(c) for c in records if is_subnet(c.address)]
        if subnets:
            obj[name] = subnets
    return obj


def _heartbeat_obj(m: Heartbeat) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "next_hop": _opt_str(m.next_hop),
        "next_hop6": _opt_str(m.next_hop6),
        "state_seq": m.state_seq,
        "count": m.count,
        "digest": m.digest,
    }
    if m.subnet_count:
        obj["subnet_count"] = m.subnet_count
        obj["subnet_digest"] = m.subnet_digest
    return obj


_ENCODERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "snapshot": _snapshot_obj,
    "delta": lambda m: {
        "address": str(m.address),
        "claim": None if m.claim is None else _claim_obj(m.claim),
    },
    "heartbeat": _heartbeat_obj,
    "sync-request": lambda m: {"target": m.target},
    "goodbye": lambda m: {},
}


# --- decode -------------------------------------------------------------------------


def decode(body: bytes, *, user_id: str | None, max_claims: int = MAX_CLAIMS) -> Message:
    """Parse and validate one body; ``user_id`` is the broker-authenticated sender.

    Raises CodecError when anything is wrong, including a missing ``user_id`` or one
    that differs from the body's ``origin`` (the sender's identity is the broker's).
    ``max_claims`` (the agent's per-peer cap) refuses a larger snapshot before its
    claims are validated one by one: a flood costs a length check, not seconds.
    """
    obj = _parse_json(body)
    _check_version(obj)
    msg_type = _field(obj, "type", str)
    parse = _DECODERS.get(msg_type)
    if parse is None:
        raise CodecError(f"field 'type': unknown message type {msg_type!r}")
    limit = min(max_claims, MAX_CLAIMS)
    for name in ("claims", "echo", "subnets", "subnet_echo"):
        items = obj.get(name)
        if isinstance(items, list) and len(items) > limit:
            raise CodecError(f"field {name!r}: {len(items)} claims exceed the limit {limit}")
    header = Header(
        origin=_agent_name(obj, "origin"),
        epoch=_int(obj, "epoch"),
        seq=_int(obj, "seq"),
        clock=_opt_int(obj, "clock"),
        sent_ms=_opt_int(obj, "sent_ms"),
    )
    if user_id is None:
        raise CodecError("identity: message has no broker user_id")
    if user_id != header.origin:
        raise CodecError(
            f"identity: field 'origin' {header.origin!r} differs from user_id {user_id!r}"
        )
    return parse(obj, header)


def _parse_json(body: bytes) -> dict[str, Any]:
    if not isinstance(body, bytes | bytearray | memoryview):
        raise CodecError(f"body: expected bytes, got {type(body).__name__}")
    if len(body) > MAX_BODY_BYTES:
        raise CodecError(f"body: {len(body)} bytes exceeds the {MAX_BODY_BYTES} byte limit")
    try:
        obj = _DECODER.decode(bytes(body).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError too
        raise CodecError(f"body: not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CodecError(f"body: expected a JSON object, got {type(obj).__name__}")
    return obj


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers must never see two different messages in one body.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in object")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


# One decoder for every body: ``json.loads`` with hooks builds a new one per call
# (a third of the parse time of a small delta; bench/bench_loop.py).
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def _check_version(obj: Mapping[str, Any]) -> None:
    if "v" not in obj:
        raise CodecError("field 'v': missing (protocol version)")
    v = obj["v"]
    if type(v) is not int:
        raise CodecError(f"field 'v': expected an integer, got {type(v).__name__}")
    if v != PROTOCOL_VERSION:
        raise CodecError(
            f"field 'v': unsupported version {v} (this agent speaks {PROTOCOL_VERSION})"
        )


def _field(obj: Mapping[str, Any], name: str, kind: type, *, nullable: bool = False) -> Any:
    if name not in obj:
        raise CodecError(f"field {name!r}: missing")
    value = obj[name]
    if value is None and nullable:
        return None
    if type(value) is not kind:
        raise CodecError(f"field {name!r}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _int(obj: Mapping[str, Any], name: str) -> int:
    value: int = _field(obj, name, int)
    if not 0 <= value <= MAX_INT:
        raise CodecError(f"field {name!r}: {value} is outside 0..2**63-1")
    return value


def _opt_int(obj: Mapping[str, Any], name: str) -> int | None:
    """An optional integer field (absent from senders that predate it)."""
    return _int(obj, name) if name in obj else None


def _agent_name(obj: Mapping[str, Any], name: str) -> str:
    value = _opt_agent_name(obj, name, nullable=False)
    assert value is not None  # _field refused a null
    return value


def _opt_agent_name(obj: Mapping[str, Any], name: str, *, nullable: bool = True) -> str | None:
    value: str | None = _field(obj, name, str, nullable=nullable)
    if value is not None and not AGENT_NAME.fullmatch(value):
        raise CodecError(f"field {name!r}: {value[:80]!r} is not a valid agent name")
    return value


def _address(obj: Mapping[str, Any], name: str) -> Address:
    address = _opt_address(obj, name, nullable=False)
    assert address is not None  # _field refused a null
    return address


def _opt_address(obj: Mapping[str, Any], name: str, *, nullable: bool = True) -> Address | None:
    text = _field(obj, name, str, nullable=nullable)
    if text is None:
        return None
    if "/" in text or "%" in text or text != text.strip():
        raise CodecError(f"field {name!r}: {text[:80]!r} is not a bare host address")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise CodecError(f"field {name!r}: {text[:80]!r} is not an IP address") from None


def _subnet(obj: Mapping[str, Any], name: str) -> RouteKey:
    """A subnet ``ADDR/LEN``: strict (no host bits), shorter than a host prefix."""
    text = _field(obj, name, str)
    if "%" in text or text != text.strip() or "/" not in text:
        raise CodecError(f"field {name!r}: {text[:80]!r} is not a subnet ADDR/LEN")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise CodecError(f"field {name!r}: {text[:80]!r} is not a subnet ADDR/LEN") from None
    if network.prefixlen == network.max_prefixlen:
        raise CodecError(f"field {name!r}: {text[:80]!r} is a host, not a subnet")
    return route_key(network)


def _destination(obj: Mapping[str, Any], name: str) -> RouteKey:
    """A bare host address, or a subnet when the text has a prefix length."""
    text = _field(obj, name, str)
    return _subnet(obj, name) if "/" in text else _address(obj, name)


def _next_hops(obj: Mapping[str, Any]) -> dict[str, Any]:
    hop4 = _opt_address(obj, "next_hop")
    hop6 = _opt_address(obj, "next_hop6")
    if hop4 is not None and hop4.version != 4:
        raise CodecError(f"field 'next_hop': {hop4} is not an IPv4 address")
    if hop6 is not None and hop6.version != 6:
        raise CodecError(f"field 'next_hop6': {hop6} is not an IPv6 address")
    return {"next_hop": hop4, "next_hop6": hop6}


def _claim(
    value: Any, where: str, *, subnet: bool = False, parsed: tuple[str, RouteKey] | None = None
) -> ClaimRecord:
    """One claim object. ``parsed`` is (text, key) of an address already validated
    (a delta's own ``address``): the same text is not parsed a second time."""
    if not isinstance(value, dict):
        raise CodecError(f"{where}: expected an object, got {type(value).__name__}")
    try:
        cn = _field(value, "cn", str)
        if len(cn) > MAX_COMMON_NAME or _CONTROL.search(cn):
            raise CodecError(
                f"field 'cn': longer than {MAX_COMMON_NAME} characters "
                "or contains control characters"
            )
        text = value.get("address")
        if parsed is not None and type(text) is str and text == parsed[0]:
            address = parsed[1]  # the same text: the same check, the same result
        else:
            address = _subnet(value, "address") if subnet else _address(value, "address")
        return ClaimRecord(
            address=address,
            common_name=cn,
            connected_since=_int(value, "since"),
            stamp=_int(value, "stamp"),
        )
    except CodecError as exc:
        raise CodecError(f"{where}: {exc}") from None


def _snapshot(obj: Mapping[str, Any], header: Header) -> Snapshot:
    claims = _claim_list(obj, "claims")
    echo = _claim_list(obj, "echo") if "echo" in obj else ()
    claims += _claim_list(obj, "subnets", subnet=True) if "subnets" in obj else ()
    echo += _claim_list(obj, "subnet_echo", subnet=True) if "subnet_echo" in obj else ()
    return Snapshot(header=header, claims=claims, echo=echo, **_next_hops(obj))


def _claim_list(
    obj: Mapping[str, Any], name: str, *, subnet: bool = False
) -> tuple[ClaimRecord, ...]:
    items = _field(obj, name, list)
    if len(items) > MAX_CLAIMS:
        raise CodecError(f"field {name!r}: {len(items)} claims exceed the limit {MAX_CLAIMS}")
    claims = []
    for i, item in enumerate(items):
        try:
            claims.append(_claim(item, "", subnet=subnet))
        except CodecError as exc:  # named only when refused: no text made per claim
            raise CodecError(f"{name}[{i}]{exc}") from None
    seen: set[RouteKey] = set()
    for i, claim in enumerate(claims):
        if claim.address in seen:
            raise CodecError(f"{name}[{i}]: duplicate address {claim.address}")
        seen.add(claim.address)
    return tuple(claims)


def _delta(obj: Mapping[str, Any], header: Header) -> Delta:
    address = _destination(obj, "address")
    raw = _field(obj, "claim", dict, nullable=True)
    parsed = (obj["address"], address)
    claim = None if raw is None else _claim(raw, "claim", subnet=is_subnet(address), parsed=parsed)
    if claim is not None and claim.address != address:
        raise CodecError(f"claim: address {claim.address} differs from field 'address' {address}")
    return Delta(header=header, address=address, claim=claim)


def _heartbeat(obj: Mapping[str, Any], header: Header) -> Heartbeat:
    digest = _field(obj, "digest", str)
    if not DIGEST.fullmatch(digest):
        raise CodecError(f"field 'digest': {digest[:80]!r} is not 16 lowercase hex digits")
    subnet_digest = _field(obj, "subnet_digest", str) if "subnet_digest" in obj else "0" * 16
    if not DIGEST.fullmatch(subnet_digest):
        raise CodecError(
            f"field 'subnet_digest': {subnet_digest[:80]!r} is not 16 lowercase hex digits"
        )
    return Heartbeat(
        header=header,
        state_seq=_int(obj, "state_seq"),
        count=_int(obj, "count"),
        digest=digest,
        subnet_count=_opt_int(obj, "subnet_count") or 0,
        subnet_digest=subnet_digest,
        **_next_hops(obj),
    )


def _sync_request(obj: Mapping[str, Any], header: Header) -> SyncRequest:
    return SyncRequest(header=header, target=_opt_agent_name(obj, "target"))


_DECODERS: dict[str, Callable[[Mapping[str, Any], Header], Message]] = {
    "snapshot": _snapshot,
    "delta": _delta,
    "heartbeat": _heartbeat,
    "sync-request": _sync_request,
    "goodbye": lambda obj, header: Goodbye(header=header),
}
