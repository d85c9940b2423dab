"""Configuration: one frozen dataclass, loaded from file -> environment -> overrides.

The file format is cube-routed's (the article's Listing 4): ``key = value`` lines, no
section header, whole-line ``#`` comments and blank lines. Every key is a field of
:class:`Config`, typed, defaulted and documented once in the field's metadata
(``doc``); ``docs/configuration.md`` and ``meshroute check`` reuse those texts.
Each key's parser lives in :mod:`meshroute.config.values`; reading the file, the
environment and the overrides in :mod:`meshroute.config.sources`. This module layers the
sources, names where each problem was found, checks keys against each other and
writes the config back out.

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

Size (above 300 lines): the Config dataclass is the documented list of every key (its
field metadata is the text of docs/configuration.md): a third of the file is that one
list. Parsers live in values.py, sources in sources.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from meshroute.config.sources import ENV_PREFIX as ENV_PREFIX  # re-exported: was defined here
from meshroute.config.sources import LEGACY_KEYS as LEGACY_KEYS  # re-exported, likewise
from meshroute.config.sources import Raw, read_env, read_file, read_overrides
from meshroute.config.sources import suggest_key as _suggest_key
from meshroute.config.values import (
    COUNT,
    DURATION,
    DURATION_OR_ZERO,
    EXCHANGE,
    GROUP,
    IFNAME,
    IPV4,
    IPV6,
    LISTEN,
    LOG_FORMAT,
    LOG_LEVEL,
    MGMT,
    NAME,
    NETNS,
    NETWORKS,
    PATH,
    PORT,
    PROTOCOL,
    TABLE,
    URLS,
    HostPort,
    Kind,
    MgmtEndpoint,
    parse_hostport,
    parse_mgmt,
    parse_name,
    protocol_note,
    redact_url,
    show_float,
)
from meshroute.core.model import Network


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__(*self.problems)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        return f"{len(self.problems)} configuration problems:\n  " + "\n  ".join(self.problems)


# --- the config -----------------------------------------------------------------------


def _meta(kind: Kind, doc: str, unset: str = "unset") -> dict[str, Any]:
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
        metadata=_meta(NAME, "Agent name: names its queue and its broker user.", "host name"),
    )
    broker_url: tuple[str, ...] = field(
        default=("amqp://localhost:5672/%2F",),
        metadata=_meta(URLS, "RabbitMQ URL(s), amqp:// or amqps://, tried in order."),
    )
    exchange: str = field(
        default="meshroute", metadata=_meta(EXCHANGE, "The fanout exchange all agents share.")
    )
    mgmt_interface: str | None = field(
        default=None,
        metadata=_meta(IFNAME, "Backbone interface (article key); gives the default next_hop."),
    )
    data_interface: str | None = field(
        default=None,
        metadata=_meta(IFNAME, "OpenVPN's tun interface (article key); gives client_networks."),
    )
    next_hop: IPv4Address | None = field(
        default=None,
        metadata=_meta(
            IPV4,
            "This agent's IPv4 next hop: peers route its clients via it.",
            "the IPv4 address of {mgmt_interface}, at start",
        ),
    )
    next_hop6: IPv6Address | None = field(
        default=None, metadata=_meta(IPV6, "This agent's IPv6 next hop, for IPv6 clients.")
    )
    client_networks: tuple[Network, ...] = field(
        default=(),
        metadata=_meta(
            NETWORKS,
            "Allow-list: only host routes inside these networks are installed.",
            "the networks of {data_interface}'s addresses, at start",
        ),
    )
    routed_networks: tuple[Network, ...] = field(
        default=(),
        metadata=_meta(
            NETWORKS,
            "Allow-list for subnets behind clients (OpenVPN iroute): only subnets inside "
            "these networks are announced and installed; empty: none (docs/subnets.md).",
        ),
    )
    backbone_networks: tuple[Network, ...] = field(
        default=(),
        metadata=_meta(
            NETWORKS,
            "Where peers' next hops must lie; a hop elsewhere is refused (no route toward it).",
            "the networks of {mgmt_interface}'s addresses, at start (unchecked without it)",
        ),
    )
    route_table: int = field(
        default=254, metadata=_meta(TABLE, "Table for meshroute's routes (or main, local).")
    )
    route_protocol: int = field(
        default=201, metadata=_meta(PROTOCOL, "Protocol number marking meshroute's routes.")
    )
    openvpn_mgmt: str | None = field(
        default=None,
        metadata=_meta(
            MGMT,
            "OpenVPN management: host:port, [IPv6]:port or an absolute unix socket path.",
            "127.0.0.1:{openvpn_mgmt_port}",
        ),
    )
    openvpn_mgmt_port: int = field(
        default=7505,
        metadata=_meta(PORT, "Management port on 127.0.0.1 if openvpn_mgmt is unset (article)."),
    )
    openvpn_mgmt_pass_file: pathlib.Path | None = field(
        default=None,
        metadata=_meta(PATH, "Management interface password file (article key).", "none"),
    )
    # The heartbeat interval (a heartbeat is the periodic announce): the key keeps
    # its name, since a renamed key would break every deployed config file.
    announce_interval: float = field(
        default=5.0, metadata=_meta(DURATION, "Interval of this agent's heartbeats.")
    )
    hold_time: float = field(
        default=15.0,
        metadata=_meta(DURATION, "A peer silent this long is dead; >= 2 x announce_interval."),
    )
    status_poll_interval: float = field(
        default=10.0, metadata=_meta(DURATION, "Interval of the OpenVPN `status 3` poll.")
    )
    resync_interval: float = field(
        default=30.0, metadata=_meta(DURATION, "Interval of the full kernel route resync.")
    )
    sync_timeout: float = field(
        default=3.0,
        metadata=_meta(DURATION_OR_ZERO, "How long a starting agent waits for snapshots."),
    )
    max_claims_per_peer: int = field(
        default=65536, metadata=_meta(COUNT, "Most claims accepted from one peer.")
    )
    max_clock_skew: float = field(
        default=300.0,
        metadata=_meta(
            DURATION,
            "Bound on peers' clocks: stamps/epochs further ahead than 2x this are refused.",
        ),
    )
    clock_offset_warning: float = field(
        default=1.0,
        metadata=_meta(DURATION, "health warns when a peer's clock is off by more than this."),
    )
    state_dir: pathlib.Path = field(
        default=pathlib.Path("/var/lib/meshroute"),
        metadata=_meta(PATH, "Where the agent keeps its epoch (so it never goes back)."),
    )
    control_socket: pathlib.Path = field(
        default=_RUN / "meshroute.sock", metadata=_meta(PATH, "Unix socket for the CLI.")
    )
    hook_socket: pathlib.Path = field(
        default=_RUN / "hook.sock", metadata=_meta(PATH, "Unix socket for `meshroute hook`.")
    )
    hook_socket_group: str | None = field(
        default=None,
        metadata=_meta(
            GROUP,
            "Group that may write to hook_socket (OpenVPN's `group` when it drops root).",
            "root only",
        ),
    )
    metrics_listen: str | None = field(
        default=None, metadata=_meta(LISTEN, "Serve Prometheus metrics at host:port.", "off")
    )
    log_level: str = field(
        default="info", metadata=_meta(LOG_LEVEL, "debug, info, warning or error.")
    )
    log_format: str | None = field(
        default=None,
        metadata=_meta(
            LOG_FORMAT,
            "Log lines: text, journal (syslog priority prefixes for journald) or json.",
            "journal when $JOURNAL_STREAM is set (under systemd), else text",
        ),
    )
    dataplane_netns: str | None = field(
        default=None,
        metadata=_meta(NETNS, "Program routes in this named netns (tests, lab).", "own netns"),
    )
    tls_ca_file: pathlib.Path | None = field(
        default=None, metadata=_meta(PATH, "CA bundle for amqps:// URLs.", "the system's CAs")
    )
    tls_cert_file: pathlib.Path | None = field(
        default=None, metadata=_meta(PATH, "Client certificate for amqps:// URLs.")
    )
    tls_key_file: pathlib.Path | None = field(
        default=None, metadata=_meta(PATH, "Key of tls_cert_file (give both or neither).")
    )

    def mgmt_endpoint(self) -> MgmtEndpoint:
        """Where the OpenVPN management interface is: a HostPort or a unix socket Path."""
        if self.openvpn_mgmt is None:
            return HostPort("127.0.0.1", self.openvpn_mgmt_port)
        return parse_mgmt(self.openvpn_mgmt)

    def metrics_endpoint(self) -> HostPort | None:
        """Where to serve metrics, or None when off."""
        return None if self.metrics_listen is None else parse_hostport(self.metrics_listen)


KEYS: tuple[str, ...] = tuple(f.name for f in fields(Config))
_FIELDS = {f.name: f for f in fields(Config)}


def suggest_key(word: str) -> str:
    """' (did you mean hold_time?)' for a near miss, else ''."""
    return _suggest_key(word, KEYS)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config, the warnings met while loading it, and the file it came from."""

    config: Config
    warnings: tuple[str, ...] = ()
    source: str | None = None


# --- loading --------------------------------------------------------------------------


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
    raw: Raw = {}
    if source is not None:
        raw.update(read_file(source, KEYS, problems, warnings))
    raw.update(read_env(os.environ if environ is None else environ, KEYS, warnings))
    raw.update(read_overrides(overrides or {}, KEYS, problems, warnings))
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


def _parse_all(raw: Raw, problems: list[str]) -> tuple[dict[str, Any], set[str]]:
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
        parse_name(name)
    except ValueError as exc:
        problems.append(f"default: name: the host name {exc}; set name")


def _check_relations(config: Config, where, failed: set[str], problems: list[str]) -> None:
    """Errors between keys, skipped when one of the keys already failed to parse."""

    def at(key: str) -> str:
        return where.get(key, "default")

    hold, announce = config.hold_time, config.announce_interval
    if not failed & {"hold_time", "announce_interval"} and hold < 2 * announce:
        problems.append(
            f"{at('hold_time')}: hold_time: {show_float(hold)}s must be at least "
            f"2 x announce_interval ({show_float(announce)}s, {at('announce_interval')}) "
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
        "route_protocol": protocol_note(config.route_protocol),
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
    for network in config.routed_networks:
        for other in (*config.client_networks, *config.backbone_networks):
            if network.version == other.version and network.overlaps(other):
                warnings.append(
                    f"{where['routed_networks']}: routed_networks: {network} overlaps {other}: "
                    "no subnet overlapping it will be accepted"
                )
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


def check_command(path: str, as_json: bool, backbone_openvpn: str | None = None) -> int:
    """``meshroute check CONFIG``: 0 and the effective config, or 2 and the errors.
    ``backbone_openvpn``: the backbone's OpenVPN config, to warn about a form that
    cannot carry meshroute's routes (see netinfo.backbone_warnings)."""
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    warnings = list(loaded.warnings)
    if backbone_openvpn:
        from meshroute.dataplane import netinfo

        try:
            backbone = netinfo.read_openvpn_backbone(backbone_openvpn)
        except OSError as exc:
            print(f"error: --backbone-openvpn {backbone_openvpn}: {exc}", file=sys.stderr)
            return 2
        ifname = loaded.config.mgmt_interface
        kind = netinfo.interface_kind(ifname) if ifname else None
        warnings += netinfo.backbone_warnings(ifname, kind, backbone)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if as_json:
        print(json.dumps(config_as_dict(loaded.config, redact=True), indent=2))
    else:
        print(format_config(loaded.config, redact=True), end="")
    return 0
