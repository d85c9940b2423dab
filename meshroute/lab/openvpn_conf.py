"""Render OpenVPN 2.6 server and client configs for the lab and the tests (pure).

The lab's servers share ONE client subnet. Each server:

- has its own tun address in that subnet (unique across servers), and
- hands out addresses from its own DISJOINT pool (``ifconfig-pool START END``).

So the ``server NET MASK`` helper is not used (it would give every server the same
``.1`` address and the whole subnet as pool); its expansion is written out instead:
``mode server``, ``tls-server``, ``topology subnet``, ``ifconfig``, ``ifconfig-pool``,
``push "topology subnet"``, ``push "route-gateway ..."``. For IPv6,
``ifconfig-ipv6-pool`` follows the IPv4 pool's offsets (OpenVPN's rule), so giving
every server the pool start ``net6 + (pool_start - net4)`` makes a client's IPv6
host part equal its IPv4 host part and keeps the IPv6 pools disjoint too.

Hooks are either meshroute's OpenVPN plugin (:class:`PluginHook`, one ``plugin``
line; no process per event) or the script hooks (:class:`HookCommand`, the
fallback); :func:`choose_hook` picks one (``plugin`` when the ``.so`` is built).
Paths are absolute; OpenVPN splits a script command at spaces, so paths with spaces
or quotes are refused rather than quoted.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass, field
from pathlib import Path

from meshroute.openvpn import hook as hook_module
from meshroute.openvpn.mgmt import MgmtEndpoint
from meshroute.openvpn.plugin import find_plugin

HOOK_FORMS = ("auto", "plugin", "script")


@dataclass(frozen=True)
class PoolPlan:
    """One server's share of the client subnet."""

    server_address: ipaddress.IPv4Address
    pool_start: ipaddress.IPv4Address
    pool_end: ipaddress.IPv4Address
    server_address6: ipaddress.IPv6Address | None = None
    pool_start6: ipaddress.IPv6Address | None = None


def plan_pools(
    network: ipaddress.IPv4Network,
    count: int,
    network6: ipaddress.IPv6Network | None = None,
    first_pool_offset: int = 16,
) -> list[PoolPlan]:
    """Server i gets address ``net+1+i`` and an equal slice of ``net+first_pool_offset..``."""
    hosts = network.num_addresses - 2
    if count < 1 or count >= first_pool_offset or first_pool_offset >= hosts:
        raise ValueError(
            f"cannot fit {count} servers in {network} (pools from +{first_pool_offset})"
        )
    size = (hosts - first_pool_offset + 1) // count
    if size < 1:
        raise ValueError(f"{network} is too small for {count} pools")
    plans = []
    for i in range(count):
        start = network.network_address + first_pool_offset + i * size
        plans.append(
            PoolPlan(
                server_address=network.network_address + 1 + i,
                pool_start=start,
                pool_end=start + size - 1,
                server_address6=network6.network_address + 1 + i if network6 else None,
                pool_start6=(
                    network6.network_address + (int(start) - int(network.network_address))
                    if network6
                    else None
                ),
            )
        )
    return plans


@dataclass(frozen=True)
class HookCommand:
    """How OpenVPN runs the hook: ``EXE hook --socket S EVENT`` (the console script), or
    with ``script`` set, ``EXE -S SCRIPT --socket S EVENT`` (EXE a Python interpreter,
    SCRIPT meshroute/openvpn/hook.py): no site-packages, about twice as fast.
    """

    executable: Path
    socket: Path
    script: Path | None = None

    @classmethod
    def fast(cls, socket: Path, python: Path | None = None) -> HookCommand:
        """The ``python -S hook.py`` form for this installation's hook module."""
        return cls(Path(python or sys.executable), socket, Path(hook_module.__file__))

    def command(self, event: str) -> str:
        parts = [self.executable, self.socket, *([self.script] if self.script else [])]
        for part in parts:
            _check_word(str(part))
            if not Path(part).is_absolute():
                raise ValueError(f"hook paths must be absolute: {part}")
        program = (
            f"{self.executable} -S {self.script}" if self.script else f"{self.executable} hook"
        )
        return f"{program} --socket {self.socket} {event}"


@dataclass(frozen=True)
class PluginHook:
    """``plugin SO SOCKET``: meshroute's OpenVPN plugin sends the events from inside
    OpenVPN (microseconds per event, no process; see meshroute/openvpn/plugin/)."""

    library: Path
    socket: Path

    def line(self) -> str:
        for part in (self.library, self.socket):
            _check_word(str(part))
            if not Path(part).is_absolute():
                raise ValueError(f"plugin paths must be absolute: {part}")
        return f"plugin {self.library} {self.socket}"


def choose_hook(form: str, socket: Path, plugin: Path | None = None) -> PluginHook | HookCommand:
    """``plugin`` (an error if the .so is not built), ``script`` (the ``python -S``
    script hooks) or ``auto``: the plugin when it is built, else the scripts."""
    if form not in HOOK_FORMS:
        raise ValueError(f"hook form must be one of {', '.join(HOOK_FORMS)}, not {form!r}")
    library = plugin or find_plugin()
    if form == "plugin" and library is None:
        raise ValueError(
            "the OpenVPN plugin is not built: run `make -C meshroute/openvpn/plugin` "
            "(.ci/install does), or use the script hooks"
        )
    if form == "script" or library is None:
        return HookCommand.fast(socket)
    return PluginHook(library, socket)


@dataclass(frozen=True)
class ServerConf:
    """One lab OpenVPN server. ``network`` is the shared client subnet."""

    name: str
    dev: str
    port: int
    network: ipaddress.IPv4Network
    pool: PoolPlan
    ca: Path
    cert: Path
    key: Path
    management: MgmtEndpoint
    management_password_file: Path | None = None
    tls_crypt: Path | None = None
    network6: ipaddress.IPv6Network | None = None
    hook: HookCommand | PluginHook | None = None
    local: str | None = None
    proto: str = "udp"
    keepalive: tuple[int, int] = (10, 60)
    status_file: Path | None = None
    log_file: Path | None = None
    dco: bool = False
    verb: int = 3
    extra: tuple[str, ...] = field(default=())


def render_server_config(conf: ServerConf) -> str:
    """The server config file text (one directive per line)."""
    pool = conf.pool
    lines = [
        f"# meshroute lab server {conf.name}",
        "mode server",
        "tls-server",
        f"proto {conf.proto}",
        f"port {conf.port}",
        *([f"local {conf.local}"] if conf.local else []),
        f"dev {conf.dev}",
        "dev-type tun",
        "topology subnet",
        f"ifconfig {pool.server_address} {conf.network.netmask}",
        f"ifconfig-pool {pool.pool_start} {pool.pool_end}",
        'push "topology subnet"',
        f'push "route-gateway {pool.server_address}"',
        *_ipv6_lines(conf),
        f"ca {conf.ca}",
        f"cert {conf.cert}",
        f"key {conf.key}",
        "dh none",
        "remote-cert-tls client",
        *([f"tls-crypt {conf.tls_crypt}"] if conf.tls_crypt else []),
        f"keepalive {conf.keepalive[0]} {conf.keepalive[1]}",
        _management_line(conf.management, conf.management_password_file),
        *_hook_lines(conf.hook),
        *([f"status {conf.status_file} 1", "status-version 3"] if conf.status_file else []),
        *([f"log {conf.log_file}"] if conf.log_file else []),
        *([] if conf.dco else ["disable-dco"]),
        "persist-key",
        f"verb {conf.verb}",
        *conf.extra,
    ]
    return "\n".join(lines) + "\n"


def _ipv6_lines(conf: ServerConf) -> list[str]:
    pool, net6 = conf.pool, conf.network6
    if net6 is None:
        return []
    if pool.server_address6 is None or pool.pool_start6 is None:
        raise ValueError(f"server {conf.name}: network6 given but the pool plan has no IPv6")
    # The second ifconfig-ipv6 argument (the "remote") is unused in server mode but
    # required by the syntax; the server's own address is a harmless placeholder.
    return [
        f"ifconfig-ipv6 {pool.server_address6}/{net6.prefixlen} {pool.server_address6}",
        f"ifconfig-ipv6-pool {pool.pool_start6}/{net6.prefixlen}",
        "push tun-ipv6",
    ]


def _management_line(endpoint: MgmtEndpoint, password_file: Path | None) -> str:
    password = f" {password_file}" if password_file else ""
    if endpoint.kind == "unix":
        _check_word(endpoint.path or "")
        return f"management {endpoint.path} unix{password}"
    return f"management {endpoint.host} {endpoint.port}{password}"


def _hook_lines(hook: HookCommand | PluginHook | None) -> list[str]:
    if hook is None:
        return []
    if isinstance(hook, PluginHook):
        return [hook.line()]
    return [
        "script-security 2",
        f'learn-address "{hook.command("learn-address")}"',
        f'client-connect "{hook.command("client-connect")}"',
        f'client-disconnect "{hook.command("client-disconnect")}"',
    ]


@dataclass(frozen=True)
class ClientConf:
    """One lab client. ``remotes`` are (host, port) of the servers it may use."""

    name: str
    dev: str
    remotes: tuple[tuple[str, int], ...]
    ca: Path
    cert: Path
    key: Path
    tls_crypt: Path | None = None
    proto: str = "udp"
    remote_random: bool = False
    connect_retry: int = 1
    log_file: Path | None = None
    dco: bool = False
    verb: int = 3
    extra: tuple[str, ...] = field(default=())


def render_client_config(conf: ClientConf) -> str:
    """The client config file text."""
    if not conf.remotes:
        raise ValueError(f"client {conf.name}: no remote server")
    lines = [
        f"# meshroute lab client {conf.name}",
        "tls-client",
        "pull",
        f"proto {conf.proto}",
        f"dev {conf.dev}",
        "dev-type tun",
        *[f"remote {host} {port}" for host, port in conf.remotes],
        *(["remote-random"] if conf.remote_random else []),
        "nobind",
        f"connect-retry {conf.connect_retry} {conf.connect_retry}",
        f"ca {conf.ca}",
        f"cert {conf.cert}",
        f"key {conf.key}",
        "remote-cert-tls server",
        *([f"tls-crypt {conf.tls_crypt}"] if conf.tls_crypt else []),
        # Tell the server at once when the client stops (UDP has no FIN), so its
        # client-disconnect runs now instead of after ping-restart.
        *(["explicit-exit-notify 1"] if conf.proto.startswith("udp") else []),
        *([f"log {conf.log_file}"] if conf.log_file else []),
        *([] if conf.dco else ["disable-dco"]),
        f"verb {conf.verb}",
        *conf.extra,
    ]
    return "\n".join(lines) + "\n"


def _check_word(text: str) -> None:
    if not text or any(ch in text for ch in " \t\n\"'\\"):
        raise ValueError(f"path must be non-empty without spaces or quotes: {text!r}")
