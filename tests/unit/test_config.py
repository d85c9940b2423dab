"""Config loading: the article's format, precedence, precise errors, round trip, check."""

from __future__ import annotations

import json
import pathlib
from dataclasses import fields
from ipaddress import IPv4Address, IPv6Address, ip_network

import pytest

from meshroute.config.schema import (
    Config,
    ConfigError,
    HostPort,
    check_command,
    config_as_dict,
    format_config,
    key_reference,
    load_config,
)

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
LISTING_4B = FIXTURES / "listing4b.conf"
DOCS = pathlib.Path(__file__).parent.parent.parent / "docs" / "configuration.md"


def write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "meshroute.conf"
    path.write_text(text)
    return path


def problems_of(path, environ=None, overrides=None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ or {}, overrides)
    return caught.value.problems


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_command reads os.environ: keep the CI's own MESHROUTE_* out of it."""
    import os

    for var in [v for v in os.environ if v.startswith("MESHROUTE_")]:
        monkeypatch.delenv(var)


# --- the article's Listing 4b -------------------------------------------------------


def test_listing_4b_loads_with_its_article_keys() -> None:
    loaded = load_config(LISTING_4B, {})
    config = loaded.config
    assert config.mgmt_interface == "tun1"
    assert config.data_interface == "tun0"
    assert config.openvpn_mgmt_port == 5656
    assert config.openvpn_mgmt_pass_file == pathlib.Path("/etc/openvpn/pass")
    assert config.mgmt_endpoint() == HostPort("127.0.0.1", 5656)
    assert config.next_hop is None and config.client_networks == ()
    assert loaded.source == str(LISTING_4B)


def test_listing_4b_two_server_keys_are_answered_with_what_replaces_them() -> None:
    warnings = load_config(LISTING_4B, {}).warnings
    assert (
        f"{LISTING_4B}:3: remote_mgmt_ip: cube-routed key ignored: meshroute has no fixed "
        "remote server; peers are discovered over the RabbitMQ exchange "
        "(see broker_url, exchange)"
    ) in warnings
    remote_data = next(w for w in warnings if w.startswith(f"{LISTING_4B}:4: remote_data_ip:"))
    assert "announces its own next_hop" in remote_data
    port = next(w for w in warnings if w.startswith(f"{LISTING_4B}:7: cube_routed_port:"))
    assert "listens on no port" in port and "broker_url" in port


# --- errors name the file, the line, the key and what is wrong -------------------------


def test_typo_key_names_file_line_key_and_suggests(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "# comment\n\nhold_tme = 5\n")
    assert problems_of(path) == (f"{path}:3: hold_tme: unknown key (did you mean hold_time?)",)


def test_every_problem_is_reported_not_just_the_first(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "hold_tme = 5\nroute_protocol = 0\nclient_networks = x\n")
    problems = problems_of(path)
    assert [p.split(": ")[0] for p in problems] == [f"{path}:1", f"{path}:2", f"{path}:3"]
    text = str(ConfigError(problems))
    assert text.startswith("3 configuration problems:\n  ") and "hold_tme" in text


def test_duplicate_key_names_both_lines(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "exchange = a\n# x\nexchange = b\n")
    assert problems_of(path) == (f"{path}:3: exchange: duplicate key (lines 1 and 3)",)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[meshroute]", "section headers are not used: write 'key = value' lines"),
        ("just words", "expected 'key = value', got 'just words'"),
        (
            "client_networks = 10.100.100.0/24, 10.0.0.1/24",
            "client_networks: 10.0.0.1/24 is not a network: it has host bits set "
            "(did you mean 10.0.0.0/24?)",
        ),
        ("client_networks = 10.0.0.0/33", "client_networks: not a network: '10.0.0.0/33'"),
        (
            "broker_url = amqp://a, http://b",
            "broker_url: 'http://b' is not an amqp:// or amqps:// URL",
        ),
        ("broker_url = amqp://u:secret@:99999", "broker_url: 'amqp://u:***@:99999' has a bad"),
        ("hold_time = 5x", "hold_time: not a duration: '5x' (seconds, or with a unit: 500ms"),
        ("hold_time = -1", "hold_time: not a duration: '-1'"),
        ("announce_interval = 0", "announce_interval: must be more than 0"),
        ("route_protocol = 4", "route_protocol: 4 is iproute2's reserved protocol 'static'"),
        ("route_protocol = 256", "route_protocol: 256 is out of range 0..255"),
        ("route_protocol = bgp", "route_protocol: not an integer: 'bgp'"),
        ("route_table = 0", "route_table: 0 is out of range 1..4294967295"),
        ("name = has space", "name: 'has space' is not a valid agent name"),
        ("next_hop = fd00::1", "next_hop: fd00::1 is an IPv6 address: use next_hop6"),
        ("next_hop = 0.0.0.0", "next_hop: 0.0.0.0 cannot be a next hop"),
        ("openvpn_mgmt = localhost", "openvpn_mgmt: expected host:port or [IPv6]:port, got"),
        ("openvpn_mgmt = [10.0.0.1]:5", "openvpn_mgmt: '10.0.0.1' in brackets is not an IPv6"),
        ("metrics_listen = :9100", "metrics_listen: expected host:port or [IPv6]:port"),
        ("openvpn_mgmt_port = 0", "openvpn_mgmt_port: 0 is out of range 1..65535"),
        ("control_socket = run/x.sock", "control_socket: 'run/x.sock' is not an absolute path"),
        ("log_level = loud", "log_level: 'loud' is not one of debug, info, warning, error"),
        ("exchange =", "exchange: empty value"),
        ("exchange = amq.fanout", "exchange: 'amq.fanout': names starting with 'amq.'"),
        ("mgmt_interface = tun1/x", "mgmt_interface: 'tun1/x' is not a valid interface name"),
        (
            "tls_cert_file = /etc/c.pem",
            "tls_cert_file: tls_key_file must be set too (tls_cert_file and tls_key_file",
        ),
    ],
)
def test_bad_values_get_precise_messages(tmp_path: pathlib.Path, line: str, message: str) -> None:
    path = write(tmp_path, f"{line}\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:1: {message}"), problem


def test_hold_time_below_twice_announce_names_both_keys(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "announce_interval = 10\n")
    (problem,) = problems_of(path, {"MESHROUTE_HOLD_TIME": "19.5"})
    assert problem.startswith(
        "environment MESHROUTE_HOLD_TIME: hold_time: 19.5s must be at least "
        f"2 x announce_interval (10s, {path}:1)"
    )


def test_relation_check_is_skipped_when_a_key_failed_to_parse(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "announce_interval = 10\nhold_time = soon\n")
    assert problems_of(path) == (
        f"{path}:2: hold_time: not a duration: 'soon' (seconds, or with a unit: 500ms, 5s, 2m)",
    )


def test_unreadable_file_is_a_config_error(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope.conf"
    assert problems_of(missing) == (f"{missing}: cannot read: No such file or directory",)


# --- values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5", 5.0), ("2.5", 2.5), ("500ms", 0.5), ("5s", 5.0), ("2m", 120.0), ("1 h", 3600.0)],
)
def test_durations_accept_seconds_and_units(text: str, seconds: float) -> None:
    config = load_config(None, {}, {"resync_interval": text}).config
    assert config.resync_interval == seconds


def test_lists_addresses_and_names_are_parsed_to_types() -> None:
    config = load_config(
        None,
        {},
        {
            "broker_url": "amqps://a:5671/%2F, amqps://b:5671/%2F\tamqp://c",
            "client_networks": "10.100.100.0/24 fd00:100::/64",
            "next_hop": "10.200.200.5",
            "next_hop6": "fd00:200::5",
            "route_table": "main",
            "log_level": "DEBUG",
            "openvpn_mgmt": "[::1]:7505",
        },
    ).config
    assert config.broker_url == ("amqps://a:5671/%2F", "amqps://b:5671/%2F", "amqp://c")
    assert config.client_networks == (ip_network("10.100.100.0/24"), ip_network("fd00:100::/64"))
    assert config.next_hop == IPv4Address("10.200.200.5")
    assert config.next_hop6 == IPv6Address("fd00:200::5")
    assert (config.route_table, config.log_level) == (254, "debug")
    assert config.mgmt_endpoint() == HostPort("::1", 7505)


def test_mgmt_unix_socket_and_metrics_endpoint() -> None:
    config = load_config(
        None, {}, {"openvpn_mgmt": "/run/openvpn/mgmt.sock", "metrics_listen": "0.0.0.0:9100"}
    ).config
    assert config.mgmt_endpoint() == pathlib.Path("/run/openvpn/mgmt.sock")
    assert config.metrics_endpoint() == HostPort("0.0.0.0", 9100)
    assert Config(name="a").metrics_endpoint() is None


def test_registered_protocol_and_ignored_port_are_warnings(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "route_protocol = 186\nopenvpn_mgmt = 127.0.0.1:1\n")
    warnings = load_config(path, {}, {"openvpn_mgmt_port": "5656"}).warnings
    assert f"{path}:1: route_protocol: 186 is registered to 'bgp': pick a number" in "\n".join(
        warnings
    )
    assert "override: openvpn_mgmt_port: ignored because openvpn_mgmt is set" in warnings


def test_next_hop_inside_the_client_networks_is_a_warning() -> None:
    overrides = {"client_networks": "10.100.100.0/24", "next_hop": "10.100.100.1"}
    warnings = load_config(None, {}, overrides).warnings
    assert "override: next_hop: 10.100.100.1 is inside client network 10.100.100.0/24" in warnings


def test_defaults_alone_load_and_say_what_is_missing() -> None:
    loaded = load_config(None, {})
    assert loaded.config == Config() and loaded.source is None
    assert any("neither next_hop nor mgmt_interface" in w for w in loaded.warnings)
    assert any("no route will be installed" in w for w in loaded.warnings)


def test_an_invalid_host_name_as_default_name_is_an_error(monkeypatch) -> None:
    import os
    import types

    monkeypatch.setattr(os, "uname", lambda: types.SimpleNamespace(nodename="my host"))
    (problem,) = problems_of(None)
    assert problem.startswith("default: name: the host name 'my host' is not a valid agent")
    assert problem.endswith("; set name")
    assert load_config(None, {"MESHROUTE_NAME": "a1"}).config.name == "a1"


def test_empty_optional_value_means_unset() -> None:
    config = load_config(None, {"MESHROUTE_NEXT_HOP": ""}, {"client_networks": ""}).config
    assert config.next_hop is None and config.client_networks == ()


# --- precedence ------------------------------------------------------------------------


def test_env_beats_file_and_overrides_beat_env(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "hold_time = 20\nexchange = from-file\nlog_level = error\n")
    environ = {"MESHROUTE_HOLD_TIME": "30", "MESHROUTE_EXCHANGE": "from-env", "PATH": "/bin"}
    config = load_config(path, environ, {"exchange": "from-flag", "log_level": None}).config
    assert (config.hold_time, config.exchange, config.log_level) == (30.0, "from-flag", "error")


def test_env_errors_name_the_variable_and_unknown_vars_warn() -> None:
    problems = problems_of(None, {"MESHROUTE_ROUTE_TABLE": "x"})
    assert problems == ("environment MESHROUTE_ROUTE_TABLE: route_table: not an integer: 'x'",)
    warnings = load_config(None, {"MESHROUTE_HOLD_TME": "5"}).warnings
    assert (
        "environment MESHROUTE_HOLD_TME: not a meshroute key, ignored "
        "(did you mean MESHROUTE_HOLD_TIME?)"
    ) in warnings


def test_unknown_override_is_an_error() -> None:
    assert problems_of(None, {}, {"holdtime": "5"}) == (
        "override: holdtime: unknown key (did you mean hold_time?)",
    )


# --- output ------------------------------------------------------------------------


def full_config() -> Config:
    return load_config(
        None,
        {},
        {
            "name": "srv-a.example",
            "broker_url": "amqps://a:5671/%2F amqps://b:5671/vh",
            "client_networks": "10.100.100.0/24, fd00:100::/64",
            "next_hop": "10.200.200.1",
            "next_hop6": "fd00:200::1",
            "route_table": "100",
            "openvpn_mgmt": "/run/openvpn/mgmt.sock",
            "announce_interval": "250ms",
            "hold_time": "0.75",
            "metrics_listen": "[::1]:9100",
            "dataplane_netns": "mrt-a-1",
            "tls_cert_file": "/etc/meshroute/c.pem",
            "tls_key_file": "/etc/meshroute/k.pem",
        },
    ).config


@pytest.mark.parametrize("make", [full_config, lambda: load_config(LISTING_4B, {}).config])
def test_format_config_round_trips(tmp_path: pathlib.Path, make) -> None:
    config = make()
    path = write(tmp_path, format_config(config))
    assert load_config(path, {}).config == config


def test_unset_keys_are_comments_saying_what_they_mean() -> None:
    text = format_config(load_config(LISTING_4B, {}).config)
    assert "# next_hop = (the IPv4 address of tun1, at start)\n" in text
    assert "# client_networks = (the networks of tun0's addresses, at start)\n" in text
    assert "# openvpn_mgmt = (127.0.0.1:5656)\n" in text


def test_config_as_dict_is_json_ready() -> None:
    as_dict = json.loads(json.dumps(config_as_dict(full_config())))
    assert as_dict["client_networks"] == ["10.100.100.0/24", "fd00:100::/64"]
    assert as_dict["next_hop6"] == "fd00:200::1"
    assert as_dict["tls_key_file"] == "/etc/meshroute/k.pem"
    assert as_dict["hold_time"] == 0.75 and as_dict["openvpn_mgmt_pass_file"] is None
    assert set(as_dict) == {f.name for f in fields(Config)}


# --- meshroute check -------------------------------------------------------------------


@pytest.mark.usefixtures("clean_environ")
def test_check_prints_warnings_and_a_loadable_config(tmp_path, capsys) -> None:
    assert check_command(str(LISTING_4B), as_json=False) == 0
    out, err = capsys.readouterr()
    assert f"warning: {LISTING_4B}:3: remote_mgmt_ip: cube-routed key ignored" in err
    assert "mgmt_interface = tun1\n" in out
    path = write(tmp_path, out)
    assert load_config(path, {}).config == load_config(LISTING_4B, {}).config


@pytest.mark.usefixtures("clean_environ")
def test_check_json_hides_broker_passwords(tmp_path, capsys) -> None:
    path = write(tmp_path, "broker_url = amqps://agent:s3cret@rabbit:5671/%2F\n")
    assert check_command(str(path), as_json=True) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["broker_url"] == ["amqps://agent:***@rabbit:5671/%2F"]
    assert "s3cret" not in out


@pytest.mark.usefixtures("clean_environ")
def test_check_errors_exit_2(tmp_path, capsys) -> None:
    path = write(tmp_path, "hold_tme = 5\nroute_protocol = 2\n")
    assert check_command(str(path), as_json=False) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"error: {path}:1: hold_tme: unknown key (did you mean hold_time?)",
        f"error: {path}:2: route_protocol: 2 is iproute2's reserved protocol 'kernel': "
        "meshroute needs a number of its own (default 201)",
    ]


@pytest.mark.usefixtures("clean_environ")
def test_check_through_the_cli(tmp_path: pathlib.Path) -> None:
    from click.testing import CliRunner

    from meshroute.cli import cli

    runner = CliRunner()
    good = runner.invoke(cli, ["check", "--json", str(LISTING_4B)])
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout)["openvpn_mgmt_port"] == 5656
    bad = runner.invoke(cli, ["check", str(write(tmp_path, "hold_time = 1\n"))])
    assert bad.exit_code == 2
    assert "error: " in bad.stderr and "2 x announce_interval" in bad.stderr


# --- docs --------------------------------------------------------------------------


def test_docs_embed_the_key_reference_generated_from_the_fields() -> None:
    """docs/configuration.md cannot drift: its table is key_reference() verbatim."""
    docs = DOCS.read_text()
    assert key_reference() in docs
    for f in fields(Config):
        assert f"| `{f.name}` |" in docs
