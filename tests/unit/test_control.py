"""The control socket and the `table` / `peers` / `health` commands."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from meshroute.cli import cli
from meshroute.control import ControlServer, format_rows, query_command

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
HEALTH = {"agent": "vpnsrvB", "ok": False, "broker_connected": False, "counters": {"x": 1}}


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
    assert "broker_connected: False" in capsys.readouterr().out


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
