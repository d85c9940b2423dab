"""OpenVPN management interface client: connect, authenticate, ``status 3``, quit.

OpenVPN serves one management client at a time (a second one is accepted by the
kernel but gets no answer until the first leaves), so every call connects, asks one
question and disconnects at once.

Protocol, as OpenVPN 2.4-2.6 speak it (``doc/management-notes.txt``, ``manage.c``):

- With a password file (``management HOST PORT PWFILE``) the server first writes
  ``ENTER PASSWORD:`` with no newline; a right answer gets ``SUCCESS: password is
  correct``, a wrong one ``ERROR: bad password`` (and the prompt again).
- Then (or at once, without a password) the banner ``>INFO:OpenVPN Management
  Interface Version N ...``. Lines starting with ``>`` are real-time notifications
  and may arrive at any moment, also in the middle of a command's output: skipped.
- ``status 3`` answers with the status document, ending in a line ``END``.

Invariants: every step runs under one overall deadline (``timeout`` seconds for the
whole exchange); every failure is a :class:`MgmtError` that names the endpoint and
the step; the socket is always closed.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PASSWORD_PROMPT = b"ENTER PASSWORD:"
_PROMPT = "\x00prompt"  # sentinel item: the password prompt, never a real line
_END_LINE = re.compile(rb"(?:^|\n)END\r?\n")
MAX_RESPONSE = 128 << 20  # 100,000 clients are about 20 MB of status 3


class MgmtError(RuntimeError):
    """The management exchange failed; the message names endpoint and step."""


@dataclass(frozen=True)
class MgmtEndpoint:
    """Where OpenVPN's ``--management`` listens: TCP host/port or a unix socket path."""

    kind: str
    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "tcp":
            if not self.host or self.port is None or not 0 < self.port < 65536:
                raise ValueError(f"tcp management endpoint needs host and port: {self!r}")
        elif self.kind == "unix":
            if not self.path:
                raise ValueError("unix management endpoint needs a path")
        else:
            raise ValueError(f"management endpoint kind must be tcp or unix, not {self.kind!r}")

    @classmethod
    def tcp(cls, host: str, port: int) -> MgmtEndpoint:
        return cls("tcp", host=host, port=port)

    @classmethod
    def unix(cls, path: str | Path) -> MgmtEndpoint:
        return cls("unix", path=str(path))

    @classmethod
    def parse(cls, text: str) -> MgmtEndpoint:
        """``tcp:HOST:PORT``, ``HOST:PORT``, ``unix:PATH`` or an absolute ``PATH``."""
        if text.startswith("unix:"):
            return cls.unix(text[5:])
        if text.startswith("/"):
            return cls.unix(text)
        rest = text[4:] if text.startswith("tcp:") else text
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"management endpoint {text!r}: expected HOST:PORT or a path")
        return cls.tcp(host.strip("[]"), int(port))

    @classmethod
    def coerce(cls, value: MgmtEndpoint | tuple | str) -> MgmtEndpoint:
        """Accept an endpoint, ``("tcp", host, port)``, ``("unix", path)`` or a string."""
        if isinstance(value, MgmtEndpoint):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if len(value) == 3 and value[0] == "tcp":
            return cls.tcp(value[1], int(value[2]))
        if len(value) == 2 and value[0] == "unix":
            return cls.unix(value[1])
        raise ValueError(f"not a management endpoint: {value!r}")

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


def read_password_file(path: str | Path) -> str:
    """The management password: the first line of OpenVPN's password file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise MgmtError(f"cannot read management password file {path}: {exc}") from exc
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise MgmtError(f"management password file {path} has an empty first line")
    return lines[0]


class ManagementClient:
    """Asks one OpenVPN server for its status; one short connection per call."""

    def __init__(
        self, endpoint: MgmtEndpoint | tuple | str, password: str | None, timeout: float = 5.0
    ) -> None:
        self.endpoint = MgmtEndpoint.coerce(endpoint)
        self.password = password
        self.timeout = timeout

    def fetch_status(self) -> str:
        """The ``status 3`` document (lines joined by ``\\n``, ending with ``END``)."""
        session = _Session(self.endpoint, self.timeout)
        try:
            session.connect()
            session.login(self.password)
            session.send("status 3", "asking for status")
            lines = session.read_until_end("reading status")
            session.quit()
        finally:
            session.close()
        return "\n".join(lines) + "\n"


class _Session:
    """One connection: a deadline, a byte buffer, and lines read from it."""

    def __init__(self, endpoint: MgmtEndpoint, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.sock: socket.socket | None = None
        self.buffer = bytearray()
        self.heard = False  # has OpenVPN said anything on this connection yet?

    def fail(self, step: str, why: str) -> MgmtError:
        return MgmtError(f"OpenVPN management {self.endpoint}: {step}: {why}")

    def connect(self) -> None:
        ep = self.endpoint
        family = socket.AF_UNIX if ep.kind == "unix" else _tcp_family(ep.host or "")
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self._remaining("connecting"))
        self.sock = sock
        target = ep.path if ep.kind == "unix" else (ep.host, ep.port)
        try:
            sock.connect(target)  # type: ignore[arg-type]  # a unix path or (host, port)
        except ConnectionRefusedError:
            raise self.fail("connecting", "connection refused (is OpenVPN running?)") from None
        except FileNotFoundError:
            raise self.fail("connecting", "no such socket (is OpenVPN running?)") from None
        except TimeoutError:
            raise self.fail("connecting", f"timed out after {self.timeout:g}s") from None
        except OSError as exc:
            raise self.fail("connecting", str(exc)) from None

    def login(self, password: str | None) -> None:
        """Answer the password prompt if there is one; otherwise just go on.

        OpenVPN 2.6 answers a wrong password by prompting again (and drops the
        connection after three tries); older notes document ``ERROR: bad password``.
        Both mean the same here.
        """
        first = self._next_item("waiting for the banner or password prompt")
        if first is not _PROMPT:
            if password:
                log.debug("%s asked for no password; the configured one is unused", self.endpoint)
            return
        if password is None:
            raise self.fail("login", "OpenVPN asks for a password and none is configured")
        self.send(password, "sending the password")
        step = "waiting for the password check"
        while True:
            item = self._next_item(step)
            if item is _PROMPT or item.startswith("ERROR:"):
                raise self.fail("login", "wrong password (OpenVPN refused it)")
            if item.startswith("SUCCESS:"):
                return
            # anything else (a '>' notification) is not the answer yet

    def send(self, command: str, step: str) -> None:
        if "\n" in command or "\r" in command:
            raise self.fail(step, "a command or password must not contain a newline")
        assert self.sock is not None
        self.sock.settimeout(self._remaining(step))
        try:
            self.sock.sendall(command.encode("utf-8") + b"\n")
        except TimeoutError:
            raise self.fail(step, f"timed out after {self.timeout:g}s") from None
        except OSError as exc:
            raise self.fail(step, f"connection lost: {exc}") from None

    def read_until_end(self, step: str) -> list[str]:
        """Lines up to and including ``END``, without real-time ``>`` notifications.

        The END line is searched for in the raw bytes (from where the last search
        stopped) and the answer is split once: 100,000 clients stay linear.
        """
        first = self.read_line(step)
        while first.startswith(">"):
            first = self.read_line(step)
        if first.startswith("ERROR:"):
            raise self.fail(step, first)
        if first == "END":
            return [first]
        searched = 0
        while True:
            match = _END_LINE.search(self.buffer, searched)
            if match:
                raw = bytes(self.buffer[: match.end()])
                del self.buffer[: match.end()]
                break
            searched = max(0, len(self.buffer) - 6)
            self._fill(step)
        text = raw.decode("utf-8", errors="replace")
        return [first, *(line for line in text.splitlines() if not line.startswith(">"))]

    def quit(self) -> None:
        """Say goodbye so OpenVPN frees its one management slot at once."""
        assert self.sock is not None
        try:
            self.sock.sendall(b"quit\n")
        except OSError as exc:
            log.debug("%s: quit not sent: %s", self.endpoint, exc)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def read_line(self, step: str) -> str:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                raw = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return raw.rstrip(b"\r").decode("utf-8", errors="replace")
            self._fill(step)

    def _next_item(self, step: str) -> str:
        """The password prompt (which has no newline) or the next line."""
        while True:
            if self.buffer.startswith(PASSWORD_PROMPT):
                del self.buffer[: len(PASSWORD_PROMPT)]
                return _PROMPT
            head = bytes(self.buffer[: len(PASSWORD_PROMPT)])
            if not PASSWORD_PROMPT.startswith(head) and b"\n" in self.buffer:
                return self.read_line(step)
            self._fill(step)  # empty, a prefix of the prompt, or a partial line

    def _fill(self, step: str) -> None:
        assert self.sock is not None
        self.sock.settimeout(self._remaining(step))
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            # OpenVPN accepts a second management client but stays silent to it.
            hint = "" if self.heard else " (is another management client connected?)"
            raise self.fail(step, f"timed out after {self.timeout:g}s{hint}") from None
        except OSError as exc:
            raise self.fail(step, f"connection lost: {exc}") from None
        self.heard = self.heard or bool(chunk)
        if not chunk:
            raise self.fail(step, "connection closed by OpenVPN")
        self.buffer += chunk
        if len(self.buffer) > MAX_RESPONSE:
            raise self.fail(step, f"answer larger than {MAX_RESPONSE} bytes")

    def _remaining(self, step: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.fail(step, f"timed out after {self.timeout:g}s")
        return left


def _tcp_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
