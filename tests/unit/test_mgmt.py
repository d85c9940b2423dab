"""ManagementClient against a stateful fake OpenVPN management server (TCP and unix).

The fake speaks what OpenVPN 2.6 was seen to speak: ``ENTER PASSWORD:`` without a
newline, a re-prompt on a wrong password (or ``ERROR: bad password`` in the older
style), the ``>INFO`` banner, real-time ``>`` lines, ``status 3`` ... ``END``, and it
serves one client at a time.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest

from meshroute.openvpn.mgmt import ManagementClient, MgmtEndpoint, MgmtError, read_password_file
from meshroute.openvpn.status import parse_status

FIXTURES = Path(__file__).parent.parent / "fixtures" / "status"
STATUS = (FIXTURES / "real-2.6.14-status3.txt").read_text().replace("\n", "\r\n")
BANNER = b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n"


@dataclass
class FakeManagement:
    """One-client-at-a-time management server; knobs set before or between calls."""

    listener: socket.socket
    password: str | None = None
    status: str = STATUS
    delay: float = 0.0  # before every answer
    old_style_bad_password: bool = False
    notify_mid_status: bool = False
    commands: list[str] = field(default_factory=list)
    connections: int = 0
    closed_cleanly: int = 0

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn, contextlib.suppress(OSError):
                self._session(conn, conn.makefile("rb"))

    def _send(self, conn: socket.socket, data: bytes) -> None:
        if self.delay:
            time.sleep(self.delay)
        conn.sendall(data)

    def _session(self, conn: socket.socket, reader: BinaryIO) -> None:
        if self.password is not None and not self._login(conn, reader):
            return
        self._send(conn, BANNER + b">HOLD:Waiting for hold release:0\r\n")
        for raw in reader:
            command = raw.decode().strip()
            self.commands.append(command)
            if command == "quit":
                self.closed_cleanly += 1
                return
            if command.startswith("status"):
                self._status(conn)
            else:
                self._send(conn, b"ERROR: unknown command, enter 'help' for more options\r\n")

    def _login(self, conn: socket.socket, reader: BinaryIO) -> bool:
        for _ in range(3):
            self._send(conn, b"ENTER PASSWORD:")
            line = reader.readline()
            if not line:
                return False
            if line.decode().rstrip("\r\n") == self.password:
                self._send(conn, b"SUCCESS: password is correct\r\n")
                return True
            if self.old_style_bad_password:
                self._send(conn, b"ERROR: bad password\r\n")
        return False

    def _status(self, conn: socket.socket) -> None:
        body = self.status.encode()
        if self.notify_mid_status:
            cut = body.index(b"HEADER\tROUTING")
            body = body[:cut] + b">BYTECOUNT_CLI:0,100,200\r\n" + body[cut:]
        # Send in small pieces so the client must reassemble lines across reads.
        for i in range(0, len(body), 100):
            self._send(conn, body[i : i + 100])


def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll: the fake counts a session's end on its own thread, after the client left."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


Fake = tuple[FakeManagement, MgmtEndpoint]


def start(listener: socket.socket) -> FakeManagement:
    fake = FakeManagement(listener)
    threading.Thread(target=fake.serve, daemon=True).start()
    return fake


@pytest.fixture
def tcp_fake() -> Iterator[Fake]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    yield start(listener), MgmtEndpoint.tcp("127.0.0.1", listener.getsockname()[1])
    listener.close()


@pytest.fixture
def unix_fake(tmp_path: Path) -> Iterator[Fake]:
    path = tmp_path / "mgmt.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    yield start(listener), MgmtEndpoint.unix(path)
    listener.close()


@pytest.mark.parametrize("fixture", ["tcp_fake", "unix_fake"])
def test_fetch_status_with_password(fixture: str, request: pytest.FixtureRequest) -> None:
    fake, endpoint = request.getfixturevalue(fixture)
    fake.password = "s3cret"
    text = ManagementClient(endpoint, "s3cret", timeout=2).fetch_status()
    (session,) = parse_status(text).sessions
    assert session.common_name == "cli1"
    assert text.endswith("END\n") and ">" not in text
    assert eventually(lambda: fake.closed_cleanly == 1)
    assert fake.commands == ["status 3", "quit"]


def test_fetch_status_without_password_and_repeatedly(tcp_fake: Fake) -> None:
    fake, endpoint = tcp_fake
    client = ManagementClient(endpoint, None, timeout=2)
    first, second = client.fetch_status(), client.fetch_status()
    assert first == second == STATUS.replace("\r\n", "\n")
    assert eventually(lambda: fake.closed_cleanly == 2)
    assert fake.connections == 2


def test_configured_password_unused_when_not_asked(tcp_fake: Fake) -> None:
    _, endpoint = tcp_fake
    assert "END" in ManagementClient(endpoint, "spare", timeout=2).fetch_status()


def test_notification_inside_status_is_skipped(unix_fake: Fake) -> None:
    fake, endpoint = unix_fake
    fake.notify_mid_status = True
    text = ManagementClient(endpoint, None, timeout=2).fetch_status()
    assert "BYTECOUNT" not in text
    assert len(parse_status(text).sessions) == 1


@pytest.mark.parametrize("old_style", [False, True])
def test_wrong_password(tcp_fake: Fake, old_style: bool) -> None:
    fake, endpoint = tcp_fake
    fake.password, fake.old_style_bad_password = "right", old_style
    with pytest.raises(MgmtError, match=rf"{endpoint}: login: wrong password"):
        ManagementClient(endpoint, "wrong", timeout=2).fetch_status()


def test_password_needed_but_none_configured(unix_fake: Fake) -> None:
    fake, endpoint = unix_fake
    fake.password = "right"
    with pytest.raises(MgmtError, match="asks for a password and none is configured"):
        ManagementClient(endpoint, None, timeout=2).fetch_status()


def test_slow_server_times_out_within_the_deadline(tcp_fake: Fake) -> None:
    fake, endpoint = tcp_fake
    fake.delay = 0.2  # per piece: the whole answer would take seconds
    start = time.monotonic()
    with pytest.raises(MgmtError, match=r"reading status: timed out after 0.5s$"):
        ManagementClient(endpoint, None, timeout=0.5).fetch_status()
    assert time.monotonic() - start < 1.0


def test_second_client_while_one_is_connected_times_out(tcp_fake: Fake) -> None:
    _, endpoint = tcp_fake
    hog = socket.create_connection((endpoint.host, endpoint.port))
    try:
        with pytest.raises(MgmtError, match="another management client connected"):
            ManagementClient(endpoint, None, timeout=0.3).fetch_status()
    finally:
        hog.close()


def test_refused_and_missing_socket_name_the_endpoint(tmp_path: Path) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(MgmtError, match=rf"tcp:127.0.0.1:{port}: connecting: connection refused"):
        ManagementClient(("tcp", "127.0.0.1", port), None, timeout=1).fetch_status()
    missing = tmp_path / "none.sock"
    with pytest.raises(MgmtError, match=rf"unix:{missing}: connecting: no such socket"):
        ManagementClient(("unix", str(missing)), None, timeout=1).fetch_status()


def test_error_answer_to_status_is_raised(tcp_fake: Fake) -> None:
    fake, endpoint = tcp_fake
    fake.status = "ERROR: status command failed\r\n"
    with pytest.raises(MgmtError, match="reading status: ERROR: status command failed"):
        # the fake then never sends END: the error must be seen before the deadline
        ManagementClient(endpoint, None, timeout=0.5).fetch_status()


def test_endpoint_forms() -> None:
    assert MgmtEndpoint.parse("127.0.0.1:7505") == MgmtEndpoint.tcp("127.0.0.1", 7505)
    assert MgmtEndpoint.parse("tcp:[::1]:7505") == MgmtEndpoint.tcp("::1", 7505)
    assert MgmtEndpoint.parse("/run/openvpn/mgmt.sock") == MgmtEndpoint.unix(
        "/run/openvpn/mgmt.sock"
    )
    assert MgmtEndpoint.coerce(("unix", "/x")) == MgmtEndpoint.parse("unix:/x")
    assert str(MgmtEndpoint.tcp("127.0.0.1", 7505)) == "tcp:127.0.0.1:7505"
    for bad in ("nonsense", "host:port", ("tcp", "h"), ("udp", "h", 1)):
        with pytest.raises(ValueError):
            MgmtEndpoint.coerce(bad)


def test_read_password_file(tmp_path: Path) -> None:
    good = tmp_path / "pw"
    good.write_text("s3cret word\nignored\n")
    assert read_password_file(good) == "s3cret word"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(MgmtError, match="empty first line"):
        read_password_file(empty)
    with pytest.raises(MgmtError, match="cannot read"):
        read_password_file(tmp_path / "missing")
