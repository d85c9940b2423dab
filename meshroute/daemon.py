"""``meshroute agent``: build the real agent from a config file and run it.

The only place that knows the concrete implementations: pika bus, netlink
dataplane, OpenVPN management client, hook receiver, control socket, metrics.
Everything below it is injected.

Signals: SIGTERM and SIGINT stop cleanly with a goodbye (peers withdraw our
clients' routes at once). SIGUSR1 stops for a restart, without a goodbye, and exits
75: peers keep our claims for the hold time, so a restart within it changes no
route. Our own routes stay in the kernel either way; a restarted agent adopts them.
SIGHUP re-reads the config and applies what can change without a restart (log
level, intervals, hold time, client networks, per-peer cap); other changes are
logged as needing a restart.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Sequence

from meshroute.agent import Agent, LoopSettings
from meshroute.clock import SystemClock
from meshroute.config import Config, ConfigError, HostPort, load_config
from meshroute.core import AgentCore, CoreSettings
from meshroute.local import Session
from meshroute.netinfo import InterfaceError, Resolved, resolve_defaults

log = logging.getLogger(__name__)

# After SIGUSR1 (stop for a restart): EX_TEMPFAIL, so a supervisor restarts the agent
# (systemd: RestartForceExitStatus=75 in deploy/systemd/meshroute-agent.service).
EXIT_RESTART = 75

RELOADABLE = ("log_level", "announce_interval", "hold_time", "status_poll_interval",
              "resync_interval", "client_networks", "max_claims_per_peer")  # fmt: skip


def main(config_path: str | None, log_level: str | None = None) -> int:
    try:
        loaded = load_config(config_path, os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = loaded.config
    setup_logging(log_level or config.log_level)
    for warning in loaded.warnings:
        log.warning("config: %s", warning)
    try:
        resolved = resolve_defaults(config)
        gid = hook_gid(config)
    except InterfaceError as exc:
        log.error("cannot start: %s", exc)
        return 2
    return run(config, resolved, gid, config_path, log_level)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # pika logs every failed connection attempt at ERROR; the bus logs the same
    # events once, with the agent's words, so pika speaks only when debugging.
    logging.getLogger("pika").setLevel(logging.DEBUG if level == "debug" else logging.CRITICAL)


def core_settings(config: Config, resolved: Resolved) -> CoreSettings:
    return CoreSettings(
        name=config.name,
        hold_time=config.hold_time,
        announce_interval=config.announce_interval,
        sync_timeout=config.sync_timeout,
        client_networks=resolved.client_networks,
        max_claims_per_peer=config.max_claims_per_peer,
        next_hop=resolved.next_hop,
        next_hop6=resolved.next_hop6,
    )


def loop_settings(config: Config) -> LoopSettings:
    return LoopSettings(
        status_poll_interval=config.status_poll_interval,
        resync_interval=config.resync_interval,
        tick=min(0.1, config.announce_interval / 4),
    )


def status_source(config: Config):
    """A callable that asks OpenVPN for ``status 3`` and returns the sessions."""
    from meshroute.openvpn.mgmt import ManagementClient, MgmtEndpoint, read_password_file
    from meshroute.openvpn.status import parse_status

    where = config.mgmt_endpoint()
    endpoint = (
        MgmtEndpoint.tcp(where.host, where.port)
        if isinstance(where, HostPort)
        else MgmtEndpoint.unix(where)
    )
    password_file = config.openvpn_mgmt_pass_file
    client = ManagementClient(
        endpoint,
        read_password_file(password_file) if password_file else None,
        timeout=max(1.0, min(5.0, config.status_poll_interval)),
    )

    def fetch() -> Sequence[Session]:
        report = parse_status(client.fetch_status())
        for problem in report.problems:
            log.warning("OpenVPN status from %s: %s", endpoint, problem)
        sessions = []
        for s in report.sessions:
            for address in (s.virtual_address, s.virtual_address6):
                if address is not None:
                    last_ref = report.last_ref.get(str(address))
                    sessions.append(Session(address, s.common_name, s.connected_since, last_ref))
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
    from meshroute.control import ControlServer
    from meshroute.dataplane.netlink import NetlinkDataplane
    from meshroute.openvpn.hook_receiver import HookReceiver

    clock = SystemClock()
    core = AgentCore(
        core_settings(config, resolved), epoch=clock.wall_ms(), wall_clock=clock.wall_ms
    )
    dataplane = NetlinkDataplane(config.route_table, config.route_protocol, config.dataplane_netns)
    agent = Agent(
        core,
        bus=make_bus(config, config.name),
        dataplane=dataplane,
        status_source=status_source(config),
        clock=clock,
        settings=loop_settings(config),
    )
    hooks = HookReceiver(config.hook_socket, agent.on_hook, gid=hook_group)
    control = ControlServer(config.control_socket, agent.query)
    metrics = config.metrics_endpoint()
    if metrics is not None:
        from meshroute.metrics import serve_metrics

        serve_metrics(agent, metrics.host, metrics.port)
    reload = _reloader(agent, config, config_path, log_level)
    signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
    signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
    signal.signal(signal.SIGUSR1, lambda *_: agent.request_stop(goodbye=False))
    signal.signal(signal.SIGHUP, lambda *_: agent.call_soon(reload))
    try:
        agent.run()
    finally:
        hooks.close()
        control.close()
        dataplane.close()
    if agent.stopped_for_restart:
        log.info("agent %s stopped for a restart (exit %d)", config.name, EXIT_RESTART)
        return EXIT_RESTART
    log.info("agent %s stopped", config.name)
    return 0


def hook_gid(config: Config) -> int | None:
    """The group allowed to write to the hook socket (OpenVPN after it drops root)."""
    if config.hook_socket_group is None:
        return None
    import grp

    try:
        return grp.getgrnam(config.hook_socket_group).gr_gid
    except KeyError:
        raise InterfaceError(f"hook_socket_group: no group {config.hook_socket_group!r}") from None


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
        logging.getLogger().setLevel((log_level or new.log_level).upper())
        agent.reconfigure(
            dataclasses.replace(
                agent.core.settings,
                hold_time=new.hold_time,
                announce_interval=new.announce_interval,
                client_networks=resolved.client_networks,
                max_claims_per_peer=new.max_claims_per_peer,
            ),
            loop_settings(new),
        )
        # What needs a restart keeps its running value, so the next SIGHUP warns again.
        state["config"] = dataclasses.replace(old, **{k: getattr(new, k) for k in RELOADABLE})
        log.info("SIGHUP: config reloaded from %s", config_path)

    return reload
