"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``), in a few lines.

The service manager passes ``$NOTIFY_SOCKET`` (a unix datagram socket; ``@`` means
the abstract namespace) and, with ``WatchdogSec=``, ``$WATCHDOG_USEC`` and
``$WATCHDOG_PID``. We send ``READY=1`` once the agent is connected to the broker and
has learned its peers' state, ``WATCHDOG=1`` from the agent's own loop (so a stuck
loop is restarted by systemd), ``STATUS=...`` for ``systemctl status`` and
``STOPPING=1`` on the way out. Without ``$NOTIFY_SOCKET`` every call does nothing.

Invariants: a send never blocks and never raises (a missing socket is logged once);
``STATUS=`` is only sent when the text changed.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(env)
        self._status = ""
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> None:
        """Send ``KEY=value`` lines (keys upper-cased), e.g. ``send(ready="1")``."""
        if self.address is None:
            return
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(payload, self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
                self._failed = True

    def status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            self.send(status=text)


def _address(value: str) -> str | None:
    if not value:
        return None
    return "\0" + value[1:] if value.startswith("@") else value


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half the watchdog timeout (systemd's advice), or None when there is none."""
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process
    return int(usec) / 2e6


class Watchdog:
    """Called once per agent loop iteration: READY, WATCHDOG and STATUS as due."""

    def __init__(
        self,
        notifier: Notifier,
        ready: Callable[[], bool],
        describe: Callable[[], str],
        now: Callable[[], float],
    ) -> None:
        self.notifier = notifier
        self._ready, self._describe, self._now = ready, describe, now
        self.is_ready = False
        self._next_ping = 0.0
        self._next_status = 0.0

    def __call__(self, _agent: object = None) -> None:
        now = self._now()
        if not self.is_ready and self._ready():
            self.is_ready = True
            self.notifier.send(ready="1", status=self._describe())
        interval = self.notifier.watchdog_interval
        if interval is not None and now >= self._next_ping:
            self.notifier.send(watchdog="1")
            self._next_ping = now + interval
        if now >= self._next_status:  # describing costs a little: once a second
            self.notifier.status(self._describe())
            self._next_status = now + 1.0
