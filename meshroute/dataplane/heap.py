"""Give the C heap's free memory back to the system after large route work (glibc).

Why (docs/performance.md, "Memory at 100,000 claims"): a join of 100,000 claims
builds big transient containers (the plan, the desired routes, a dump, the
snapshots' bodies and decoded lists). Python frees them, but glibc keeps the pages:
the real agent sat at ~96 MiB RSS with 18 MiB of it free heap. Two measures, both
process-wide and both harmless where they do not apply:

- :func:`tune` (called once by the agent daemon at start) fixes glibc's mmap
  threshold at 128 KiB (``M_MMAP_THRESHOLD``).
  glibc raises that threshold up to 32 MiB each time a large block is freed, after
  which big containers live in the heap and stay there once freed; fixed, every block
  of 128 KiB or more is its own mapping and goes back to the system when freed.
- :class:`Trimmer` calls ``malloc_trim(0)`` (free pages anywhere in the heap back to
  the system) at the end of a dataplane call once at least ``threshold`` routes of
  work were done since the last trim, so its cost (~1 ms) is paid once per large
  apply or resync, never per event. What the caller frees after the call (its plan)
  is mostly in blocks above the fixed mmap threshold, returned at once.

Invariant: a libc without these functions (musl, another platform) makes both a
no-op; nothing here changes what any caller computes.
"""

from __future__ import annotations

import ctypes
import logging
import time

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt(3) parameter number (glibc malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept fixed


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)  # the process's own C library
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _libc()


def tune() -> bool:
    """Fix the mmap threshold (see the module doc); False where libc has no mallopt."""
    return _LIBC is not None and _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


class Trimmer:
    """Counts routes of work; trims the heap once ``threshold`` have been counted."""

    def __init__(self, threshold: int = 10_000) -> None:
        self.threshold = threshold
        self.pending = 0
        self.trims = 0

    def done(self, routes: int) -> bool:
        """Count ``routes`` of work just done; ``malloc_trim(0)`` if enough was counted
        since the last trim. True if it ran."""
        self.pending += routes
        if self.pending < self.threshold or _LIBC is None:
            return False
        started = time.perf_counter()
        _LIBC.malloc_trim(0)
        self.pending, self.trims = 0, self.trims + 1
        log.debug("heap trimmed in %.1f ms", (time.perf_counter() - started) * 1000)
        return True
