"""``meshroute agent``: build the real agent from a config file and run it.

The only place that knows the concrete implementations: pika bus, netlink
dataplane, OpenVPN management client, hook receiver, control socket, metrics.
Everything below it is injected.

Stopping (DESIGN rule 5: an agent stopping is not its clients leaving):

- SIGTERM, SIGINT: stop WITHOUT a goodbye, exit 0. Peers keep our claims for the
  hold time, so ``systemctl restart`` (or stop, upgrade, start) within it changes no
  route anywhere.
- SIGUSR1: the same, but exit 75 (EX_TEMPFAIL) so a supervisor starts us again
  (``RestartForceExitStatus=75``).
- ``meshroute leave`` (the control socket): say goodbye, then stop, exit 0. Every
  peer withdraws our clients' routes at once: for a server that leaves the mesh or
  whose OpenVPN is gone for good. It is the only way to withdraw at once, because
  it is the only stop that knows the clients are really gone.

Our own routes stay in the kernel on every kind of stop; a restarted agent adopts
them. SIGHUP re-reads the config and applies what can change without a restart
(log level and format, intervals, hold time, client networks, per-peer cap); other
changes are logged as needing a restart.

Under systemd (``Type=notify``) the agent sends READY=1 once it is connected and
synced, WATCHDOG=1 from its loop and a STATUS= line (:mod:`meshroute.agent.sdnotify`).

Exit codes: 0 stopped; 75 stopped for a restart; 2 bad usage or an interface not
found (may come later: retried); 77 permission denied (a file or socket the agent's
user cannot use); 78 configuration error. 77 and 78 will not fix themselves:
``RestartPreventExitStatus=77 78`` in the unit stops the restart loop.

Size (above 300 lines): it is the one place that knows every concrete implementation,
and the start, the signals, the reload and the exit codes are one sequence read top to
bottom; each step is a small function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from meshroute.agent.incarnation import load_claims, next_epoch, save_claims
from meshroute.agent.logformat import default_format, reconfigure_logging
from meshroute.agent.logformat import setup_logging as _setup_logging
from meshroute.agent.loop import Agent, LoopSettings
from meshroute.config.access import current_user, unreadable
from meshroute.config.schema import Config, ConfigError, HostPort, load_config
from meshroute.core.clock import SystemClock
from meshroute.core.engine import AgentCore, CoreSettings
from meshroute.core.local import Session
from meshroute.core.model import Address
from meshroute.dataplane.netinfo import InterfaceError, Resolved, resolve_defaults

log = logging.getLogger(__name__)

# After SIGUSR1 (stop for a restart): EX_TEMPFAIL, so a supervisor restarts the agent
# (systemd: RestartForceExitStatus=75 in deploy/systemd/meshroute-agent.service).
EXIT_RESTART = 75
EXIT_RETRY = 2  # an interface not there yet: worth retrying
EXIT_NOPERM = 77  # EX_NOPERM: retrying cannot help
EXIT_CONFIG = 78  # EX_CONFIG: retrying cannot help

RELOADABLE = (
    "log_level",
    "log_format",
    "announce_interval",
    "hold_time",
    "status_poll_interval",
    "resync_interval",
    "client_networks",
    "routed_networks",
    "max_claims_per_peer",
    "clock_offset_warning",
)


class StartError(Exception):
    """The agent cannot start; ``code`` is its exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def main(config_path: str | None, log_level: str | None = None) -> int:
    if config_path is not None and not _readable(config_path):
        return EXIT_NOPERM
    try:
        loaded = load_config(config_path, os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    config = loaded.config
    setup_logging(log_level or config.log_level, log_format(config))
    for warning in loaded.warnings:
        log.warning("config: %s", warning)
    try:
        check_files(config)
        resolved = resolve_defaults(config)
        gid = hook_gid(config)
        return run(config, resolved, gid, config_path, log_level)
    except StartError as exc:
        log.error("cannot start: %s", exc)
        return exc.code
    except InterfaceError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_RETRY


def _readable(path: str) -> bool:
    """False (and one line on stderr) when the config exists but this user may not read it."""
    try:
        with open(path, "rb"):
            return True
    except PermissionError:
        print(
            f"error: {path}: not readable by user {current_user()} (permission denied)",
            file=sys.stderr,
        )
        return False
    except OSError:
        return True  # missing and the like: load_config says it with the key context


def log_format(config: Config) -> str:
    return config.log_format or default_format(os.environ)


def setup_logging(level: str, kind: str = "text") -> None:
    _setup_logging(level, kind)


def check_files(config: Config) -> None:
    """Every file the agent reads later must be readable now, by this user."""
    problems, denied = unreadable(config, current_user())
    if problems:
        raise StartError("; ".join(problems), EXIT_NOPERM if denied else EXIT_CONFIG)


def core_settings(config: Config, resolved: Resolved) -> CoreSettings:
    return CoreSettings(
        name=config.name,
        hold_time=config.hold_time,
        announce_interval=config.announce_interval,
        sync_timeout=config.sync_timeout,
        client_networks=resolved.client_networks,
        routed_networks=config.routed_networks,
        max_claims_per_peer=config.max_claims_per_peer,
        next_hop=resolved.next_hop,
        next_hop6=resolved.next_hop6,
        max_clock_skew=config.max_clock_skew,
        clock_offset_warning=config.clock_offset_warning,
        backbone_networks=resolved.backbone_networks,
        reserved_hops=broker_addresses(config.broker_url),
    )


def broker_addresses(urls: Sequence[str]) -> tuple[Address, ...]:
    """The brokers' IP addresses named in the URLs: never a peer's next hop."""
    found: list[Address] = []
    for url in urls:
        host = urlsplit(url).hostname or ""
        with contextlib.suppress(ValueError):
            found.append(ipaddress.ip_address(host))
    return tuple(found)


def loop_settings(config: Config) -> LoopSettings:
    return LoopSettings(
        status_poll_interval=config.status_poll_interval,
        resync_interval=config.resync_interval,
        tick=min(0.1, config.announce_interval / 4),
    )


def status_source(config: Config, timings=None):
    """A callable that asks OpenVPN for ``status 3`` and returns the sessions.

    ``timings`` (a :class:`meshroute.core.telemetry.Histogram`) gets each poll's duration;
    it is written by the poller thread only."""
    from meshroute.openvpn.mgmt import (
        ManagementClient,
        MgmtEndpoint,
        MgmtError,
        read_password_file,
    )
    from meshroute.openvpn.status import parse_status, routed_subnets

    where = config.mgmt_endpoint()
    endpoint = (
        MgmtEndpoint.tcp(where.host, where.port)
        if isinstance(where, HostPort)
        else MgmtEndpoint.unix(where)
    )
    password_file = config.openvpn_mgmt_pass_file
    try:
        password = read_password_file(password_file) if password_file else None
    except MgmtError as exc:
        raise StartError(f"openvpn_mgmt_pass_file: {exc}", EXIT_CONFIG) from None
    client = ManagementClient(
        endpoint, password, timeout=max(1.0, min(5.0, config.status_poll_interval))
    )

    def fetch() -> Sequence[Session]:
        started = time.perf_counter()
        try:
            text = client.fetch_status()
        finally:
            if timings is not None:
                timings.observe(time.perf_counter() - started)
        report = parse_status(text)
        for problem in report.problems:
            log.warning("OpenVPN status from %s: %s", endpoint, problem)
        sessions = []
        for s in report.sessions:
            for address in (s.virtual_address, s.virtual_address6):
                if address is not None:
                    last_ref = report.last_ref.get(str(address))
                    sessions.append(Session(address, s.common_name, s.connected_since, last_ref))
        for subnet, s, last_ref in routed_subnets(report):  # iroute: docs/subnets.md
            sessions.append(Session(subnet, s.common_name, s.connected_since, last_ref))
        return sessions

    return fetch


def make_bus(config: Config, agent_name: str):
    from meshroute.bus.amqp import AmqpBus, TlsSettings

    tls = None
    if config.tls_ca_file or config.tls_cert_file:
        tls = TlsSettings(
            ca_file=config.tls_ca_file,
            cert_file=config.tls_cert_file,
            key_file=config.tls_key_file,
        )
    return AmqpBus(config.broker_url, agent_name, config.exchange, tls=tls)


def run(
    config: Config,
    resolved: Resolved,
    hook_group: int | None,
    config_path: str | None,
    log_level: str | None,
) -> int:
    from meshroute.agent.sdnotify import Notifier, Watchdog
    from meshroute.dataplane import heap
    from meshroute.dataplane.netlink import NetlinkDataplane

    heap.tune()  # process-wide: the allocator gives big freed blocks back (heap's doc)
    clock = SystemClock()
    epoch = next_epoch(config.state_dir, clock.wall_ms(), config.name)
    core = AgentCore(core_settings(config, resolved), epoch=epoch, wall_clock=clock.wall_ms)
    core.remember(load_claims(config.state_dir, config.name))
    dataplane = NetlinkDataplane(config.route_table, config.route_protocol, config.dataplane_netns)
    agent = Agent(
        core,
        bus=make_bus(config, config.name),
        dataplane=dataplane,
        status_source=lambda: [],
        clock=clock,
        settings=loop_settings(config),
        keep_claims=lambda records: save_claims(config.state_dir, config.name, records),
    )
    agent.status_source = status_source(config, agent.stats.poll_seconds)
    notifier = Notifier()
    agent.on_iteration = Watchdog(
        notifier, lambda: is_ready(agent), lambda: describe(agent), clock.monotonic
    )
    hooks, control = _open_sockets(config, agent, hook_group)
    try:
        _serve_metrics(config, agent)
        restart = _install_signals(agent, _reloader(agent, config, config_path, log_level))
        agent.run()
    finally:
        notifier.send(stopping="1")
        hooks.close()
        control.close()
        dataplane.close()
    return _exit_code(agent, config.name, restart)


def _serve_metrics(config: Config, agent: Agent) -> None:
    endpoint = config.metrics_endpoint()
    if endpoint is None:
        return
    from meshroute.agent.metrics import serve_metrics

    try:
        serve_metrics(agent, endpoint.host, endpoint.port)
    except OSError as exc:  # the port in use, or a privileged port
        code = EXIT_NOPERM if _denied(exc) else EXIT_CONFIG
        raise StartError(f"metrics_listen: {config.metrics_listen}: {exc}", code) from None


def _open_sockets(config: Config, agent: Agent, hook_group: int | None):
    from meshroute.control import ControlServer
    from meshroute.openvpn.hook_receiver import HookReceiver, HookReceiverError

    try:
        hooks = HookReceiver(config.hook_socket, agent.on_hook, gid=hook_group)
    except HookReceiverError as exc:
        code = EXIT_NOPERM if _denied(exc.__cause__) else EXIT_CONFIG
        raise StartError(f"hook_socket: {exc}", code) from None
    agent.stats.hooks = hooks.stats
    try:
        control = ControlServer(config.control_socket, control_answer(agent))
    except OSError as exc:
        hooks.close()
        code = EXIT_NOPERM if _denied(exc) else EXIT_CONFIG
        raise StartError(f"control_socket: {config.control_socket}: {exc}", code) from None
    return hooks, control


def _denied(exc: BaseException | None) -> bool:
    return isinstance(exc, PermissionError)


def control_answer(agent: Agent):
    """The control socket's commands: the agent's views, and ``leave``."""

    def answer(cmd: str) -> dict:
        if cmd == "leave":
            agent.leave()
            return {"schema": 1, "agent": agent.core.name, "leaving": True}
        return agent.query(cmd)

    return answer


def _install_signals(agent: Agent, reload) -> dict[str, bool]:
    restart = {"requested": False}

    def for_restart(*_: object) -> None:
        restart["requested"] = True
        agent.request_stop()

    signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
    signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
    signal.signal(signal.SIGUSR1, for_restart)
    signal.signal(signal.SIGHUP, lambda *_: agent.call_soon(reload))
    return restart


def _exit_code(agent: Agent, name: str, restart: dict[str, bool]) -> int:
    if agent.left:
        log.info("agent %s left: said goodbye and stopped", name)
        return 0
    if restart["requested"]:
        log.info("agent %s stopped for a restart, no goodbye (exit %d)", name, EXIT_RESTART)
        return EXIT_RESTART
    log.info("agent %s stopped, no goodbye (peers keep its clients for the hold time)", name)
    return 0


def is_ready(agent: Agent) -> bool:
    """READY=1 for systemd: connected to the broker and past the start-up sync."""
    return bool(agent.bus.connected) and agent.core.synced


def describe(agent: Agent) -> str:
    """One line for ``systemctl status`` (STATUS=)."""
    table = agent.core.table
    if not agent.bus.connected:
        state = "broker not connected (frozen: nobody expires)"
    elif not agent.core.synced:
        state = "connected, learning the peers' state"
    else:
        state = "connected"
    routes = len(agent.mirror.installed)
    return (
        f"{state}; {len(table.peers)} peer(s), {len(table.local)} local claim(s), {routes} route(s)"
    )


def hook_gid(config: Config) -> int | None:
    """The group allowed to write to the hook socket (OpenVPN after it drops root)."""
    if config.hook_socket_group is None:
        return None
    import grp

    try:
        return grp.getgrnam(config.hook_socket_group).gr_gid
    except KeyError:
        raise StartError(
            f"hook_socket_group: no group {config.hook_socket_group!r}", EXIT_CONFIG
        ) from None


def _reloader(agent: Agent, current: Config, config_path: str | None, log_level: str | None):
    state = {"config": current}

    def reload() -> None:
        try:
            new = load_config(config_path, os.environ).config
            resolved = resolve_defaults(new)
        except (ConfigError, InterfaceError) as exc:
            log.error("SIGHUP: config not reloaded: %s", exc)
            return
        old = state["config"]
        fixed = [
            f.name
            for f in dataclasses.fields(Config)
            if f.name not in RELOADABLE and getattr(old, f.name) != getattr(new, f.name)
        ]
        if fixed:
            log.warning("SIGHUP: %s changed; that needs a restart", ", ".join(fixed))
        reconfigure_logging(log_level or new.log_level, log_format(new))
        agent.reconfigure(
            dataclasses.replace(
                agent.core.settings,
                hold_time=new.hold_time,
                announce_interval=new.announce_interval,
                client_networks=resolved.client_networks,
                routed_networks=new.routed_networks,
                max_claims_per_peer=new.max_claims_per_peer,
            ),
            loop_settings(new),
        )
        # What needs a restart keeps its running value, so the next SIGHUP warns again.
        state["config"] = dataclasses.replace(old, **{k: getattr(new, k) for k in RELOADABLE})
        log.info("SIGHUP: config reloaded from %s", config_path)

    return reload
