"""The CLI imports only what the command run needs (issue 11).

The lab (2.7k lines), pika and pyroute2 stay out of every call that does not use
them: ``meshroute --help``, ``check``, ``table``/``peers``/``health`` and ``broker``.
Each case runs in a fresh interpreter, so what another test imported does not count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[2] / "deploy" / "meshroute.conf.example"

PROBE = """
import json, sys
from meshroute.cli import cli
try:
    cli(sys.argv[1:], prog_name="meshroute", standalone_mode=False)
except SystemExit:
    pass
except Exception as error:  # a command that fails still shows what it imported
    print(type(error).__name__, error, file=sys.stderr)
heavy = ("meshroute.lab", "pika", "pyroute2", "meshroute.agent.", "meshroute.bus.amqp")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("pika", "pyroute2")
                        or m.startswith(heavy))))
"""


def loaded_by(*argv: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("check", str(EXAMPLE)),
        ("table", "--help"),
        ("health", "--socket", "/nonexistent/meshroute.sock"),
        ("broker", "--help"),
    ],
)
def test_calls_that_need_no_lab_import_no_lab_pika_or_pyroute2(argv: tuple[str, ...]) -> None:
    assert loaded_by(*argv) == set()


def test_the_lab_is_imported_when_it_is_the_command() -> None:
    assert "meshroute.lab.commands" in loaded_by("lab", "--help")


def test_help_lists_the_lab_with_the_labs_own_help() -> None:
    from click.testing import CliRunner

    from meshroute.cli import LazyGroup, cli
    from meshroute.lab.commands import lab

    assert LazyGroup.LAZY["lab"][2] == (lab.help or "").split("\n\n")[0].strip()
    out = CliRunner().invoke(cli, ["--help"]).output
    assert "  lab     The one-box lab (root): network namespaces, real OpenVPN,...\n" in out


AGENT_PROBE = """
import atexit, sys
atexit.register(lambda: print("click loaded:", "click" in sys.modules, file=sys.stderr))
sys.argv = ["meshroute", *sys.argv[1:]]
from meshroute.entry import main
main()
"""


@pytest.mark.parametrize(
    ("argv", "click_loaded"),
    [
        (("agent", "/nonexistent/meshroute.conf"), False),  # the unit's form: no click
        (("agent", "--config", "/nonexistent/meshroute.conf"), True),  # any other: click
    ],
)
def test_the_agent_as_the_unit_starts_it_does_not_load_click(
    argv: tuple[str, ...], click_loaded: bool
) -> None:
    """`meshroute agent CONFIG` (deploy/systemd's ExecStart) goes straight to the daemon:
    click costs ~3.5 MiB of the agent's RSS for the life of the process (issue 8's
    memory target) and ~30 ms of its start. Both forms fail alike on a bad config."""
    done = subprocess.run([sys.executable, "-c", AGENT_PROBE, *argv], capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert done.returncode == 78, done.stderr  # EX_CONFIG: systemd does not retry it
    assert "/nonexistent/meshroute.conf" in done.stderr
    assert f"click loaded: {click_loaded}" in done.stderr
