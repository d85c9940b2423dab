"""Console entry point.

``meshroute hook ...`` is run by OpenVPN for every client event, synchronously: it
takes a fast path that imports neither click nor the rest of the package, so the
hook returns in a few milliseconds. Every other command goes through click.
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
    from meshroute.cli import cli

    cli(prog_name="meshroute")
