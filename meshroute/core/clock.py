"""Time as an injected dependency: the real clock, and a fake one for tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds, for deadlines and liveness (never goes back)."""

    def wall_ms(self) -> int:
        """Milliseconds since the epoch, for stamps and epochs (may jump)."""


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FakeClock:
    """A clock that moves only when told to; monotonic and wall move together."""

    def __init__(self, start: float = 1000.0, wall_ms: int = 1_700_000_000_000) -> None:
        self._mono = start
        self._wall_ms = wall_ms

    def monotonic(self) -> float:
        return self._mono

    def wall_ms(self) -> int:
        return self._wall_ms

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall_ms += int(seconds * 1000)
