"""The agent's end of ``meshroute hook``: a datagram socket and one reader thread.

Invariants:

- The reader thread never dies on input: a bad datagram is counted by reason and
  logged at WARNING, at most ``BAD_LOG_LINES`` lines per ``BAD_LOG_WINDOW`` seconds
  (a flood of 20,000 bad datagrams writes a handful of lines and a count of the
  rest, not 20,000 lines); an ignored one (iroute subnet, MAC) is counted at DEBUG;
  an exception from ``on_event`` is logged and counted; then it reads on.
- ``on_event`` runs on the reader thread, one event at a time, in arrival order; it
  must only hand the event over (enqueue) — a slow callback fills the socket queue and
  the hooks start dropping events (they never wait).
- Binding never steals a live receiver's socket: an existing socket file is only
  replaced when nobody answers on it (a stale file from a crashed agent). A path that
  exists and is not a socket is an error, never deleted.
- ``close()`` stops the thread promptly (shutdown wakes the blocked ``recv``) and
  removes the socket file it created.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshroute.core.telemetry import LogBudget
from meshroute.openvpn.events import (
    MAX_DATAGRAM,
    HookEvent,
    IgnoredEvent,
    bad_reason,
    parse_hook_datagram,
)

log = logging.getLogger(__name__)

BAD_LOG_LINES = 5
BAD_LOG_WINDOW = 60.0

# Room in bytes for a burst while the agent catches up. For a unix datagram socket
# the kernel also caps the queue at net.unix.max_dgram_qlen datagrams (Linux's
# default: 10): docs/install.md raises it, or senders that never wait drop events.
RECEIVE_BUFFER = 1 << 20


class HookReceiverError(RuntimeError):
    """The socket cannot be bound (path in use, not a socket, no permission)."""


@dataclass
class HookStats:
    """Counters for metrics and the health command."""

    received: int = 0
    delivered: int = 0
    ignored: int = 0
    bad: int = 0
    handler_errors: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HookReceiver:
    """Bind ``path`` and call ``on_event`` for every valid hook datagram."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_event: Callable[[HookEvent], None],
        mode: int = 0o660,
        gid: int | None = None,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.path = Path(path)
        self.stats = HookStats()
        self._on_event = on_event
        self._now_ms = now_ms
        self._closing = threading.Event()
        self._bad_log = LogBudget(BAD_LOG_LINES, BAD_LOG_WINDOW)
        self._sock = _bind(self.path, mode, gid)
        self._thread = threading.Thread(
            target=self._run, name=f"hook-receiver:{self.path}", daemon=True
        )
        self._thread.start()
        log.info("hook receiver listening on %s", self.path)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the reader thread and remove the socket file. Idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> HookReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                data = self._sock.recv(MAX_DATAGRAM + 1)
            except OSError as exc:
                if not self._closing.is_set():
                    log.error("hook socket %s read failed: %s", self.path, exc)
                    time.sleep(0.1)  # a persistent error must not spin the CPU
                continue
            if self._closing.is_set():
                return
            self.handle(data)

    def handle(self, data: bytes) -> None:
        """Parse one datagram and deliver it; never raises."""
        self.stats.received += 1
        try:
            event = parse_hook_datagram(data, received_ms=self._now_ms())
        except IgnoredEvent as exc:
            self.stats.ignored += 1
            log.debug("hook event ignored: %s", exc)
            return
        except ValueError as exc:
            self._count_bad(exc, len(data))
            return
        try:
            self._on_event(event)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("hook event handler failed for %s", event)
            return
        self.stats.delivered += 1

    def _count_bad(self, exc: ValueError, size: int) -> None:
        self.stats.bad += 1
        reason = bad_reason(exc)
        # Replaced, never mutated: a reader on another thread may be copying it.
        counts = dict(self.stats.bad_by_reason)
        counts[reason] = counts.get(reason, 0) + 1
        self.stats.bad_by_reason = counts
        if self._bad_log.allow(time.monotonic()):
            left_out = self._bad_log.take_suppressed()
            more = f" ({left_out} more since the last line, not logged)" if left_out else ""
            log.warning("bad hook datagram on %s (%d bytes, %s): %s%s", self.path, size,
                        reason, exc, more)  # fmt: skip


def _bind(path: Path, mode: int, gid: int | None) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind(str(path))
        os.chmod(path, mode)
        if gid is not None:
            os.chown(path, -1, gid)
    except OSError as exc:
        sock.close()
        raise HookReceiverError(f"cannot bind hook socket {path}: {exc}") from exc
    return sock


def _remove_stale(path: Path) -> None:
    """Unlink a socket file nobody listens on; refuse to touch anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise HookReceiverError(f"hook socket path {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.info("removing stale hook socket %s", path)
        path.unlink()
        return
    except OSError as exc:
        raise HookReceiverError(f"cannot probe hook socket {path}: {exc}") from exc
    finally:
        probe.close()
    raise HookReceiverError(f"hook socket {path} is in use by another receiver")
