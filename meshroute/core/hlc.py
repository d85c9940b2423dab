"""The hybrid logical clock that stamps claims, and the bounds on time from the bus (pure).

One :class:`HybridClock` per agent. Its value is a time in ms that never goes back
and never falls behind the server's wall clock: ``max(wall, every plausible clock
value heard)``. Every message an agent sends carries it (``clock`` on the wire) and
every message received is merged into it, heartbeats included. So a session that
starts on a server after that server has heard of another session is stamped above
it, whatever the two wall clocks say (causality through the bus beats skew).

Bounds (``max_skew_ms``, the config key ``max_clock_skew``), so that a broken or
hostile clock can neither drag the mesh into the far future nor make an honest
agent's messages refused:

- the clock merges only values up to ``wall + max_skew``, and every stamp it makes
  is at most ``wall + max_skew`` (:meth:`HybridClock.stamp_above` clamps);
- a value from the bus is *plausible* up to ``wall + 2 * max_skew``
  (:meth:`HybridClock.plausible`): an honest agent whose wall clock is within
  ``max_skew`` of ours never sends more than that, so nothing it sends is refused
  because of what a third agent sent it.

Past values are always plausible: an old stamp only loses.
"""

from __future__ import annotations

from collections.abc import Callable


class HybridClock:
    """max(mesh time, plausible clock values heard), in ms; bounded ahead of mesh time.

    *Mesh time* is this server's wall clock less ``correction_ms``, the amount by
    which it runs ahead of the median of its peers' clocks (the agent core sets it
    from the offset estimates, bounded by ``max_skew``). Stamps are made in mesh
    time, so a server whose clock runs seconds ahead does not stamp its sessions
    seconds "later" than the others, even when no message links two sessions (a
    server cut off from the broker, two sessions of a client that has since left).
    """

    def __init__(self, wall: Callable[[], int], max_skew_ms: int) -> None:
        self.wall = wall
        self.max_skew_ms = max_skew_ms
        self.value = 0
        self.correction_ms = 0

    def mesh_time(self, wall_ms: int | None = None) -> int:
        """A time of this server's clock (now by default) in mesh time."""
        return (self.wall() if wall_ms is None else wall_ms) - self.correction_ms

    def correct(self, median_offset_ms: int) -> None:
        """Peers' clocks run ``median_offset_ms`` from ours (median, ourselves as 0)."""
        bound = self.max_skew_ms
        self.correction_ms = max(-bound, min(bound, -median_offset_ms))

    def now(self) -> int:
        """The clock's value now (what outgoing messages carry)."""
        self.value = max(self.value, self.mesh_time())
        return self.value

    def merge(self, value: int) -> bool:
        """Merge a clock value or stamp heard on the bus; False if it was too far ahead."""
        if value > self.mesh_time() + self.max_skew_ms:
            return False
        self.value = max(self.value, value)
        return True

    def stamp_above(self, floor: int) -> int:
        """A stamp for an event happening now: above the clock and ``floor``, if it can.

        Never more than ``mesh time + max_skew``: a ``floor`` beyond that (a clock
        far ahead) is not followed, and the stamp may then stay below it.
        """
        now = self.mesh_time()
        stamp = min(max(now, self.value + 1, floor + 1), now + self.max_skew_ms)
        self.value = max(self.value, stamp)
        return stamp

    def cap(self, stamp: int) -> int:
        """``stamp`` clamped to what this clock may make now (mesh time + max_skew)."""
        return min(stamp, self.mesh_time() + self.max_skew_ms)

    def plausible(self, value: int) -> bool:
        """A time from the bus (ms) that an honest agent within the skew bound could send."""
        return value <= self.mesh_time() + 2 * self.max_skew_ms


class OffsetEstimate:
    """One peer's clock offset from ours (ms), from the times its messages carry.

    Each message gives ``sent_ms - received_wall_ms`` = offset - transit delay; the
    maximum over a window is the best estimate (transit delay is never negative,
    and the fastest message has the least). Two windows of ``window_ms`` each, so
    the estimate follows a clock that is stepped or drifts.
    """

    def __init__(self, window_ms: int = 120_000) -> None:
        self.window_ms = window_ms
        self._current: int | None = None
        self._previous: int | None = None
        self._window_start: int | None = None
        self.samples = 0

    def add(self, sent_ms: int, received_ms: int) -> None:
        if self._window_start is None or received_ms - self._window_start >= self.window_ms:
            self._previous, self._current = self._current, None
            self._window_start = received_ms
        sample = sent_ms - received_ms
        self._current = sample if self._current is None else max(self._current, sample)
        self.samples += 1

    @property
    def offset_ms(self) -> int | None:
        """The peer's clock minus ours (ms, less the least transit delay); None if unknown."""
        known = [v for v in (self._current, self._previous) if v is not None]
        return max(known) if known else None
