"""The hook (in-process and as the real console script) against a real HookReceiver.

Also: the datagram validation, and the receiver's robustness (bad input, a failing
handler, stale and live socket files).
"""

from __future__ import annotations

import json
import os
import queue
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshroute.openvpn.events import HookEvent, IgnoredEvent, parse_hook_datagram
from meshroute.openvpn.hook import build_event, encode_json, main
from meshroute.openvpn.hook_receiver import HookReceiver, HookReceiverError

REPO = Path(__file__).resolve().parents[2]
MESHROUTE = REPO / ".venv" / "bin" / "meshroute"

CONNECT_ENV = {
    "common_name": "client1",
    "ifconfig_pool_remote_ip": "10.100.100.95",
    "ifconfig_pool_remote_ip6": "fd00:100::5f",
    "time_unix": "1795696544",
    "trusted_ip": "198.51.100.2",
    "trusted_port": "58528",
    "script_type": "client-connect",
}


class Collector:
    """A receiver plus the events it delivered, in order."""

    def __init__(self, path: Path) -> None:
        self.events: queue.Queue[HookEvent] = queue.Queue()
        self.receiver = HookReceiver(path, self.events.put)
        self.path = path

    def next(self, timeout: float = 5.0) -> HookEvent:
        return self.events.get(timeout=timeout)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(tmp_path / "run" / "hook.sock")
    yield c
    c.receiver.close()


def test_learn_address_add_in_process(collector: Collector) -> None:
    args = ["--socket", str(collector.path), "learn-address", "add", "10.8.0.6", "client1"]
    assert main(args, {"time_unix": "1795696544"}) == 0
    event = collector.next()
    assert (event.kind, event.op, event.common_name) == ("learn-address", "add", "client1")
    assert event.address == IPv4Address("10.8.0.6")
    assert event.connected_since == 1795696544
    assert event.received_ms is not None and event.received_ms >= event.sent_ms - 1000


def test_learn_address_delete_ipv6_has_no_common_name(collector: Collector) -> None:
    main([f"--socket={collector.path}", "learn-address", "delete", "fd00:100::5f"], {})
    event = collector.next()
    assert (event.op, event.address, event.common_name) == (
        "delete",
        IPv6Address("fd00:100::5f"),
        None,
    )


def test_client_connect_and_disconnect_read_the_environment(collector: Collector) -> None:
    env = {"MESHROUTE_HOOK_SOCKET": str(collector.path), **CONNECT_ENV}
    assert main(["client-connect", "/tmp/openvpn_cc_x.tmp"], env) == 0
    assert main(["client-disconnect"], {**env, "script_type": "client-disconnect"}) == 0
    connect, disconnect = collector.next(), collector.next()
    assert (connect.kind, connect.op) == ("client-connect", "connect")
    assert (disconnect.kind, disconnect.op) == ("client-disconnect", "disconnect")
    for event in (connect, disconnect):
        assert event.common_name == "client1"
        assert event.address == IPv4Address("10.100.100.95")
        assert event.address6 == IPv6Address("fd00:100::5f")
        assert event.connected_since == 1795696544
        assert event.real_address == "198.51.100.2:58528"


def test_console_script_delivers_and_exits_zero(collector: Collector) -> None:
    proc = subprocess.run(
        [str(MESHROUTE), "hook", "--socket", str(collector.path), "learn-address", "add",
         "10.8.0.7", "client2"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert (proc.returncode, proc.stderr) == (0, "")
    event = collector.next()
    assert (event.address, event.common_name) == (IPv4Address("10.8.0.7"), "client2")


def test_console_script_uses_env_socket(collector: Collector) -> None:
    env = {**os.environ, "MESHROUTE_HOOK_SOCKET": str(collector.path), **CONNECT_ENV}
    proc = subprocess.run(
        [str(MESHROUTE), "hook", "client-connect", "/tmp/x"],
        env=env, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0
    assert collector.next().kind == "client-connect"


def test_hook_imports_nothing_heavy(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        f"sys.argv = ['meshroute', 'hook', '--socket', {str(tmp_path / 'none')!r}, "
        "'learn-address', 'add', '10.8.0.6', 'c1']\n"
        "from meshroute.entry import main\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )

    def modules(program: str) -> set[str]:
        proc = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=30, check=True
        )
        return set(proc.stdout.split())

    baseline = modules("import sys; print(' '.join(sorted(sys.modules)))")
    loaded = modules(code)
    added = loaded - baseline
    assert "meshroute.openvpn.hook" in added
    assert not {"click", "pika", "pyroute2"} & loaded
    # ipaddress may come with the interpreter (the editable install's finder); the hook
    # itself must not add it, nor logging, dataclasses or the rest of meshroute.
    assert not {"ipaddress", "logging", "dataclasses", "meshroute.core.model"} & added
    assert not {"json", "socket", "typing", "collections.abc"} & added  # ~10 ms under -S
    assert {m for m in added if m.startswith("meshroute")} == {
        "meshroute",
        "meshroute.entry",
        "meshroute.openvpn",
        "meshroute.openvpn.hook",
    }


@pytest.mark.parametrize(
    "state",
    ["missing", "stale", "full"],
)
def test_agent_down_or_stuck_still_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], state: str
) -> None:
    path = tmp_path / "hook.sock"
    holder = None
    if state != "missing":
        holder = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        holder.bind(str(path))
        if state == "stale":
            holder.close()  # the file stays, nobody listens: ECONNREFUSED
    args = ["--socket", str(path), "learn-address", "add", "10.8.0.6", "c1"]
    # "full": nobody reads, so the receive queue fills and sends would block
    rounds = 2000 if state == "full" else 1
    assert all(main(args, {}) == 0 for _ in range(rounds))
    err = capsys.readouterr().err
    expected = {"missing": "no socket", "stale": "nobody listening", "full": "queue full"}
    assert expected[state] in err and "event dropped" in err
    if holder is not None:
        holder.close()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--socket"],
        ["learn-address"],
        ["learn-address", "add"],
        ["learn-address", "remove", "10.8.0.6", "c1"],
        ["learn-address", "add", "10.8.0.6", "c1", "extra"],
        ["tls-verify", "0", "CN=x"],
    ],
)
def test_bad_arguments_print_usage_and_exit_zero(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # exit 0 even here: OpenVPN treats a non-zero learn-address add as "reject".
    assert main(args, {}) == 0
    assert "usage: meshroute hook" in capsys.readouterr().err


@given(st.dictionaries(st.sampled_from(["a", "common_name", "x_y"]),
                       st.none() | st.integers(0, 2**63) | st.text()))  # fmt: skip
def test_encode_json_round_trips_through_the_json_module(obj: dict[str, object]) -> None:
    decoded = json.loads(encode_json(obj).decode("utf-8"))
    expected = {
        k: v.encode("utf-8", "replace").decode("utf-8") if isinstance(v, str) else v
        for k, v in obj.items()
    }
    assert decoded == expected


def test_hook_script_runs_without_site_packages(collector: Collector) -> None:
    script = REPO / "meshroute" / "openvpn" / "hook.py"
    argv = [sys.executable, "-S", str(script), "--socket", str(collector.path),
            "learn-address", "update", "10.8.0.9", 'we"ird\\name']  # fmt: skip
    assert subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0
    event = collector.next()
    assert (event.op, event.common_name) == ("update", 'we"ird\\name')


def test_build_event_sends_env_strings_verbatim() -> None:
    event = build_event(["client-disconnect"], {"common_name": "c", "time_unix": ""}, 5)
    assert event["time_unix"] is None and event["address"] is None
    assert json.loads(json.dumps(event))["ts_ms"] == 5


def datagram(**fields: object) -> bytes:
    base: dict[str, object] = {
        "v": 1,
        "event": "learn-address",
        "op": "add",
        "address": "10.8.0.6",
        "common_name": "c1",
        "ts_ms": 1,
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"[1]", "not a JSON object"),
        (b"x" * 5000, "too large"),
        (datagram(v=2), "unsupported hook protocol version"),
        (datagram(v=True), "unsupported hook protocol version"),
        (datagram(event="up"), "'event' must be one of"),
        (datagram(op="connect"), "'op' must be one of add, update, delete"),
        (datagram(address="10.8.0.300"), "not an IP address"),
        (datagram(address=...), "missing 'address'"),
        (datagram(common_name=None), "missing 'common_name'"),
        (datagram(common_name="bad\nname"), "bad common name"),
        (datagram(common_name=7), "must be a string"),
        (datagram(ts_ms="1"), "'ts_ms' must be a positive integer"),
        (datagram(time_unix="-5"), "'time_unix' must be decimal seconds"),
        (datagram(event="client-connect", op="disconnect"), "'op' must be one of connect"),
        (datagram(event="client-connect", op="connect", address="fd00::1"), "not an IPv4"),
        (
            datagram(event="client-connect", op="connect", trusted_ip="1.2.3.4", trusted_port="x"),
            "'trusted_port' must be a port number",
        ),
    ],
)
def test_parse_rejects_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hook_datagram(data)


@pytest.mark.parametrize(
    "data",
    [
        datagram(address="00:ff:01:02:03:04"),
        datagram(event="client-connect", op="connect", address=None),
    ],
)
def test_parse_ignores_what_is_not_a_client_address(data: bytes) -> None:
    with pytest.raises(IgnoredEvent):
        parse_hook_datagram(data)


def test_parse_accepts_host_prefix_and_unknown_keys() -> None:
    event = parse_hook_datagram(datagram(address="10.8.0.6/32", future="x"), received_ms=9)
    assert (event.address, event.received_ms) == (IPv4Address("10.8.0.6"), 9)


def test_receiver_survives_bad_input_and_a_failing_handler(tmp_path: Path) -> None:
    seen: queue.Queue[HookEvent] = queue.Queue()

    def handler(event: HookEvent) -> None:
        if event.common_name == "boom":
            raise RuntimeError("handler bug")
        seen.put(event)

    path = tmp_path / "hook.sock"
    with HookReceiver(path, handler) as receiver:
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        mac, boom = datagram(address="00:ff:01:02:03:04"), datagram(common_name="boom")
        for data in (b"garbage", mac, boom, b"", datagram(common_name="ok")):
            sender.sendto(data, str(path))
        sender.close()
        assert seen.get(timeout=5).common_name == "ok"
        stats = receiver.stats
        assert (stats.received, stats.bad, stats.ignored, stats.handler_errors) == (5, 2, 1, 1)
        assert stats.delivered == 1
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert not path.exists()


def test_receiver_replaces_a_stale_socket_but_never_a_live_one(tmp_path: Path) -> None:
    path = tmp_path / "hook.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(path))
    stale.close()
    with HookReceiver(path, lambda event: None):
        with pytest.raises(HookReceiverError, match="in use"):
            HookReceiver(path, lambda event: None)
        assert path.exists()
    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(HookReceiverError, match="not a socket"):
        HookReceiver(regular, lambda event: None)
    assert regular.read_text() == "keep me"


def test_receiver_close_is_prompt_and_idempotent(tmp_path: Path) -> None:
    import time

    receiver = HookReceiver(tmp_path / "hook.sock", lambda event: None)
    start = time.monotonic()
    receiver.close()
    receiver.close()
    assert time.monotonic() - start < 0.5


def test_the_hook_and_the_bus_share_one_common_name_limit() -> None:
    from meshroute.core.codec import MAX_COMMON_NAME

    def datagram(cn: str) -> bytes:
        return encode_json(build_event(["learn-address", "add", "10.8.0.6", cn], {}, 1))

    assert parse_hook_datagram(datagram("c" * MAX_COMMON_NAME)).common_name is not None
    with pytest.raises(ValueError, match=f"at most {MAX_COMMON_NAME}"):
        parse_hook_datagram(datagram("c" * (MAX_COMMON_NAME + 1)))


def test_a_flood_of_bad_datagrams_is_counted_by_reason_and_logged_a_few_times(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = HookReceiver(tmp_path / "hook.sock", lambda event: None)
    try:
        with caplog.at_level("WARNING", logger="meshroute.openvpn.hook_receiver"):
            for _ in range(10_000):
                receiver.handle(b"{not json")
            for _ in range(10_000):
                receiver.handle(b'{"v":1,"event":"learn-address","op":"zap","ts_ms":1}')
    finally:
        receiver.close()
    assert receiver.stats.bad == 20_000
    assert receiver.stats.bad_by_reason == {"not_json": 10_000, "op": 10_000}
    bad_lines = [r for r in caplog.records if r.getMessage().startswith("bad hook datagram")]
    assert 1 <= len(bad_lines) <= 5


def test_hook_help_prints_the_usage_and_exits_0() -> None:
    for argv in (["hook", "--help"], ["hook", "-h"]):
        done = subprocess.run(
            [sys.executable, "-c", "from meshroute.entry import main; main()", *argv],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "learn-address" in done.stdout and "unknown event" not in done.stderr


def test_a_common_name_spelled_like_help_is_still_an_event(collector: Collector) -> None:
    args = ["--socket", str(collector.path), "learn-address", "add", "10.8.0.6", "--help"]
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from meshroute.entry import main; main()",
         "hook", *args], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0
    assert collector.next().common_name == "--help"
