"""Configuration: one frozen dataclass, loaded from file -> environment -> overrides.

The file format is cube-routed's (the article's Listing 4): ``key = value`` lines, no
section header, whole-line ``#`` comments and blank lines. Every key is a field of
:class:`Config`, typed, defaulted and documented once in the field's metadata
(``doc``); ``docs/configuration.md`` and ``meshroute check`` reuse those texts.

Invariants:

- :func:`load_config` either returns a fully validated :class:`Config` or raises one
  :class:`ConfigError` listing *every* problem found, each naming where it came from
  (``file:line``, the environment variable or the override), the key and what is wrong.
- Later sources win key by key: file, then ``MESHROUTE_<KEY>``, then overrides.
- Nothing here touches the kernel: ``next_hop`` and ``client_networks`` left unset are
  resolved by the agent at start (from ``mgmt_interface`` / ``data_interface``).
- :func:`format_config` output loads back to an equal :class:`Config` (unset optional
  keys are written as comments).
- Stdlib only (no click, pika, pyroute2); no module state: callers hold the config.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import pathlib
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from meshroute.model import Network

ENV_PREFIX = "MESHROUTE_"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__(*self.problems)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        return f"{len(self.problems)} configuration problems:\n  " + "\n  ".join(self.problems)


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
class _Kind:
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


def _parse_name(text: str) -> str:
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


def _parse_hostport(text: str) -> HostPort:
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
        return _parse_hostport(text)
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


def _show_float(value: float) -> str:
    text = repr(float(value))
    return text.removesuffix(".0")


def _parse_log_level(text: str) -> str:
    level = text.lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ValueError(f"{text!r} is not one of debug, info, warning, error")
    return level


def _joined(values: tuple) -> str:
    return ", ".join(str(v) for v in values)


_NAME = _Kind("name", _parse_name, optional=False)
_URLS = _Kind("URL list", _parse_urls, _joined, optional=False)
_EXCHANGE = _Kind("string", _parse_exchange, optional=False)
_IFNAME = _Kind("interface", _pattern(r"[A-Za-z0-9_.-]{1,15}", "interface name"))
_IPV4 = _Kind("IPv4 address", _parse_ipv4)
_IPV6 = _Kind("IPv6 address", _parse_ipv6)
_NETWORKS = _Kind("network list", _parse_networks, _joined)
_TABLE = _Kind("table", _parse_table, optional=False)
_PROTOCOL = _Kind("integer", _parse_protocol, optional=False)
_MGMT = _Kind("endpoint", lambda text: str(parse_mgmt(text)))
_PORT = _Kind("port", lambda text: _parse_int(text, 1, 65535), optional=False)
_COUNT = _Kind("integer", lambda text: _parse_int(text, 1, 2**31 - 1), optional=False)
_PATH = _Kind("path", _parse_path)
_DURATION = _Kind("duration", _duration(allow_zero=False), _show_float, optional=False)
_DURATION_OR_ZERO = _Kind("duration", _duration(allow_zero=True), _show_float, optional=False)
_LISTEN = _Kind("host:port", lambda text: str(_parse_hostport(text)))
_LOG_LEVEL = _Kind("level", _parse_log_level, optional=False)
_NETNS = _Kind("netns", _pattern(r"[A-Za-z0-9_.-]{1,255}", "network namespace name"))
_GROUP = _Kind("group", _pattern(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", "group name"))


# --- the config -----------------------------------------------------------------------


def _meta(kind: _Kind, doc: str, unset: str = "unset") -> dict[str, Any]:
    """A key's metadata: its kind (parse/show), its one doc text, what None means."""
    return {"kind": kind, "doc": doc, "unset": unset}


def _hostname() -> str:
    return os.uname().nodename  # the same as socket.gethostname() on Linux


_RUN = pathlib.Path("/run/meshroute")


@dataclass(frozen=True)
class Config:
    """Everything an agent needs. Build it with :func:`load_config` (which validates);
    tests may construct it directly with typed values."""

    name: str = field(
        default_factory=_hostname,
        metadata=_meta(_NAME, "Agent name: names its queue and its broker user.", "host name"),
    )
    broker_url: tuple[str, ...] = field(
        default=("amqp://localhost:5672/%2F",),
        metadata=_meta(_URLS, "RabbitMQ URL(s), amqp:// or amqps://, tried in order."),
    )
    exchange: str = field(
        default="meshroute", metadata=_meta(_EXCHANGE, "The fanout exchange all agents share.")
    )
    mgmt_interface: str | None = field(
        default=None,
        metadata=_meta(_IFNAME, "Backbone interface (article key); gives the default next_hop."),
    )
    data_interface: str | None = field(
        default=None,
        metadata=_meta(_IFNAME, "OpenVPN's tun interface (article key); gives client_networks."),
    )
    next_hop: IPv4Address | None = field(
        default=None,
        metadata=_meta(
            _IPV4,
            "This agent's IPv4 next hop: peers route its clients via it.",
            "the IPv4 address of {mgmt_interface}, at start",
        ),
    )
    next_hop6: IPv6Address | None = field(
        default=None, metadata=_meta(_IPV6, "This agent's IPv6 next hop, for IPv6 clients.")
    )
    client_networks: tuple[Network, ...] = field(
        default=(),
        metadata=_meta(
            _NETWORKS,
            "Allow-list: only host routes inside these networks are installed.",
            "the networks of {data_interface}'s addresses, at start",
        ),
    )
    route_table: int = field(
        default=254, metadata=_meta(_TABLE, "Table for meshroute's routes (or main, local).")
    )
    route_protocol: int = field(
        default=201, metadata=_meta(_PROTOCOL, "Protocol number marking meshroute's routes.")
    )
    openvpn_mgmt: str | None = field(
        default=None,
        metadata=_meta(
            _MGMT,
            "OpenVPN management: host:port, [IPv6]:port or an absolute unix socket path.",
            "127.0.0.1:{openvpn_mgmt_port}",
        ),
    )
    openvpn_mgmt_port: int = field(
        default=7505,
        metadata=_meta(_PORT, "Management port on 127.0.0.1 if openvpn_mgmt is unset (article)."),
    )
    openvpn_mgmt_pass_file: pathlib.Path | None = field(
        default=None,
        metadata=_meta(_PATH, "Management interface password file (article key).", "none"),
    )
    announce_interval: float = field(
        default=5.0, metadata=_meta(_DURATION, "Interval of this agent's heartbeats.")
    )
    hold_time: float = field(
        default=15.0,
        metadata=_meta(_DURATION, "A peer silent this long is dead; >= 2 x announce_interval."),
    )
    status_poll_interval: float = field(
        default=10.0, metadata=_meta(_DURATION, "Interval of the OpenVPN `status 3` poll.")
    )
    resync_interval: float = field(
        default=30.0, metadata=_meta(_DURATION, "Interval of the full kernel route resync.")
    )
    sync_timeout: float = field(
        default=3.0,
        metadata=_meta(_DURATION_OR_ZERO, "How long a starting agent waits for snapshots."),
    )
    max_claims_per_peer: int = field(
        default=65536, metadata=_meta(_COUNT, "Most claims accepted from one peer.")
    )
    control_socket: pathlib.Path = field(
        default=_RUN / "meshroute.sock", metadata=_meta(_PATH, "Unix socket for the CLI.")
    )
    hook_socket: pathlib.Path = field(
        default=_RUN / "hook.sock", metadata=_meta(_PATH, "Unix socket for `meshroute hook`.")
    )
    hook_socket_group: str | None = field(
        default=None,
        metadata=_meta(
            _GROUP,
            "Group that may write to hook_socket (OpenVPN's `group` when it drops root).",
            "root only",
        ),
    )
    metrics_listen: str | None = field(
        default=None, metadata=_meta(_LISTEN, "Serve Prometheus metrics at host:port.", "off")
    )
    log_level: str = field(
        default="info", metadata=_meta(_LOG_LEVEL, "debug, info, warning or error.")
    )
    dataplane_netns: str | None = field(
        default=None,
        metadata=_meta(_NETNS, "Program routes in this named netns (tests, lab).", "own netns"),
    )
    tls_ca_file: pathlib.Path | None = field(
        default=None, metadata=_meta(_PATH, "CA bundle for amqps:// URLs.", "the system's CAs")
    )
    tls_cert_file: pathlib.Path | None = field(
        default=None, metadata=_meta(_PATH, "Client certificate for amqps:// URLs.")
    )
    tls_key_file: pathlib.Path | None = field(
        default=None, metadata=_meta(_PATH, "Key of tls_cert_file (give both or neither).")
    )

    def mgmt_endpoint(self) -> MgmtEndpoint:
        """Where the OpenVPN management interface is: a HostPort or a unix socket Path."""
        if self.openvpn_mgmt is None:
            return HostPort("127.0.0.1", self.openvpn_mgmt_port)
        return parse_mgmt(self.openvpn_mgmt)

    def metrics_endpoint(self) -> HostPort | None:
        """Where to serve metrics, or None when off."""
        return None if self.metrics_listen is None else _parse_hostport(self.metrics_listen)


KEYS: tuple[str, ...] = tuple(f.name for f in fields(Config))
_FIELDS = {f.name: f for f in fields(Config)}

# cube-routed's two-server keys: accepted (so Listing 4 loads) and answered.
LEGACY_KEYS: Mapping[str, str] = {
    "remote_mgmt_ip": "ignored: meshroute has no fixed remote server; peers are discovered "
    "over the RabbitMQ exchange (see broker_url, exchange)",
    "remote_data_ip": "ignored: next hops are not configured per remote server; each peer "
    "announces its own next_hop (default: the IPv4 address of its mgmt_interface)",
    "cube_routed_port": "ignored: meshroute listens on no port; agents talk through the "
    "broker (see broker_url, exchange)",
}


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config, the warnings met while loading it, and the file it came from."""

    config: Config
    warnings: tuple[str, ...] = ()
    source: str | None = None


# --- loading --------------------------------------------------------------------------

_Raw: TypeAlias = dict[str, tuple[str, str]]  # key -> (text, where it was set)


def load_config(
    path: str | os.PathLike | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | None] | None = None,
) -> LoadedConfig:
    """Load ``path`` (None: defaults only), then ``MESHROUTE_<KEY>`` from ``environ``
    (None: ``os.environ``), then ``overrides`` (key -> text, e.g. from CLI flags; None
    values are skipped so unset flags can be passed as they are).

    Raises :class:`ConfigError` listing every problem found."""
    problems: list[str] = []
    warnings: list[str] = []
    source = None if path is None else os.fspath(path)
    raw: _Raw = {}
    if source is not None:
        raw.update(_read_file(source, problems, warnings))
    raw.update(_read_env(os.environ if environ is None else environ, warnings))
    raw.update(_read_overrides(overrides or {}, problems, warnings))
    values, failed = _parse_all(raw, problems)
    config = replace(Config(), **values)
    where = {key: raw[key][1] for key in raw}
    if "name" not in raw:
        _check_default_name(config.name, problems)
    _check_relations(config, where, failed, problems)
    if problems:
        raise ConfigError(problems)
    _advise(config, where, source, warnings)
    return LoadedConfig(config, tuple(warnings), source)


def _read_file(path: str, problems: list[str], warnings: list[str]) -> _Raw:
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        problems.append(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}")
        return {}
    found: _Raw = {}
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        where = f"{path}:{lineno}"
        if not line or line.startswith("#"):
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        if line.startswith("["):
            problems.append(f"{where}: section headers are not used: write 'key = value' lines")
        elif not sep or not key:
            problems.append(f"{where}: expected 'key = value', got {line!r}")
        elif key in first_line:
            problems.append(f"{where}: {key}: duplicate key (lines {first_line[key]} and {lineno})")
        elif _known(key, where, problems, warnings, unknown_is_error=True):
            found[key] = (value, where)
            first_line[key] = lineno
    return found


def _read_env(environ: Mapping[str, str], warnings: list[str]) -> _Raw:
    found: _Raw = {}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        key = var[len(ENV_PREFIX) :].lower()
        where = f"environment {var}"
        if _known(key, where, [], warnings, unknown_is_error=False):
            found[key] = (environ[var].strip(), where)
    return found


def _read_overrides(overrides: Mapping[str, str | None], problems, warnings) -> _Raw:
    found: _Raw = {}
    for key, value in overrides.items():
        if value is not None and _known(key, "override", problems, warnings, True):
            found[key] = (str(value).strip(), "override")
    return found


def _known(key: str, where: str, problems, warnings, unknown_is_error: bool) -> bool:
    """True for a config key; answers cube-routed keys and unknown keys otherwise."""
    if key in _FIELDS:
        return True
    if key in LEGACY_KEYS:
        warnings.append(f"{where}: {key}: cube-routed key {LEGACY_KEYS[key]}")
    elif unknown_is_error:
        problems.append(f"{where}: {key}: unknown key{suggest_key(key)}")
    else:
        match = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.6)
        hint = f" (did you mean {ENV_PREFIX}{match[0].upper()}?)" if match else ""
        warnings.append(f"{where}: not a meshroute key, ignored{hint}")
    return False


def suggest_key(word: str) -> str:
    """' (did you mean hold_time?)' for a near miss, else ''."""
    match = difflib.get_close_matches(word.lower().replace("-", "_"), KEYS, n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def _parse_all(raw: _Raw, problems: list[str]) -> tuple[dict[str, Any], set[str]]:
    values: dict[str, Any] = {}
    failed: set[str] = set()
    for key, (text, where) in raw.items():
        kind = _FIELDS[key].metadata["kind"]
        try:
            if not text and not kind.optional:
                raise ValueError("empty value")
            values[key] = kind.parse(text) if text else _FIELDS[key].default
        except ValueError as exc:
            problems.append(f"{where}: {key}: {exc}")
            failed.add(key)
    return values, failed


def _check_default_name(name: str, problems: list[str]) -> None:
    try:
        _parse_name(name)
    except ValueError as exc:
        problems.append(f"default: name: the host name {exc}; set name")


def _check_relations(config: Config, where, failed: set[str], problems: list[str]) -> None:
    """Errors between keys, skipped when one of the keys already failed to parse."""

    def at(key: str) -> str:
        return where.get(key, "default")

    hold, announce = config.hold_time, config.announce_interval
    if not failed & {"hold_time", "announce_interval"} and hold < 2 * announce:
        problems.append(
            f"{at('hold_time')}: hold_time: {_show_float(hold)}s must be at least "
            f"2 x announce_interval ({_show_float(announce)}s, {at('announce_interval')}) "
            "so that one late announce does not expire a peer"
        )
    pair = ("tls_cert_file", "tls_key_file")
    given = [key for key in pair if getattr(config, key) is not None]
    if len(given) == 1 and not failed & set(pair):
        missing = next(key for key in pair if key not in given)
        problems.append(
            f"{at(given[0])}: {given[0]}: {missing} must be set too "
            "(tls_cert_file and tls_key_file come together)"
        )


def _advise(config: Config, where, source: str | None, warnings: list[str]) -> None:
    """Warnings: legal but probably not what was meant."""
    here = source or "config"
    notes = {
        "route_protocol": _protocol_note(config.route_protocol),
        "route_table": "the local table holds the kernel's own local routes"
        if config.route_table == 255
        else None,
        "openvpn_mgmt_port": "ignored because openvpn_mgmt is set"
        if config.openvpn_mgmt and "openvpn_mgmt_port" in where
        else None,
    }
    for key, note in notes.items():
        if note:
            warnings.append(f"{where.get(key, here)}: {key}: {note}")
    amqps = any(url.startswith("amqps://") for url in config.broker_url)
    for key in ("openvpn_mgmt_pass_file", "tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(config, key)
        if path is not None and not path.exists():
            warnings.append(f"{where[key]}: {key}: {path} does not exist (yet)")
        if path is not None and key.startswith("tls_") and not amqps:
            warnings.append(f"{where[key]}: {key}: unused: no broker_url is amqps://")
    hops = [(key, getattr(config, key)) for key in ("next_hop", "next_hop6")]
    for network in config.client_networks:
        if network.prefixlen == 0:
            warnings.append(f"{where['client_networks']}: client_networks: {network} allows all")
        for key, hop in hops:
            if hop is not None and hop.version == network.version and hop in network:
                warnings.append(f"{where[key]}: {key}: {hop} is inside client network {network}")
    if config.next_hop is None and config.mgmt_interface is None:
        warnings.append(
            f"{here}: next_hop: neither next_hop nor mgmt_interface is set: "
            "peers will have no next hop for this agent's clients"
        )
    if not config.client_networks and config.data_interface is None:
        warnings.append(
            f"{here}: client_networks: neither client_networks nor data_interface is set: "
            "no route will be installed"
        )


def _protocol_note(protocol: int) -> str | None:
    known = _REGISTERED_PROTOCOLS.get(protocol)
    return (
        f"{protocol} is registered to {known!r}: pick a number no other daemon uses"
        if known
        else None
    )


# --- output ---------------------------------------------------------------------------


def config_as_dict(config: Config, *, redact: bool = False) -> dict:
    """JSON-ready: addresses, networks and paths as strings, tuples as lists."""
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, tuple):
            out[f.name] = [_plain(f.name, item, redact) for item in value]
        else:
            out[f.name] = None if value is None else _plain(f.name, value, redact)
    return out


def _plain(key: str, value: object, redact: bool) -> object:
    if isinstance(value, int | float):
        return value
    return redact_url(str(value)) if redact and key == "broker_url" else str(value)


def format_config(config: Config, *, redact: bool = False) -> str:
    """The config as ``key = value`` lines that load back to an equal config; unset
    optional keys are comments saying what unset means. ``redact`` hides passwords."""
    lines = ["# meshroute effective configuration"]
    for f in fields(config):
        value = getattr(config, f.name)
        if value is None or value == ():
            lines.append(f"# {f.name} = ({unset_note(config, f.name)})")
            continue
        if redact and f.name == "broker_url":
            value = tuple(redact_url(url) for url in value)
        lines.append(f"{f.name} = {f.metadata['kind'].show(value)}")
    return "\n".join(lines) + "\n"


class _OrKeyName(dict):
    """Fills an unset note's {key}: the key's value, or the key's name when unset."""

    def __missing__(self, key: str) -> str:
        return key


def unset_note(config: Config | None, key: str) -> str:
    """What an unset key means, e.g. 'the IPv4 address of tun1, at start'."""
    values = {} if config is None else {k: getattr(config, k) for k in KEYS}
    known = _OrKeyName({k: v for k, v in values.items() if v is not None})
    return _FIELDS[key].metadata["unset"].format_map(known)


def key_reference() -> str:
    """The Markdown table of every key; docs/configuration.md embeds it verbatim."""
    rows = ["| Key | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
    for f in fields(Config):
        kind = f.metadata["kind"]
        if f.default is None or f.default == () or f.name == "name":
            default = f"({unset_note(None, f.name)})"
        else:
            default = f"`{kind.show(f.default)}`"
        rows.append(f"| `{f.name}` | {kind.type_name} | {default} | {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"


def check_command(path: str, as_json: bool) -> int:
    """``meshroute check CONFIG``: 0 and the effective config, or 2 and the errors."""
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if as_json:
        print(json.dumps(config_as_dict(loaded.config, redact=True), indent=2))
    else:
        print(format_config(loaded.config, redact=True), end="")
    return 0
