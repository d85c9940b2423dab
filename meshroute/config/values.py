"""Config value kinds: parse a key's text into a typed value, and show it back.

Each :class:`Kind` pairs a parser with a ``show`` function and says whether an empty
value means unset; :mod:`meshroute.config.schema` attaches one kind to every key.

Invariants:

- Every parser either returns the value or raises :class:`ValueError` with a message
  that names what is wrong, never the key nor where it was set: :mod:`meshroute.config.schema`
  prefixes ``file:line`` (or the environment variable / override) and the key.
- ``kind.parse(kind.show(value)) == value`` for every value a parser returns, so that
  ``format_config`` output loads back to an equal config.
- Pure and stdlib only (no click, pika, pyroute2, socket); no module state beyond
  constant tables.

Size (above 300 lines): one parser per kind of value, each with its show function
beside it so that parse(show(v)) == v is checked by eye.
"""

from __future__ import annotations

import ipaddress
import math
import pathlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from meshroute.core.model import Network


@dataclass(frozen=True)
class HostPort:
    """A TCP endpoint; ``host`` is a name or an address (IPv6 without brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


MgmtEndpoint: TypeAlias = HostPort | pathlib.Path

# --- value kinds: parse text (raise ValueError saying what is wrong) and show values ----


@dataclass(frozen=True)
class Kind:
    """How one key's text is parsed and shown; ``type_name`` is its docs column."""

    type_name: str
    parse: Callable[[str], Any]
    show: Callable[[Any], str] = str
    optional: bool = True  # an empty value means None (or () for lists)


def _split(text: str) -> list[str]:
    return [item for item in re.split(r"[,\s]+", text) if item]


def _parse_int(text: str, low: int, high: int) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{value} is out of range {low}..{high}")
    return value


def parse_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", text):
        raise ValueError(
            f"{text!r} is not a valid agent name (1-63 of A-Z a-z 0-9 _ . -, starting with "
            "a letter or digit): it names a queue and a broker user"
        )
    return text


def _parse_urls(text: str) -> tuple[str, ...]:
    urls = tuple(_split(text))
    if not urls:
        raise ValueError("at least one amqp:// or amqps:// URL is needed")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError(f"{redact_url(url)!r} is not an amqp:// or amqps:// URL")
        try:
            parts.port  # noqa: B018 - urlsplit checks the port lazily
        except ValueError:
            raise ValueError(f"{redact_url(url)!r} has a bad port") from None
        if not parts.hostname:
            raise ValueError(f"{redact_url(url)!r} names no host")
    return urls


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for logs and check output)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _parse_exchange(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,255}", text):
        raise ValueError(f"{text!r} is not a valid exchange name (A-Z a-z 0-9 _ . : -)")
    if text.startswith("amq."):
        raise ValueError(f"{text!r}: names starting with 'amq.' are reserved by RabbitMQ")
    return text


def _pattern(regex: str, what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not re.fullmatch(regex, text) or text in (".", ".."):
            raise ValueError(f"{text!r} is not a valid {what}")
        return text

    return parse


def _parse_ipv4(text: str) -> IPv4Address:
    address = _parse_address(text)
    if not isinstance(address, IPv4Address):
        raise ValueError(f"{text} is an IPv6 address: use next_hop6")
    return address


def _parse_ipv6(text: str) -> IPv6Address:
    address = _parse_address(text)
    if not isinstance(address, IPv6Address):
        raise ValueError(f"{text} is an IPv4 address: use next_hop")
    return address


def _parse_address(text: str) -> IPv4Address | IPv6Address:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{address} cannot be a next hop")
    return address


def _parse_networks(text: str) -> tuple[Network, ...]:
    return tuple(_parse_network(item) for item in _split(text))


def _parse_network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"not a network: {text!r} ({exc})") from None
        raise ValueError(
            f"{text} is not a network: it has host bits set (did you mean {loose}?)"
        ) from None


_TABLE_NAMES = {"main": 254, "default": 253, "local": 255}


def _parse_table(text: str) -> int:
    if text.lower() in _TABLE_NAMES:
        return _TABLE_NAMES[text.lower()]
    return _parse_int(text, 1, 2**32 - 1)


_RESERVED_PROTOCOLS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static"}
_REGISTERED_PROTOCOLS = {
    **dict.fromkeys(range(8), "reserved"),
    8: "gated", 9: "ra", 10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp",
    15: "ntk", 16: "dhcp", 17: "mrouted", 18: "keepalived", 42: "babel", 99: "openr",
    186: "bgp", 187: "isis", 188: "ospf", 189: "rip", 192: "eigrp",
}  # fmt: skip


def _parse_protocol(text: str) -> int:
    value = _parse_int(text, 0, 255)
    if value in _RESERVED_PROTOCOLS:
        raise ValueError(
            f"{value} is iproute2's reserved protocol {_RESERVED_PROTOCOLS[value]!r}: "
            "meshroute needs a number of its own (default 201)"
        )
    return value


def protocol_note(protocol: int) -> str | None:
    """A warning when ``protocol`` is registered to another routing daemon, else None."""
    known = _REGISTERED_PROTOCOLS.get(protocol)
    return (
        f"{protocol} is registered to {known!r}: pick a number no other daemon uses"
        if known
        else None
    )


def parse_hostport(text: str) -> HostPort:
    bracketed = re.fullmatch(r"\[([^\]]+)\]:(\d+)", text)
    if bracketed:
        host, port = bracketed.groups()
        if not isinstance(_maybe_address(host), IPv6Address):
            raise ValueError(f"{host!r} in brackets is not an IPv6 address")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"expected host:port or [IPv6]:port, got {text!r}")
    return HostPort(host, _parse_int(port, 1, 65535))


def _maybe_address(text: str) -> object:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_mgmt(text: str) -> MgmtEndpoint:
    """An ``openvpn_mgmt`` value: an absolute path is a unix socket, else host:port."""
    if text.startswith("/"):
        return pathlib.Path(text)
    try:
        return parse_hostport(text)
    except ValueError as exc:
        raise ValueError(f"{exc}, or an absolute unix socket path") from None


def _parse_path(text: str) -> pathlib.Path:
    path = pathlib.Path(text)
    if not path.is_absolute():
        raise ValueError(f"{text!r} is not an absolute path (the agent's cwd is not defined)")
    return path


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(allow_zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        match = re.fullmatch(r"(.*?)\s*(ms|s|m|h)?", text)
        number, unit = match.groups() if match else (text, None)
        try:
            value = float(number) * _UNITS[unit or "s"]
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"not a duration: {text!r} (seconds, or with a unit: 500ms, 5s, 2m)")
        if value == 0 and not allow_zero:
            raise ValueError("must be more than 0")
        return value

    return parse


def show_float(value: float) -> str:
    text = repr(float(value))
    return text.removesuffix(".0")


def _parse_log_level(text: str) -> str:
    level = text.lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ValueError(f"{text!r} is not one of debug, info, warning, error")
    return level


def _parse_log_format(text: str) -> str:
    kind = text.lower()
    if kind not in ("text", "journal", "json"):
        raise ValueError(f"{text!r} is not one of text, journal, json")
    return kind


def _joined(values: tuple) -> str:
    return ", ".join(str(v) for v in values)


NAME = Kind("name", parse_name, optional=False)
URLS = Kind("URL list", _parse_urls, _joined, optional=False)
EXCHANGE = Kind("string", _parse_exchange, optional=False)
IFNAME = Kind("interface", _pattern(r"[A-Za-z0-9_.-]{1,15}", "interface name"))
IPV4 = Kind("IPv4 address", _parse_ipv4)
IPV6 = Kind("IPv6 address", _parse_ipv6)
NETWORKS = Kind("network list", _parse_networks, _joined)
TABLE = Kind("table", _parse_table, optional=False)
PROTOCOL = Kind("integer", _parse_protocol, optional=False)
MGMT = Kind("endpoint", lambda text: str(parse_mgmt(text)))
PORT = Kind("port", lambda text: _parse_int(text, 1, 65535), optional=False)
COUNT = Kind("integer", lambda text: _parse_int(text, 1, 2**31 - 1), optional=False)
PATH = Kind("path", _parse_path)
DURATION = Kind("duration", _duration(allow_zero=False), show_float, optional=False)
DURATION_OR_ZERO = Kind("duration", _duration(allow_zero=True), show_float, optional=False)
LISTEN = Kind("host:port", lambda text: str(parse_hostport(text)))
LOG_LEVEL = Kind("level", _parse_log_level, optional=False)
LOG_FORMAT = Kind("format", _parse_log_format)
NETNS = Kind("netns", _pattern(r"[A-Za-z0-9_.-]{1,255}", "network namespace name"))
GROUP = Kind("group", _pattern(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", "group name"))
