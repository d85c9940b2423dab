"""Hook datagrams -> :class:`HookEvent`, with strict validation (pure; no I/O).

``meshroute hook`` (see :mod:`meshroute.openvpn.hook`) sends one JSON object per
OpenVPN script call; this module is the receiving side's only way to read one.

Wire format, version 1 (every value a JSON string unless noted; absent = null)::

    {"v": 1, "event": "learn-address", "op": "add"|"update"|"delete",
     "address": "10.8.0.6", "common_name": "client1" (null on delete),
     "time_unix": null, "ts_ms": 1700000000123 (int)}
    {"v": 1, "event": "client-connect"|"client-disconnect",
     "op": "connect"|"disconnect",
     "address": <ifconfig_pool_remote_ip>, "address6": <ifconfig_pool_remote_ip6>,
     "common_name": ..., "time_unix": "1700000000", "trusted_ip": ...,
     "trusted_port": ..., "ts_ms": ...}

Invariants:

- Anything that is not exactly a valid event raises ``ValueError`` with a message that
  says what is wrong; nothing half-parsed escapes.
- A learn-address for an ``iroute`` subnet (``192.168.50.0/24``) is an event for
  the subnet (``HookEvent.subnet``); whether it is routed is the agent's
  ``routed_networks`` call (docs/subnets.md). A /32 or /128 is the host address.
- A well-formed event that meshroute does not route (a learn-address for a tap MAC
  address, a connect without any pool address) raises
  :class:`IgnoredEvent`, a ``ValueError`` subclass, so a receiver can tell "not for
  us" from "broken".
- Unknown keys are ignored (a newer hook may add fields within version 1).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from meshroute.core.model import MAX_COMMON_NAME as MAX_COMMON_NAME  # one limit, bus and hooks
from meshroute.core.model import Address, Network, route_key

HOOK_PROTOCOL_VERSION = 1
MAX_DATAGRAM = 4096

LEARN_ADDRESS = "learn-address"
CLIENT_CONNECT = "client-connect"
CLIENT_DISCONNECT = "client-disconnect"
KINDS = (LEARN_ADDRESS, CLIENT_CONNECT, CLIENT_DISCONNECT)
LEARN_OPS = ("add", "update", "delete")
SESSION_OPS = {CLIENT_CONNECT: "connect", CLIENT_DISCONNECT: "disconnect"}


class IgnoredEvent(ValueError):
    """A valid event that carries nothing meshroute routes (subnet, MAC, no address)."""


def bad_reason(exc: ValueError) -> str:
    """A short, stable label for why a datagram was refused (for counters, metrics).

    Messages name the field in quotes ("'op' must be ..."); the label is the field,
    or the kind of document problem."""
    text = str(exc)
    for prefix, label in (("datagram too large", "too_large"), ("not UTF-8 JSON", "not_json"),
                          ("not a JSON object", "not_object"),
                          ("unsupported hook protocol", "version"),
                          ("bad common name", "common_name")):  # fmt: skip
        if text.startswith(prefix):
            return label
    if text.startswith("missing '") or text.startswith("'"):
        return text.split("'")[1]
    return "other"


@dataclass(frozen=True)
class HookEvent:
    """One OpenVPN script call, as the hook saw it.

    ``address`` is the learned address for learn-address (IPv4 or IPv6) and the IPv4
    pool address for client-connect/disconnect (whose IPv6 pool address is
    ``address6``). ``common_name`` is None only for learn-address delete.
    ``subnet`` is an ``iroute`` subnet behind the client (learn-address only; then
    ``address`` is None).
    ``connected_since`` is OpenVPN's ``time_unix`` (s) when the script had it.
    ``sent_ms`` is the hook's wall clock, ``received_ms`` the receiver's.
    """

    kind: str
    op: str
    address: Address | None
    address6: ipaddress.IPv6Address | None
    common_name: str | None
    connected_since: int | None
    sent_ms: int
    received_ms: int | None = None
    real_address: str | None = None
    subnet: Network | None = None


def parse_hook_datagram(data: bytes, received_ms: int | None = None) -> HookEvent:
    """Decode and validate one datagram; raises ValueError (or IgnoredEvent)."""
    obj = _decode(data)
    kind = _choice(obj, "event", KINDS)
    sent_ms = _positive_int(obj, "ts_ms")
    since = _time_unix(obj.get("time_unix"))
    if kind == LEARN_ADDRESS:
        return _learn_address(obj, sent_ms, since, received_ms)
    return _session(obj, kind, sent_ms, since, received_ms)


def _decode(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"datagram too large: {len(data)} bytes > {MAX_DATAGRAM}")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object: {type(obj).__name__}")
    version = obj.get("v")
    if type(version) is not int or version != HOOK_PROTOCOL_VERSION:
        raise ValueError(f"unsupported hook protocol version: {version!r}")
    return obj


def _learn_address(
    obj: dict[str, Any], sent_ms: int, since: int | None, received_ms: int | None
) -> HookEvent:
    op = _choice(obj, "op", LEARN_OPS)
    learned = _learned_address(_string(obj, "address", required=True) or "")
    common_name = _common_name(obj, required=op != "delete")
    address = (
        learned if isinstance(learned, ipaddress.IPv4Address | ipaddress.IPv6Address) else None
    )
    return HookEvent(
        kind=LEARN_ADDRESS,
        op=op,
        address=address,
        subnet=None if address is not None else learned,  # type: ignore[arg-type]
        address6=None,
        common_name=common_name if op != "delete" else None,
        connected_since=since,
        sent_ms=sent_ms,
        received_ms=received_ms,
    )


def _session(
    obj: dict[str, Any], kind: str, sent_ms: int, since: int | None, received_ms: int | None
) -> HookEvent:
    op = _choice(obj, "op", (SESSION_OPS[kind],))
    common_name = _common_name(obj, required=True)
    address = _optional_ip(obj, "address", ipaddress.IPv4Address)
    address6 = _optional_ip(obj, "address6", ipaddress.IPv6Address)
    if address is None and address6 is None:
        raise IgnoredEvent(f"{kind} for {common_name!r} without a pool address")
    return HookEvent(
        kind=kind,
        op=op,
        address=address,
        address6=address6,
        common_name=common_name,
        connected_since=since,
        sent_ms=sent_ms,
        received_ms=received_ms,
        real_address=_real_address(obj),
    )


def _string(obj: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        if required:
            raise ValueError(f"missing {key!r}")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _choice(obj: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{key!r} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _positive_int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if type(value) is not int or value <= 0:
        raise ValueError(f"{key!r} must be a positive integer, got {value!r}")
    return value


def _time_unix(value: Any) -> int | None:
    """OpenVPN's ``time_unix`` env var: decimal seconds (a string, or an int)."""
    if value is None or value == "":
        return None
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        return int(value)
    raise ValueError(f"'time_unix' must be decimal seconds, got {value!r}")


def _common_name(obj: dict[str, Any], required: bool) -> str | None:
    name = _string(obj, "common_name", required=required)
    if name is None:
        return None
    if len(name) > MAX_COMMON_NAME or not name.isprintable():
        raise ValueError(
            f"bad common name: {name[:40]!r} (at most {MAX_COMMON_NAME} printable characters)"
        )
    return name


def _learned_address(text: str) -> Address | Network:
    """learn-address gives a host address, an iroute subnet or (tap) a MAC address."""
    if "/" in text:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"'address' is not an IP address: {text!r}") from None
        return route_key(network)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if len(text) == 17 and text.count(":") == 5:
        raise IgnoredEvent(f"learn-address for MAC address {text} (dev tap)")
    raise ValueError(f"'address' is not an IP address: {text!r}")


def _optional_ip(obj: dict[str, Any], key: str, kind: type) -> Any:
    text = _string(obj, key)
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{key!r} is not an {kind.__name__}: {text!r}") from None


def _real_address(obj: dict[str, Any]) -> str | None:
    """``trusted_ip:trusted_port`` (``[ip6]:port`` for IPv6 transports), if given."""
    ip = _string(obj, "trusted_ip")
    port = obj.get("trusted_port")
    if ip is None:
        return None
    if port is None or port == "":
        return ip
    port_text = str(port)
    if not port_text.isdigit():
        raise ValueError(f"'trusted_port' must be a port number, got {port!r}")
    return f"[{ip}]:{port_text}" if ":" in ip else f"{ip}:{port_text}"
