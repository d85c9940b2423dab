"""What operators see: systemd notify, log formats, start-up errors, check --as-user."""

from __future__ import annotations

import logging
import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from meshroute.agent.daemon import EXIT_CONFIG, EXIT_NOPERM, main
from meshroute.agent.logformat import JournalFormatter, JsonFormatter, default_format
from meshroute.agent.sdnotify import Notifier, Watchdog
from meshroute.config.schema import load_config


@pytest.fixture
def notify_socket(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2)
    yield sock, str(tmp_path / "notify")
    sock.close()


def test_watchdog_sends_ready_once_then_pings_and_status(notify_socket) -> None:
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier(env)
    assert notifier.watchdog_interval == 1.0
    ready, now = [False], [0.0]
    dog = Watchdog(notifier, lambda: ready[0], lambda: "connected; 2 peer(s)", lambda: now[0])
    dog()
    assert sock.recv(100) == b"WATCHDOG=1"
    assert sock.recv(100) == b"STATUS=connected; 2 peer(s)"
    ready[0] = True
    now[0] = 0.5
    dog()  # ready now; the ping is not due yet and the status has not changed
    assert sock.recv(100) == b"READY=1\nSTATUS=connected; 2 peer(s)"
    now[0] = 1.0
    dog()
    assert sock.recv(100) == b"WATCHDOG=1"


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.send(ready="1")  # no error


def test_journal_lines_carry_the_syslog_priority() -> None:
    def line(level: int, msg: str) -> str:
        record = logging.LogRecord("meshroute.agent.loop", level, __file__, 1, msg, (), None)
        return JournalFormatter().format(record)

    assert line(logging.ERROR, "x") == "<3>meshroute.agent.loop: x"
    assert line(logging.WARNING, "x").startswith("<4>")
    assert line(logging.INFO, "two\nlines") == "<6>meshroute.agent.loop: two | lines"
    assert line(logging.DEBUG, "x").startswith("<7>")


def test_json_lines_are_one_object_each() -> None:
    import json

    record = logging.LogRecord(
        "meshroute.agent.loop", logging.WARNING, __file__, 1, "a %s", ("b",), None
    )
    obj = json.loads(JsonFormatter().format(record))
    assert (obj["level"], obj["logger"], obj["message"]) == (
        "warning",
        "meshroute.agent.loop",
        "a b",
    )


def test_journal_is_the_default_under_systemd() -> None:
    assert default_format({"JOURNAL_STREAM": "8:1234"}) == "journal"
    assert default_format({}) == "text"
    assert load_config(None, {"MESHROUTE_LOG_FORMAT": "json"}).config.log_format == "json"


CONF = "name = a\nnext_hop = 10.0.0.1\nclient_networks = 10.8.0.0/24\n"


def test_a_config_error_exits_78_with_one_line(tmp_path: Path, capsys) -> None:
    conf = tmp_path / "a.conf"
    conf.write_text(CONF + "hold_time = soon\n")
    assert main(str(conf)) == EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hold_time" in err[0]


def test_a_missing_password_file_exits_78_naming_the_key(tmp_path: Path, capsys) -> None:
    conf = tmp_path / "a.conf"
    conf.write_text(CONF + f"openvpn_mgmt_pass_file = {tmp_path / 'nope'}\n")
    assert main(str(conf)) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "cannot start: openvpn_mgmt_pass_file:" in err and "Traceback" not in err


def nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


@pytest.fixture
def shared(tmp_path_factory):
    """A directory any user can traverse (pytest's own tmp dirs are root's only)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="meshroute-ops-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_an_unreadable_config_exits_77(shared: Path) -> None:
    conf = shared / "a.conf"
    conf.write_text(CONF)
    conf.chmod(0o600)
    user = nobody()
    code = (
        "import sys, os, pwd, grp; from meshroute.agent.daemon import main; "
        f"os.setgid({user.pw_gid}); os.setuid({user.pw_uid}); sys.exit(main(sys.argv[1]))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(conf)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).parents[2])  # fmt: skip
    assert done.returncode == EXIT_NOPERM, done.stderr
    assert "permission denied" in done.stderr.lower() and "Traceback" not in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="CI runs as root; becoming a user needs it")
def test_an_unreadable_password_file_exits_77_as_the_agents_user(shared: Path) -> None:
    secret = shared / "pass"
    secret.write_text("pw\n")
    secret.chmod(0o600)  # root's only
    conf = shared / "a.conf"
    conf.write_text(CONF + f"openvpn_mgmt_pass_file = {secret}\n")
    conf.chmod(0o644)
    user = nobody()
    code = (
        "import sys, os, pwd, grp; from meshroute.agent.daemon import main; "
        f"os.setgid({user.pw_gid}); os.setuid({user.pw_uid}); sys.exit(main(sys.argv[1]))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(conf)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).parents[2])  # fmt: skip
    assert done.returncode == EXIT_NOPERM, done.stderr
    assert "is not readable by user nobody (permission denied)" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="CI runs as root; --as-user needs it")
def test_check_as_user_sees_what_root_cannot(shared: Path) -> None:
    from click.testing import CliRunner

    from meshroute.cli import cli

    secret = shared / "pass"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    conf = shared / "a.conf"
    conf.write_text(CONF + f"openvpn_mgmt_pass_file = {secret}\n")
    conf.chmod(0o644)
    assert CliRunner().invoke(cli, ["check", str(conf)]).exit_code == 0
    done = subprocess.run(
        [sys.executable, "-m", "meshroute", "check", str(conf), "--as-user", "nobody"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert done.returncode == 1
    assert f"openvpn_mgmt_pass_file: {secret} is not readable by user nobody" in done.stderr
    secret.chmod(0o644)
    again = subprocess.run(
        [sys.executable, "-m", "meshroute", "check", str(conf), "--as-user", "nobody"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
