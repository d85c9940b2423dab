"""``meshroute lab``: N real OpenVPN servers, clients, a broker and agents on one box.

Thin: parses, checks root, delegates to :mod:`meshroute.lab.lab`. Exit codes: 0
done, 1 the operation failed (a ping failed, the lab did not converge, no such
lab), 2 bad usage. Every command takes ``--prefix`` (env ``MESHROUTE_LAB_PREFIX``,
default ``mr``), so several labs and the tests never collide. See docs/lab.md.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

import click

from meshroute.lab.topology import MAX_BROKERS, MAX_CLIENTS, MAX_SERVERS, node_netns

AGENT_SIGNALS = {"stop": signal.SIGTERM, "kill": signal.SIGKILL, "restart": signal.SIGUSR1}


def _prefix(func):
    return click.option(
        "--prefix",
        default="mr",
        show_default=True,
        envvar="MESHROUTE_LAB_PREFIX",
        help="Name prefix of the lab's namespaces (one lab per prefix).",
    )(func)


def _lab(prefix: str):
    if os.geteuid() != 0:
        raise click.ClickException("the lab needs root (namespaces, OpenVPN, routes)")
    from meshroute.lab.lab import Lab
    from meshroute.lab.topology import check_prefix

    try:
        check_prefix(prefix)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--prefix") from None
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
    return Lab(prefix)


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@click.group()
def lab() -> None:
    """The one-box lab (root): network namespaces, real OpenVPN, RabbitMQ and agents."""


@lab.command()
@_prefix
@click.option("--servers", default=3, show_default=True, type=click.IntRange(1, MAX_SERVERS))
@click.option("--clients", default=6, show_default=True, type=click.IntRange(0, MAX_CLIENTS))
@click.option("--brokers", default=1, show_default=True, type=click.IntRange(1, MAX_BROKERS),
              help="RabbitMQ nodes; more than 1 makes a cluster b1..bK.")  # fmt: skip
@click.option("--sites", default=0, show_default=True, type=click.IntRange(0, MAX_CLIENTS),
              help="Clients c1..cK route a LAN with a host hK behind them (iroute).")  # fmt: skip
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for it all.")
@click.option("--hooks", type=click.Choice(["auto", "plugin", "script"]), default="auto",
              show_default=True,
              help="OpenVPN -> agent events: the C plugin, the script hooks, or auto "
                   "(the plugin when it is built).")  # fmt: skip
@click.option("--backbone",
              type=click.Choice(["bridge", "openvpn", "openvpn-tun", "openvpn-p2p"]),
              default="bridge", show_default=True,
              help="The management net: a Linux bridge, an OpenVPN tap hub on s1 (any "
                   "number of servers), the article's tun server on s1 (two servers), or "
                   "a full mesh of point-to-point tunnels (see docs/backbone.md).")  # fmt: skip
def up(prefix: str, servers: int, clients: int, brokers: int, sites: int, timeout: float,
       hooks: str, backbone: str) -> None:  # fmt: skip
    """Build the lab and return once every agent has converged."""
    from meshroute.lab.report import lab_status, render_where

    the_lab = _lab(prefix)
    logging.getLogger("meshroute.lab.lab").setLevel(logging.INFO)  # progress on stderr
    try:
        took = the_lab.up(
            servers, clients, timeout, hooks, brokers=brokers, sites=sites, backbone=backbone
        )
    except Exception as exc:  # whatever failed, say where the logs are and how to clean up
        click.echo(f"error: lab up failed: {exc}", err=True)
        if the_lab.paths.root.exists():
            click.echo(f"logs: {the_lab.paths.logs}", err=True)
        click.echo(f"remove what was made with: meshroute lab down --prefix {prefix}", err=True)
        sys.exit(1)
    click.echo(render_where(lab_status(the_lab)))
    click.echo(f"converged in {took:.1f}s")


@lab.command()
@_prefix
def down(prefix: str) -> None:
    """Remove everything the lab made (also after a failed up); safe to run twice."""
    removed = _lab(prefix).down()
    click.echo(f"removed: {', '.join(removed)}" if removed else f"nothing of lab {prefix} left")


@lab.command()
@_prefix
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(prefix: str, as_json: bool) -> None:
    """Servers, agents, clients (server, address) and every agent's learned table."""
    from meshroute.lab.lab import LabError
    from meshroute.lab.report import lab_status, render_status

    try:
        result = lab_status(_lab(prefix))
    except LabError as exc:
        _fail(exc)
    click.echo(json.dumps(result, indent=2) if as_json else render_status(result))


@lab.command()
@_prefix
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--family", type=click.Choice(["4", "6", "both"]), default="both",
              show_default=True)  # fmt: skip
def ping(prefix: str, as_json: bool, family: str) -> None:
    """Every client pings every other client; exit 1 if any pair fails."""
    from meshroute.lab.lab import LabError
    from meshroute.lab.observe import ping_matrix, pings_as_json, render_matrix

    the_lab = _lab(prefix)
    try:
        plan = the_lab.plan()
    except LabError as exc:
        _fail(exc)
    families = (4, 6) if family == "both" else (int(family),)
    results = ping_matrix(plan, families)
    click.echo(
        json.dumps(pings_as_json(results), indent=2) if as_json else render_matrix(plan, results)
    )
    sys.exit(0 if all(p.ok for p in results) else 1)


@lab.command()
@_prefix
@click.argument("client")
@click.argument("server")
@click.option("--no-wait", is_flag=True, help="Return at once, without waiting for routes.")
def move(prefix: str, client: str, server: str, no_wait: bool) -> None:
    """CLIENT reconnects to SERVER (its OpenVPN is killed and restarted)."""
    from meshroute.lab.lab import LabError

    try:
        took = _lab(prefix).move(client, server, wait=None if no_wait else 30.0)
    except (LabError, KeyError) as exc:
        _fail(exc)
    click.echo(f"{client} moved to {server}" + ("" if no_wait else f"; routed in {took:.2f}s"))


@lab.command()
@_prefix
@click.argument("action", type=click.Choice(["stop", "kill", "restart", "start", "leave"]))
@click.argument("server")
def agent(prefix: str, action: str, server: str) -> None:
    """stop (SIGTERM, no goodbye), kill (SIGKILL), restart (SIGUSR1 + start), start,
    leave (`meshroute leave`: goodbye, peers withdraw at once)."""
    from meshroute.lab.lab import LabError

    the_lab = _lab(prefix)
    try:
        if action == "leave":
            click.echo(f"agent {server} (pid {the_lab.leave_agent(server)}): left")
        if action in AGENT_SIGNALS:
            pid = the_lab.signal_agent(server, AGENT_SIGNALS[action])
            click.echo(f"agent {server} (pid {pid}): {action}")
        if action in ("start", "restart"):
            click.echo(f"agent {server} started (pid {the_lab.start_agent(server)})")
    except (LabError, KeyError) as exc:
        _fail(exc)


@lab.command()
@_prefix
@click.argument("action", type=click.Choice(["stop", "start", "kill"]))
@click.argument("node", required=False)
def broker(prefix: str, action: str, node: str | None) -> None:
    """Stop, start or SIGKILL broker NODE (b1.. of a cluster), or every node without one.

    A single broker's stop stops its application (every agent's connection drops);
    a cluster node's stop stops that node, and its agents move to the others.
    """
    from meshroute.lab.lab import LabError

    the_lab = _lab(prefix)
    actions = {"stop": the_lab.broker_stop, "start": the_lab.broker_start,
               "kill": the_lab.broker_kill}  # fmt: skip
    try:
        actions[action](node)
    except (LabError, OSError, RuntimeError, KeyError) as exc:
        _fail(exc)
    done = {"stop": "stopped", "start": "started", "kill": "killed"}[action]
    click.echo(f"broker {node} {done}" if node else f"broker {done}")


@lab.command(name="exec", context_settings={"ignore_unknown_options": True})
@_prefix
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(prefix: str, node: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside NODE's namespace (s1.., c1.., broker, net): lab exec c1 -- ping X."""
    from meshroute.lab.lab import LabError

    try:
        ns = node_netns(prefix, node)
        _lab(prefix).state()  # a clear error if there is no such lab
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NODE") from None
    except LabError as exc:
        _fail(exc)
    os.execvp("ip", ["ip", "netns", "exec", ns, *command])
