"""Stateful fakes shared by several test tiers.

``FakeManagement`` is an OpenVPN management interface that speaks what OpenVPN 2.6
was seen to speak: ``ENTER PASSWORD:`` without a newline, a re-prompt on a wrong
password (or ``ERROR: bad password`` in the older style), the ``>INFO`` banner,
real-time ``>`` lines, ``status 3`` ... ``END``; it serves one client at a time.
``render_status`` writes a ``status 3`` document (OpenVPN 2.6 columns) for a list of
sessions, so a test can play an OpenVPN server whose clients it controls.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

T = TypeVar("T")

FIXTURES = Path(__file__).parent / "fixtures" / "status"
STATUS = (FIXTURES / "real-2.6.14-status3.txt").read_text().replace("\n", "\r\n")
BANNER = b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n"
CLIENT_HEADER = (
    "HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tVirtual IPv6 Address"
    "\tBytes Received\tBytes Sent\tConnected Since\tConnected Since (time_t)\tUsername"
    "\tClient ID\tPeer ID\tData Channel Cipher"
)


ROUTING_HEADER = (
    "HEADER\tROUTING_TABLE\tVirtual Address\tCommon Name\tReal Address\tLast Ref\tLast Ref (time_t)"
)


@dataclass(frozen=True)
class FakeSession:
    """One client session. ``live`` True: the client keeps sending (Last Ref is "now"
    whenever the status is rendered); False: Last Ref stays at ``since`` (a stale
    session whose client moved away); None: no ROUTING_TABLE row (no evidence)."""

    common_name: str
    address: str
    since: int
    address6: str = ""
    live: bool | None = None


def render_status(sessions: Iterable[FakeSession], clock_offset: int = 0) -> str:
    """A ``status 3`` document as OpenVPN 2.6 writes it (CRLF line ends), on a server
    whose clock is ``clock_offset`` seconds off."""
    now = int(time.time()) + clock_offset
    lines = ["TITLE\tOpenVPN 2.6.14 x86_64-pc-linux-gnu", f"TIME\t-\t{now}", CLIENT_HEADER]
    routes = [ROUTING_HEADER]
    for i, s in enumerate(sessions):
        real = f"198.51.100.{i + 2}:1194"
        lines.append(
            f"CLIENT_LIST\t{s.common_name}\t{real}\t{s.address}\t{s.address6}"
            f"\t100\t100\t-\t{s.since}\tUNDEF\t{i}\t{i}\tAES-256-GCM"
        )
        if s.live is None:
            continue
        last_ref = now if s.live else s.since
        for address in filter(None, (s.address, s.address6)):
            routes.append(f"ROUTING_TABLE\t{address}\t{s.common_name}\t{real}\t-\t{last_ref}")
    lines += [*routes, "GLOBAL_STATS\tMax bcast/mcast queue length\t0", "END", ""]
    return "\r\n".join(lines)


STRAYS: list[str] = []
"""Every stray connection any fake refused in this session (the summary prints them)."""


@dataclass
class FakeManagement:
    """One-client-at-a-time management server; knobs set before or between calls."""

    listener: socket.socket
    password: str | None = None
    status: str | Callable[[], str] = STATUS  # a callable is rendered at every request
    delay: float = 0.0  # before every answer
    old_style_bad_password: bool = False
    notify_mid_status: bool = False
    commands: list[str] = field(default_factory=list)
    connections: int = 0
    closed_cleanly: int = 0
    strays: list[str] = field(default_factory=list)
    """Connections accepted on a socket other than this fake's own (refused)."""
    thread: threading.Thread | None = None
    stopped: bool = False

    def __post_init__(self) -> None:
        self.address = self.listener.getsockname()

    def serve(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                # A thread blocked in accept() keeps its socket alive after close();
                # if the descriptor number it reads is reused by a newer fake's
                # listener, it would answer that fake's clients with this fake's
                # status. Refuse anything that did not arrive at this fake's address.
                if self.stopped or conn.getsockname() != self.address:
                    stray = f"fake of {self.address!r} accepted at {conn.getsockname()!r}"
                    self.strays.append(stray)
                    STRAYS.append(stray)
                    return
                self.connections += 1
                self._session(conn, conn.makefile("rb"))

    def start(self) -> FakeManagement:
        self.thread = threading.Thread(target=self.serve, daemon=True, name="fake-openvpn")
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop serving and wait for the thread to end: a fake never outlives its test.

        shutdown() wakes a thread blocked in accept() (close() alone does not, and the
        thread would sit on the old socket for good); the join proves it is gone.
        """
        self.stopped = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        if self.thread is not None:
            self.thread.join(10)
            if self.thread.is_alive():
                raise AssertionError(f"fake OpenVPN on {self.address!r} did not stop")
        if self.strays:
            raise AssertionError(f"fake OpenVPN on {self.address!r} was reached at {self.strays}")

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
        body = (self.status() if callable(self.status) else self.status).encode()
        if self.notify_mid_status:
            cut = body.index(b"HEADER\tROUTING")
            body = body[:cut] + b">BYTECOUNT_CLI:0,100,200\r\n" + body[cut:]
        # Send in small pieces so the client must reassemble lines across reads.
        for i in range(0, len(body), 100):
            self._send(conn, body[i : i + 100])


def serve_fake_management(listener: socket.socket, **knobs) -> FakeManagement:
    """Start serving on ``listener`` (bound and listening) in a daemon thread."""
    return FakeManagement(listener, **knobs).start()


def unix_listener(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    return listener


def poll(condition: Callable[[], T], timeout: float, what: str, step: float = 0.05) -> T:
    """Return the first truthy value of condition(), or fail naming what was awaited.

    Tests wait for conditions, never for fixed times: this is the one way to do it.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def by_prefix(routes):
    """A dataplane dump (host routes keyed by address) keyed by prefix, for asserts."""
    from meshroute.core.model import host_prefix

    return {k if hasattr(k, "prefixlen") else host_prefix(k): v for k, v in routes.items()}
