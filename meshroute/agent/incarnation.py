"""What an agent keeps across restarts: its epoch, and its own claims' stamps.

The epoch is a persisted incarnation number that never goes back.

Peers ignore messages from an epoch at or below the last one that said goodbye,
and treat a higher epoch as a restart. An epoch taken from the wall clock alone
goes back when the clock is stepped back between a goodbye and a restart, and the
agent is then ignored by every peer (issue 7.3). So the epoch is
``max(wall clock ms, previous epoch + 1)``, and the previous one is kept in a file.

The file is written (to a temporary file, fsynced, renamed) before the epoch is
used. When it cannot be read or written (no state directory, read-only disk) the
agent logs why and falls back to the wall clock: it still runs, with the old limit.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from meshroute.core.model import ClaimRecord, parse_destination

log = logging.getLogger(__name__)


def next_epoch(state_dir: Path | None, wall_ms: int, name: str = "agent") -> int:
    """The epoch for this start: above the wall clock and above every earlier one.

    Kept in ``STATE_DIR/NAME.epoch`` (one file per agent name, so agents sharing a
    directory in a lab or a test never share an epoch).
    """
    if state_dir is None:
        return wall_ms
    path = state_dir / f"{name}.epoch"
    previous = _read(path)
    epoch = wall_ms if previous is None else max(wall_ms, previous + 1)
    try:
        _write(path, epoch)
    except OSError as exc:
        log.warning(
            "cannot persist the epoch in %s (%s); it may go back if the clock is stepped back",
            path,
            exc.strerror or exc,
        )
    return epoch


def _read(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read the previous epoch from %s: %s", path, exc.strerror or exc)
        return None
    if not text.isdigit():
        log.warning("ignoring %s: %r is not an epoch", path, text[:40])
        return None
    return int(text)


def _write(path: Path, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(f"{epoch}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_claims(state_dir: Path | None, name: str, records: Iterable[ClaimRecord]) -> None:
    """Keep this agent's own claims (with their stamps) for its next start.

    After a restart the agent finds its sessions again in OpenVPN's status; with
    the stamps it gave them before, it publishes exactly what its peers hold, even
    when every agent restarted at once and nobody can echo them back (a session
    found again would otherwise get the second-resolution ``connected_since * 1000``
    and could lose to a stale session elsewhere in the same second). Best effort:
    a lost write costs only that fallback.
    """
    if state_dir is None:
        return
    rows = [[str(r.address), r.common_name, r.connected_since, r.stamp] for r in records]
    try:
        _write_text(state_dir / f"{name}.claims", json.dumps(rows, separators=(",", ":")))
    except OSError as exc:
        log.warning("cannot keep our claims in %s: %s", state_dir, exc.strerror or exc)


def load_claims(state_dir: Path | None, name: str) -> list[ClaimRecord]:
    """The claims :func:`save_claims` kept (none if missing or unreadable)."""
    if state_dir is None:
        return []
    path = state_dir / f"{name}.claims"
    try:
        rows = json.loads(path.read_text())
        return [
            ClaimRecord(parse_destination(a), str(cn), int(since), int(stamp))
            for a, cn, since, stamp in rows
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring the kept claims in %s: %s", path, exc)
        return []


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
