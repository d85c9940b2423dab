"""Console entry point.

``meshroute hook ...`` is run by OpenVPN for every client event, synchronously: it
takes a fast path that imports neither click nor the rest of the package, so the
hook returns in a few milliseconds. ``meshroute agent CONFIG`` (the systemd unit's
form) goes straight to the daemon too: click would stay loaded for the life of the
agent (~3.5 MiB of RSS, ~30 ms of start; docs/performance.md). Every other command,
and the agent with any option, goes through click.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    argv = sys.argv[1:]
    # Help only as the first word after ``hook``: a common name may be "--help".
    if argv[:1] == ["hook"] and argv[1:2] not in (["-h"], ["--help"]):
        from meshroute.openvpn.hook import main as hook_main

        sys.exit(hook_main(argv[1:], os.environ))
    if len(argv) == 2 and argv[0] == "agent" and not argv[1].startswith("-"):
        from meshroute.agent.daemon import main as agent_main

        sys.exit(agent_main(argv[1]))
    from meshroute.cli import cli

    cli(prog_name="meshroute")
