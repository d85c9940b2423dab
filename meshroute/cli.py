"""The ``meshroute`` command line: parses, validates and delegates; no logic here.

Exit codes: 0 success, 1 the operation failed (for example no agent answered),
2 bad usage or bad configuration (click's own convention for usage errors).
"""

from __future__ import annotations

import sys

import click

from meshroute import __version__

SOCKET_HELP = "Control socket of the agent (default: from --config, else the well-known path)."


class LazyGroup(click.Group):
    """A click group whose heavy subcommands are imported only when run.

    ``meshroute --help`` and every other command must not pay for the lab (2.7k
    lines, with its own imports): the lab's group is imported when ``lab`` is the
    command, and its one-line help for the listing is kept here (a unit test holds
    it equal to the lab's own).
    """

    LAZY: dict[str, tuple[str, str, str]] = {
        # name: (module, attribute, short help for the listing)
        "lab": (
            "meshroute.lab.commands",
            "lab",
            "The one-box lab (root): network namespaces, real OpenVPN, RabbitMQ and agents.",
        ),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY and cmd_name not in self.commands:
            import importlib

            module, attr, _ = self.LAZY[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's own, with the lazy commands' help taken from LAZY."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        rows = []
        for name in names:
            if name in self.LAZY and name not in self.commands:
                stand_in = click.Command(name, help=self.LAZY[name][2])
                rows.append((name, stand_in.get_short_help_str(limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meshroute")
def cli() -> None:
    """meshroute: host routes for clients of many OpenVPN servers, shared over RabbitMQ."""


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the effective config as JSON.")
@click.option(
    "--as-user",
    metavar="USER",
    help="Also check, as USER (the unit's User=), that every file the agent reads is "
    "readable. Needs root.",
)
@click.option(
    "--backbone-openvpn",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="The OpenVPN config of the backbone (mgmt_interface): warn if that form cannot "
    "carry meshroute's routes (a tun server with more than one peer; docs/backbone.md).",
)
def check(config: str, as_json: bool, as_user: str | None, backbone_openvpn: str | None) -> None:
    """Validate CONFIG (with MESHROUTE_* overrides) and print the effective config."""
    from meshroute.config.schema import check_command

    code = check_command(config, as_json=as_json, backbone_openvpn=backbone_openvpn)
    if code == 0 and as_user:
        from meshroute.config.access import check_as_user

        code = check_as_user(config, as_user)
    sys.exit(code)


@cli.command()
@click.argument("config_arg", metavar="[CONFIG]", required=False, type=click.Path(dir_okay=False))
@click.option("--config", "config_opt", type=click.Path(dir_okay=False), help="Config file.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default=None,
    help="Log level (default: the config's log_level).",
)
def agent(config_arg: str | None, config_opt: str | None, log_level: str | None) -> None:
    """Run the agent for one OpenVPN server (CONFIG as the only argument works)."""
    if config_arg and config_opt and config_arg != config_opt:
        raise click.UsageError("give the config once: as CONFIG or as --config, not both")
    from meshroute.agent.daemon import main as agent_main

    sys.exit(agent_main(config_arg or config_opt, log_level=log_level))


def _query_options(func):
    func = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(func)
    func = click.option("--socket", "socket_path", help=SOCKET_HELP)(func)
    func = click.option("--config", "config_path", help="Config file (for its control_socket).")(
        func
    )
    return func


@cli.command()
@click.argument("select", metavar="[ADDRESS|CLIENT]", required=False)
@_query_options
def table(
    select: str | None, socket_path: str | None, config_path: str | None, as_json: bool
) -> None:
    """Every address the agent has learned: owner, next hop, route installed.

    With ADDRESS or CLIENT (a common name): only that, with every claimant and why
    the winner won. Exit 1 when nothing matches."""
    from meshroute.control import query_command

    sys.exit(query_command("table", socket_path, config_path, as_json, select=select))


@cli.command()
@_query_options
def peers(socket_path: str | None, config_path: str | None, as_json: bool) -> None:
    """The agent's peers: epoch, last seen, claims, state."""
    from meshroute.control import query_command

    sys.exit(query_command("peers", socket_path, config_path, as_json))


@cli.command()
@_query_options
def health(socket_path: str | None, config_path: str | None, as_json: bool) -> None:
    """The agent's health: broker connection, last sync, last apply, counters."""
    from meshroute.control import query_command

    sys.exit(query_command("health", socket_path, config_path, as_json))


@cli.command()
@click.option("--socket", "socket_path", help=SOCKET_HELP)
@click.option("--config", "config_path", help="Config file (for its control_socket).")
@click.option("--wait", default=15.0, show_default=True, help="Seconds to wait for the stop.")
def leave(socket_path: str | None, config_path: str | None, wait: float) -> None:
    """Withdraw this server from the mesh NOW: the agent says goodbye and stops.

    Every peer drops this server's client routes at once. For a server that is
    being retired or whose OpenVPN is gone for good. A plain stop or restart
    (SIGTERM, `systemctl restart`) does NOT do this: peers keep the routes for the
    hold time, so a restart changes no route. Exit 0 once the agent is gone."""
    from meshroute.control import leave_command

    sys.exit(leave_command(socket_path, config_path, wait))


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def hook(ctx: click.Context) -> None:
    """OpenVPN hook: learn-address OP ADDR [CN] | client-connect | client-disconnect.

    Hands the event to the local agent and exits 0 at once, also when the agent is
    down (the next status poll catches up). Use it in the OpenVPN server config:

    \b
      script-security 2
      learn-address "/usr/local/bin/meshroute hook learn-address"
      client-connect "/usr/local/bin/meshroute hook client-connect"
      client-disconnect "/usr/local/bin/meshroute hook client-disconnect"

    Options (before the event): --socket PATH (default $MESHROUTE_HOOK_SOCKET or
    /run/meshroute/hook.sock).
    """
    import os

    from meshroute.openvpn.hook import main as hook_main

    if ctx.args[:1] in (["-h"], ["--help"]):  # only in first place: a CN may be anything
        click.echo(ctx.get_help())
        sys.exit(0)
    sys.exit(hook_main(list(ctx.args), os.environ))


@cli.group()
def broker() -> None:
    """What the RabbitMQ broker needs for a mesh."""


@broker.command("definitions")
@click.option("--agents", required=True, help="Agent names, comma separated (their `name` keys).")
@click.option("--vhost", default="meshroute", show_default=True, help="The mesh's vhost.")
@click.option("--exchange", default="meshroute", show_default=True, help="The fanout exchange.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write here (mode 0600), not stdout.")
@click.option(
    "--password-dir",
    type=click.Path(file_okay=False),
    help="Passwords in DIR/NAME (first line); missing ones are generated into new files.",
)
@click.option("--monitoring-user", help="Also a read-only user for the management UI.")
def broker_definitions(
    agents: str,
    vhost: str,
    exchange: str,
    out: str | None,
    password_dir: str | None,
    monitoring_user: str | None,
) -> None:
    """Write RabbitMQ definitions: vhost, exchange, per-agent users, policy.

    Import with `rabbitmqctl import_definitions FILE`. Only password hashes are
    written; without --password-dir the generated passwords are printed once on
    stderr. See docs/install.md.
    """
    from pathlib import Path

    from meshroute.bus.definitions import definitions_command

    sys.exit(
        definitions_command(
            agents,
            vhost=vhost,
            exchange=exchange,
            out=Path(out) if out else None,
            password_dir=Path(password_dir) if password_dir else None,
            monitoring_user=monitoring_user,
            stdout=sys.stdout,
            stderr=sys.stderr,
        )
    )
