"""Keep the files in deploy/ honest: they must agree with the code that reads them.

Cheap checks only (no broker, no systemd, no OpenVPN): the example config loads, the
OpenVPN snippet's hook lines are valid ``meshroute hook`` calls aimed at the config's
socket, and the RabbitMQ setup script parses, refuses bad agent names and grants
exactly the permissions the lab grants (meshroute.lab.rabbitmq.agent_permissions).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from meshroute.config.schema import load_config
from meshroute.lab.rabbitmq import agent_permissions
from meshroute.openvpn import hook

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CONFIG = DEPLOY / "meshroute.conf.example"
SNIPPET = DEPLOY / "openvpn" / "server-snippet.conf"
SETUP = DEPLOY / "rabbitmq" / "setup-agent-user.sh"
UNIT = DEPLOY / "systemd" / "meshroute-agent.service"


def example_config():
    return load_config(CONFIG, environ={}).config


def snippet_directives() -> list[list[str]]:
    """The snippet's active directives, split the way OpenVPN splits a config line."""
    lines = SNIPPET.read_text().splitlines()
    return [shlex.split(line) for line in lines if line.strip() and line[0] not in "#;"]


def test_example_config_loads_with_the_articles_networks() -> None:
    config = example_config()
    assert config.name == "vpnsrvA"
    assert config.client_networks == (ipaddress.ip_network("10.100.100.0/24"),)
    assert config.next_hop == ipaddress.IPv4Address("10.200.200.1")
    assert config.mgmt_interface == "tap1"
    assert len(config.broker_url) == 3
    assert all(url.startswith("amqps://vpnsrvA:") for url in config.broker_url)
    assert config.tls_cert_file is not None and config.tls_key_file is not None


def test_openvpn_snippet_plugin_sends_to_the_configs_socket() -> None:
    config = example_config()
    [plugin] = [d for d in snippet_directives() if d[0] == "plugin"]
    assert plugin[1].endswith("/meshroute-plugin.so")
    assert plugin[2:] == [str(config.hook_socket)]


def fallback_directives() -> list[list[str]]:
    """The snippet's commented-out fallback (script hooks), as OpenVPN would split it."""
    lines = SNIPPET.read_text().splitlines()
    return [shlex.split(line[1:]) for line in lines if line.startswith("#") and line[1:2].isalpha()]


def test_openvpn_snippet_fallback_hooks_are_valid_calls_to_the_configs_socket() -> None:
    config = example_config()
    kinds = ("learn-address", "client-connect", "client-disconnect")
    commands = {d[0]: d[1] for d in fallback_directives() if d[0] in kinds}
    assert set(commands) == set(kinds)
    assert ["script-security", "2"] in fallback_directives()
    openvpn_args = {"learn-address": ["add", "10.100.100.95", "client1"]}
    env = {"ifconfig_pool_remote_ip": "10.100.100.95", "common_name": "client1"}
    for kind, command in commands.items():
        argv = command.split()  # OpenVPN splits a script command at spaces
        assert argv[0].endswith("/meshroute") and argv[1] == "hook"
        assert argv[2:4] == ["--socket", str(config.hook_socket)]
        assert hook.build_event(argv[4:] + openvpn_args.get(kind, []), env, 0)["event"] == kind


def test_openvpn_snippet_management_matches_the_config() -> None:
    config = example_config()
    management = next(d for d in snippet_directives() if d[0] == "management")
    assert f"{management[1]}:{management[2]}" == config.openvpn_mgmt
    assert management[3] == str(config.openvpn_mgmt_pass_file)


def test_setup_script_is_valid_posix_sh() -> None:
    done = subprocess.run(["sh", "-n", str(SETUP)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def run_setup(*args: str) -> subprocess.CompletedProcess[str]:
    """Dry run (-d): prints the rabbitmqctl commands, never runs one. ``--`` so that
    a name starting with "-" reaches the name check instead of getopts."""
    return subprocess.run(
        ["sh", str(SETUP), "-d", "--", *args], capture_output=True, text=True, timeout=10
    )


@pytest.mark.parametrize("name", ["", ".dot", "-dash", "has space", "a$", "a\nb", "x" * 64])
def test_setup_script_refuses_bad_agent_names(name: str) -> None:
    done = run_setup(name, "secret")
    assert done.returncode == 2
    assert "invalid agent name" in done.stderr and "rabbitmqctl" not in done.stdout


@pytest.mark.parametrize("name", ["vpnsrvA", "vpn.srv-1_b", "x" * 63])
def test_setup_script_grants_what_the_lab_grants(name: str) -> None:
    done = run_setup(name, "secret")
    assert done.returncode == 0, done.stderr
    grant = next(line for line in done.stdout.splitlines() if "set_permissions" in line)
    configure, write, read = shlex.split(grant)[-3:]
    expected = agent_permissions(name)
    assert (configure, write, read) == (expected.configure, expected.write, expected.read)
    assert re.fullmatch(write, f"meshroute.{name}") and not re.fullmatch(read, "meshroute.other")
    assert "secret" not in done.stdout  # the dry run masks the password


def test_setup_script_reads_the_password_from_stdin() -> None:
    done = subprocess.run(
        ["sh", str(SETUP), "-d", "vpnsrvB"], input="pw\n", capture_output=True, text=True
    )
    assert done.returncode == 0 and "'add_user' 'vpnsrvB' '***'" in done.stdout
    empty = subprocess.run(["sh", str(SETUP), "-d", "vpnsrvB"], input="", capture_output=True)
    assert empty.returncode == 2


def test_systemd_unit_runs_the_agent_with_only_net_admin() -> None:
    unit = dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines() if re.match(r"^\w+=", line)
    )
    assert unit["ExecStart"] == "/usr/local/bin/meshroute agent /etc/meshroute/meshroute.conf"
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["KillSignal"] == "SIGTERM" and unit["Restart"] == "on-failure"
    assert unit["CapabilityBoundingSet"] == unit["AmbientCapabilities"] == "CAP_NET_ADMIN"
    assert unit["RuntimeDirectory"] == "meshroute"
    assert str(example_config().hook_socket).startswith("/run/meshroute/")
