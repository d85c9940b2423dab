"""What the agent records about itself for metrics, ``health`` and logs (no I/O).

Invariants:

- Everything here is written by the agent's own thread only. Readers on other
  threads (the metrics endpoint) never iterate these objects: they take a
  :meth:`Histogram.snapshot` / :meth:`PeerHistory.rows` copy on the agent thread
  (see :mod:`meshroute.agent.metrics`), so a scrape never sees a dict change under it.
- :class:`PeerHistory` never forgets a peer it has seen: a peer that said goodbye or
  expired stays, marked down, with the wall time it was last heard.
- :class:`LogBudget` bounds how many lines one kind of event may write per window;
  what it suppresses it counts, so a summary can say how many lines were left out.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Seconds. From a hook's sub-millisecond path to a stalled broker (10 s).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)  # fmt: skip


@dataclass
class HistogramSnapshot:
    buckets: tuple[float, ...]
    counts: tuple[int, ...]  # per bucket, not cumulative; one more for +Inf
    total: float
    count: int

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs, '+Inf' last, as Prometheus wants them."""
        out, running = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class Histogram:
    """A fixed-bucket histogram of seconds (one writer thread)."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._total = 0.0
        self._count = 0

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self._total += seconds
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.buckets, tuple(self._counts), self._total, self._count)


@dataclass
class PeerRecord:
    """One peer as this agent last knew it."""

    name: str
    up: bool
    last_seen_wall: float  # seconds since the epoch, this agent's clock
    claims: int = 0
    gone: str = ""  # "", "goodbye" or "expired"


@dataclass
class PeerHistory:
    """Every peer ever heard of, up or down (see the module invariants)."""

    peers: dict[str, PeerRecord] = field(default_factory=dict)

    def update(
        self,
        live: Mapping[str, tuple[float, int]],
        departed: Iterable[str],
        wall_now: float,
        mono_now: float,
    ) -> None:
        """``live``: name -> (monotonic last seen, claims) of the peers known now."""
        for name, (last_seen, claims) in live.items():
            self.peers[name] = PeerRecord(name, True, wall_now - (mono_now - last_seen), claims)
        gone_by_goodbye = set(departed)
        for name, record in self.peers.items():
            if name not in live and record.up:
                record.up = False
                record.claims = 0
                record.gone = "goodbye" if name in gone_by_goodbye else "expired"

    def rows(self) -> list[PeerRecord]:
        """A copy, sorted by name (safe to hand to another thread)."""
        return [
            PeerRecord(r.name, r.up, r.last_seen_wall, r.claims, r.gone)
            for _, r in sorted(self.peers.items())
        ]

    def last_heard_wall(self) -> float | None:
        return max((r.last_seen_wall for r in self.peers.values()), default=None)


class LogBudget:
    """At most ``lines`` log lines per ``window`` seconds; counts what it refused."""

    def __init__(self, lines: int, window: float) -> None:
        self.lines = lines
        self.window = window
        self._window_start = float("-inf")
        self._used = 0
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        if now - self._window_start >= self.window:
            self._window_start, self._used = now, 0
        if self._used < self.lines:
            self._used += 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n
