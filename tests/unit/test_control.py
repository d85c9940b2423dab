"""The control socket and the `table` / `peers` / `health` commands."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from meshroute.cli import cli
from meshroute.control import ControlServer, format_rows, human_duration, query_command

TABLE = {
    "agent": "vpnsrvB",
    "epoch": 1,
    "claims": [
        {"address": "10.100.100.5", "common_name": "host2", "owner": "vpnsrvA",
         "next_hop": "10.200.200.1", "connected_since": 1700000000, "connected_for": 65,
         "local": False, "installed": True},
        {"address": "fd00:100::6", "common_name": "host3-long-name", "owner": "vpnsrvB",
         "next_hop": None, "connected_since": 1700000100, "connected_for": 5,
         "local": True, "installed": False},
    ],
}  # fmt: skip
HEALTH = {"schema": 1, "agent": "vpnsrvB", "ok": False, "problems": ["not connected to the broker"],
          "broker_connected": False, "uptime": 7384.2, "last_poll_age": None,
          "route_errors": {}, "counters": {"x": 1}}  # fmt: skip


@pytest.fixture
def server(tmp_path):
    answers = {"table": TABLE, "peers": {"agent": "vpnsrvB", "peers": []}, "health": HEALTH}
    srv = ControlServer(tmp_path / "ctl.sock", lambda cmd: answers[cmd])
    yield srv
    srv.close()


def test_table_json_is_the_agents_answer(server, capsys):
    assert query_command("table", str(server.path), None, as_json=True) == 0
    assert json.loads(capsys.readouterr().out) == TABLE


def test_table_human_output_is_aligned(server, capsys):
    assert query_command("table", str(server.path), None, as_json=False) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "agent vpnsrvB: 2 address(es)"
    header, first, second = lines[1:]
    assert header.split() == ["ADDRESS", "COMMON_NAME", "OWNER", "NEXT_HOP", "CONNECTED_FOR",
                              "LOCAL", "INSTALLED"]  # fmt: skip
    assert first.index("host2") == second.index("host3-long-name") == header.index("COMMON")
    assert second.split()[3] == "-" and second.split()[-2:] == ["yes", "no"]


def test_unhealthy_agent_exits_3(server, capsys):
    assert query_command("health", str(server.path), None, as_json=False) == 3
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "agent vpnsrvB: UNHEALTHY: not connected to the broker"
    assert "broker_connected: no" in out


def test_health_text_has_no_python_reprs_and_human_durations(server, capsys):
    query_command("health", str(server.path), None, as_json=False)
    out = capsys.readouterr().out
    for repr_ in ("True", "False", "None", "{}"):
        assert repr_ not in out
    assert "uptime: 2h03m" in out and "last_poll_age: -" in out and "route_errors: none" in out


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "0.2s"), (12.4, "12s"), (65, "1m05s"), (7384.2, "2h03m"), (3 * 86400 + 7200, "3d02h")],
)
def test_human_durations(seconds, text):
    assert human_duration(seconds) == text


def test_no_agent_is_a_clear_error_and_exit_1(tmp_path):
    missing = tmp_path / "nobody.sock"
    result = CliRunner().invoke(cli, ["peers", "--socket", str(missing)])
    assert result.exit_code == 1
    assert f"no agent answers on {missing}" in result.output


def test_socket_from_config(server, tmp_path, capsys):
    conf = tmp_path / "agent.conf"
    conf.write_text(f"name = b\nnext_hop = 10.0.0.1\ncontrol_socket = {server.path}\n")
    assert query_command("peers", None, str(conf), as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["agent"] == "vpnsrvB"


def test_a_failing_answer_is_reported_not_crashed(tmp_path, capsys):
    def broken(cmd):
        raise RuntimeError("agent busy")

    srv = ControlServer(tmp_path / "b.sock", broken)
    try:
        assert query_command("table", str(srv.path), None, as_json=False) == 1
        assert "agent busy" in capsys.readouterr().err
    finally:
        srv.close()


def test_format_rows_shows_none_as_dash():
    text = format_rows([{"a": None, "b": True}], ("a", "b"))
    assert text.splitlines() == ["A  B", "-  yes"]


CONTESTED = {
    "schema": 1, "agent": "b", "epoch": 1,
    "claims": [
        {"address": "10.8.0.6", "common_name": "host2", "owner": "c", "next_hop": "10.200.0.3",
         "connected_since": 1700000100, "connected_for": 5, "local": False, "installed": True,
         "claimants": ["a", "c"], "why": "latest session: stamp 20 > 10 of a",
         "all_claims": [
            {"owner": "c", "common_name": "host2", "connected_since": 1700000100, "stamp": 20,
             "winner": True},
            {"owner": "a", "common_name": "host2", "connected_since": 1700000000, "stamp": 10,
             "winner": False}]},
        {"address": "10.8.0.7", "common_name": "other", "owner": "a", "next_hop": "10.200.0.1",
         "connected_since": 1700000000, "connected_for": 9, "local": False, "installed": True,
         "claimants": ["a"], "why": "the only claimant", "all_claims": []},
    ],
}  # fmt: skip


@pytest.fixture
def contested(tmp_path):
    srv = ControlServer(tmp_path / "t.sock", lambda cmd: CONTESTED)
    yield srv
    srv.close()


@pytest.mark.parametrize("select", ["10.8.0.6", "host2"])
def test_table_for_one_address_or_client_shows_every_claimant_and_why(contested, capsys, select):
    assert query_command("table", str(contested.path), None, False, select=select) == 0
    out = capsys.readouterr().out
    assert "10.8.0.7" not in out
    assert "10.8.0.6: latest session: stamp 20 > 10 of a" in out
    winner, loser = [line for line in out.splitlines() if "owner " in line]
    assert winner.split()[:3] == ["winner", "owner", "c"] and loser.split()[:2] == ["owner", "a"]


def test_table_select_matching_nothing_exits_1(contested, capsys):
    assert query_command("table", str(contested.path), None, True, select="10.9.9.9") == 1
    assert "knows no address or client '10.9.9.9'" in capsys.readouterr().err


def test_leave_asks_the_agent_and_waits_until_it_is_gone(tmp_path):
    asked = []
    srv = ControlServer(tmp_path / "l.sock", lambda cmd: asked.append(cmd) or {"agent": "a"})
    try:
        result = CliRunner().invoke(cli, ["leave", "--socket", str(srv.path), "--wait", "0.3"])
        assert asked == ["leave"] and result.exit_code == 1  # still there: not gone
        assert "still stopping" in result.output
    finally:
        srv.close()


def test_completion_as_documented_works():
    import subprocess
    import sys

    env = {"_MESHROUTE_COMPLETE": "bash_source", "PATH": ""}
    done = subprocess.run([sys.executable, "-c", "from meshroute.entry import main; main()"],
                          env=env, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0 and "_meshroute_completion()" in done.stdout
