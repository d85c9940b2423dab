"""ManagementClient against a stateful fake OpenVPN management server (TCP and unix).

The fake speaks what OpenVPN 2.6 was seen to speak: ``ENTER PASSWORD:`` without a
newline, a re-prompt on a wrong password (or ``ERROR: bad password`` in the older
style), the ``>INFO`` banner, real-time ``>`` lines, ``status 3`` ... ``END``, and it
serves one client at a time.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshroute.openvpn.mgmt import ManagementClient, MgmtEndpoint, MgmtError, read_password_file
from meshroute.openvpn.status import parse_status
from tests.fakes import STATUS, FakeManagement


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
    return FakeManagement(listener).start()


@pytest.fixture
def tcp_fake() -> Iterator[Fake]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    fake = start(listener)
    yield fake, MgmtEndpoint.tcp("127.0.0.1", listener.getsockname()[1])
    fake.close()


@pytest.fixture
def unix_fake(tmp_path: Path) -> Iterator[Fake]:
    path = tmp_path / "mgmt.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    fake = start(listener)
    yield fake, MgmtEndpoint.unix(path)
    fake.close()


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


@pytest.mark.parametrize("fixture", ["tcp_fake", "unix_fake"])
def test_a_closed_fake_stops_serving_for_good(fixture: str, request: pytest.FixtureRequest) -> None:
    """The harness's own guard: close() ends the thread blocked in accept(). A thread
    left there would hold the old socket and could, once its descriptor number is
    reused, answer a later test's agent with this test's clients."""
    fake, endpoint = request.getfixturevalue(fixture)
    ManagementClient(endpoint, None, timeout=2).fetch_status()
    assert eventually(lambda: fake.closed_cleanly == 1)
    fake.close()
    assert fake.thread is not None and not fake.thread.is_alive()
    with pytest.raises(MgmtError, match="connection refused"):
        ManagementClient(endpoint, None, timeout=1).fetch_status()
