"""meshroute's OpenVPN plugin, called through its C API as OpenVPN calls it.

The contract is the script hook's datagram: for the same event the plugin must send
the very bytes ``meshroute.openvpn.hook`` sends (apart from the send time), and the
agent's parser must accept them. And it must never cost OpenVPN anything: every
call returns success, whatever happens to the agent, and never waits.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshroute.openvpn import hook
from meshroute.openvpn.events import parse_hook_datagram
from tests.functional.plugin_fixtures import (
    CLIENT_CONNECT_V2,
    CLIENT_DISCONNECT,
    ERROR,
    LEARN_ADDRESS,
    PLOG_WARN,
    SUCCESS,
    PluginHost,
    build_plugin,
)

pytestmark = pytest.mark.functional

TS = re.compile(rb',"ts_ms":(\d+)\}$')
SESSION_ENV = {
    "common_name": "cli1",
    "ifconfig_pool_remote_ip": "10.100.100.130",
    "ifconfig_pool_remote_ip6": "fd00:100::82",
    "time_unix": "1795696544",
    "trusted_ip": "198.51.100.2",
    "trusted_port": "58528",
    "script_type": "client-connect",
    "untrusted_ip": "198.51.100.2",
}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "hook.sock"))
    sock.settimeout(2)
    yield sock
    sock.close()


@pytest.fixture
def plugin(library: Path, tmp_path: Path) -> Iterator[PluginHost]:
    host = PluginHost(library, str(tmp_path / "hook.sock"))
    assert host.open() == SUCCESS
    yield host
    host.close()


def script_bytes(args: list[str], env: dict[str, str], ts_ms: int) -> bytes:
    """What the script hook sends for the same call (the contract)."""
    return hook.encode_json(hook.build_event(args, env, ts_ms))


def split_ts(data: bytes) -> tuple[bytes, int]:
    match = TS.search(data)
    assert match, data
    return data[: match.start()], int(match.group(1))


def same_as_script(data: bytes, args: list[str], env: dict[str, str]) -> None:
    body, ts = split_ts(data)
    assert abs(ts - time.time() * 1000) < 5000
    assert data == script_bytes(args, env, ts)
    assert body  # the rest is compared byte for byte above


def test_open_subscribes_to_the_three_events_and_is_quiet(plugin: PluginHost) -> None:
    assert plugin.type_mask == (1 << LEARN_ADDRESS) | (1 << CLIENT_CONNECT_V2) | (
        1 << CLIENT_DISCONNECT
    )


def test_learn_address_add_and_delete_match_the_script_hook(
    plugin: PluginHost, receiver: socket.socket
) -> None:
    env = {"time_unix": "1795696544", "common_name": "cli1"}
    assert plugin.call(LEARN_ADDRESS, ["add", "10.100.100.130", "cli1"], env) == SUCCESS
    add = receiver.recv(8192)
    same_as_script(add, ["learn-address", "add", "10.100.100.130", "cli1"], env)
    event = parse_hook_datagram(add)
    assert (event.kind, event.op, str(event.address), event.common_name) == (
        "learn-address", "add", "10.100.100.130", "cli1")  # fmt: skip
    assert event.connected_since == 1795696544

    assert plugin.call(LEARN_ADDRESS, ["delete", "fd00:100::82"], {}) == SUCCESS
    delete = receiver.recv(8192)
    same_as_script(delete, ["learn-address", "delete", "fd00:100::82"], {})
    assert parse_hook_datagram(delete).common_name is None


def test_connect_and_disconnect_match_the_script_hook(
    plugin: PluginHost, receiver: socket.socket
) -> None:
    assert plugin.call(CLIENT_CONNECT_V2, [], SESSION_ENV) == SUCCESS
    connect = receiver.recv(8192)
    same_as_script(connect, ["client-connect"], SESSION_ENV)
    event = parse_hook_datagram(connect)
    assert (event.kind, event.op, str(event.address), str(event.address6)) == (
        "client-connect", "connect", "10.100.100.130", "fd00:100::82")  # fmt: skip
    assert event.real_address == "198.51.100.2:58528"

    env6 = {k: v for k, v in SESSION_ENV.items() if k != "trusted_ip"}
    env6["trusted_ip6"] = "2001:db8::7"
    assert plugin.call(CLIENT_DISCONNECT, [], env6) == SUCCESS
    disconnect = receiver.recv(8192)
    same_as_script(disconnect, ["client-disconnect"], env6)
    assert parse_hook_datagram(disconnect).real_address == "[2001:db8::7]:58528"


def test_escapes_and_bad_utf8_as_the_script_hook_does(
    plugin: PluginHost, receiver: socket.socket
) -> None:
    raw = b'we"ird\\na\x01me\x7f-\xc3\xa9-\xe2\x82\xac-\xf0\x9f\x98\x80-\xff\xc3(-\xed\xa0\x80'
    env = {**SESSION_ENV, "common_name": raw}
    assert plugin.call(CLIENT_CONNECT_V2, [], env) == SUCCESS
    data = receiver.recv(8192)
    # OpenVPN's bytes reach a script as os.environ does: undecodable bytes escaped.
    as_script = {**SESSION_ENV, "common_name": os.fsdecode(raw)}
    same_as_script(data, ["client-connect"], as_script)
    data.decode("utf-8")  # always valid UTF-8
    assert b"\\u0001" in data and "-é-€-😀-??(-???".encode() in data


def test_empty_values_are_null(plugin: PluginHost, receiver: socket.socket) -> None:
    env = {**SESSION_ENV, "ifconfig_pool_remote_ip6": "", "trusted_port": ""}
    plugin.call(CLIENT_CONNECT_V2, [], env)
    data = receiver.recv(8192)
    same_as_script(data, ["client-connect"], env)
    assert b'"address6":null' in data


def test_bad_arguments_or_oversized_values_are_dropped_not_failed(
    plugin: PluginHost, receiver: socket.socket
) -> None:
    receiver.settimeout(0.2)
    assert plugin.call(LEARN_ADDRESS, ["flap", "10.0.0.1", "x"], {}) == SUCCESS
    assert plugin.call(LEARN_ADDRESS, ["add"], {}) == SUCCESS
    huge = {**SESSION_ENV, "common_name": "x" * 1025}
    assert plugin.call(CLIENT_CONNECT_V2, [], huge) == SUCCESS
    with pytest.raises(TimeoutError):
        receiver.recv(8192)
    warnings = [fmt for flags, fmt in plugin.logs if flags & PLOG_WARN]
    assert len(warnings) == 1  # one line for the first drop of a run, not one per drop
    # A value of 1024 bytes is the bound: sent whole (the agent's parser then refuses a
    # common name over 256 characters; that is its rule, not the plugin's).
    fits = {**SESSION_ENV, "common_name": "y" * 1024}
    assert plugin.call(CLIENT_CONNECT_V2, [], fits) == SUCCESS
    receiver.settimeout(2)
    assert b'"common_name":"' + b"y" * 1024 + b'"' in receiver.recv(8192)
    assert any("reached again" in fmt for fmt in plugin.formats())


def test_no_agent_then_agent_then_agent_restarted(library: Path, tmp_path: Path) -> None:
    path = tmp_path / "hook.sock"
    host = PluginHost(library, str(path))
    try:
        assert host.open() == SUCCESS  # no agent yet: a note, not an error
        assert host.call(LEARN_ADDRESS, ["add", "10.1.0.1", "a"], {}) == SUCCESS
        for generation in range(2):
            agent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            agent.bind(str(path))
            agent.settimeout(2)
            assert host.call(LEARN_ADDRESS, ["add", f"10.1.0.{2 + generation}", "a"], {}) == 0
            assert parse_hook_datagram(agent.recv(8192)).address is not None
            agent.close()  # the agent stops; its next start binds a new socket
            path.unlink()
        assert host.call(LEARN_ADDRESS, ["add", "10.1.0.9", "a"], {}) == SUCCESS
    finally:
        host.close()
    formats = host.formats()
    assert sum("not reached" in f for f in formats) == 2
    assert sum("reached again" in f for f in formats) == 1
    assert "closing" in formats[-1]


def test_a_stuck_agent_never_blocks_openvpn(plugin: PluginHost, receiver: socket.socket) -> None:
    """The agent reads nothing: the socket queue fills and the rest are dropped, fast."""
    started = time.monotonic()
    results = [
        plugin.call(LEARN_ADDRESS, ["add", f"10.2.{i // 250}.{i % 250 + 1}", "c"], {})
        for i in range(2000)
    ]
    took = time.monotonic() - started
    assert set(results) == {SUCCESS}
    receiver.setblocking(False)
    queued = 0
    while True:
        try:
            receiver.recv(8192)
        except BlockingIOError:
            break
        queued += 1
    assert 0 < queued < 2000  # the kernel's queue limit, not a wait
    assert took < 10  # 2,000 calls; a blocking send would hang here forever
    assert any("queue full" in f or "not reached" in f for f in plugin.formats())


def test_bad_plugin_lines_fail_at_start(library: Path, tmp_path: Path) -> None:
    assert PluginHost(library, "relative/hook.sock").open() == ERROR
    assert PluginHost(library, "/" + "x" * 120).open() == ERROR
    assert PluginHost(library, str(tmp_path / "a"), "extra").open() == ERROR
    default = PluginHost(library)
    assert default.open() == SUCCESS  # /run/meshroute/hook.sock
    default.close()
