"""deploy/systemd/meshroute-agent.service: valid for systemd, and in step with the daemon."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from meshroute.agent.daemon import EXIT_CONFIG, EXIT_NOPERM, EXIT_RESTART

UNIT = Path(__file__).parents[2] / "deploy" / "systemd" / "meshroute-agent.service"


def settings() -> dict[str, str]:
    lines = UNIT.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"^\w+=", line))


def test_the_unit_waits_for_readiness_and_keeps_a_watchdog() -> None:
    unit = settings()
    assert unit["Type"] == "notify" and unit["NotifyAccess"] == "main"
    assert unit["WatchdogSec"].endswith("s") and int(unit["WatchdogSec"][:-1]) >= 10


def test_exit_codes_in_the_unit_are_the_daemons() -> None:
    unit = settings()
    assert unit["RestartForceExitStatus"] == str(EXIT_RESTART)
    assert unit["RestartPreventExitStatus"].split() == [str(EXIT_NOPERM), str(EXIT_CONFIG)]
    assert unit["KillSignal"] == "SIGTERM"  # a stop without goodbye (daemon docstring)


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """The unit as installed, with ExecStart pointing at this checkout's meshroute."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (package systemd) is needed to verify the unit"
    meshroute = shutil.which("meshroute") or str(Path(__file__).parents[2] / ".venv/bin/meshroute")
    text = UNIT.read_text().replace("/usr/local/bin/meshroute", meshroute)
    unit = tmp_path / "meshroute-agent.service"
    unit.write_text(text)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    problems = [line for line in done.stderr.splitlines() if "meshroute-agent" in line]
    assert done.returncode == 0 and not problems, done.stderr
