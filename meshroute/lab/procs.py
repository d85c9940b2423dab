"""Start and stop the lab's processes, each by its own pid.

Invariants:

- A process is started inside a namespace with ``ip netns exec`` (which execs the
  program, so the pid we get is the program's), in a session of its own (a
  Ctrl-C in the terminal that ran ``lab up`` does not reach it), with its output
  appended to its log file. It outlives the command that started it.
- A pid is trusted only while the process there still carries our ``marker`` (a
  path unique to that process, e.g. its config file) in its command line: a pid
  recycled by an unrelated process is never signalled. Zombies count as gone.
- A child this process started and has not reaped is judged by ``waitpid`` and the
  argv it was started with, never by /proc/PID/cmdline: while a process execs
  (``ip netns exec`` becoming OpenVPN) the kernel shows an empty command line for
  a moment, and "s3.openvpn exited" was once reported for a running OpenVPN. An
  unreaped child's pid cannot have been reused, so nothing is lost by that.
- Nothing is ever stopped by name (no pkill/killall).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from meshroute.lab.netns import exec_argv

log = logging.getLogger(__name__)

_children: dict[int, bytes] = {}
"""pid -> the NUL-joined argv of every child started here and not yet reaped."""


def spawn(netns: str | None, argv: Sequence[str], log_file: Path) -> int:
    """Start ``argv`` inside ``netns`` (None: here); output goes to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full = exec_argv(netns, argv) if netns else list(argv)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[proc.pid] = b"\0".join(a.encode() for a in full)
    return proc.pid


def _child_state(pid: int) -> bool | None:
    """For a child of ours: True while it runs, False once exited (and reaped).

    None if ``pid`` is not our child (or no longer: a reaped pid may be reused).
    """
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        _children.pop(pid, None)
        return None
    if done == 0:
        return True
    _children.pop(pid, None)
    return False


def alive(pid: int | None, marker: str | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, with ``marker``, its argv contains it."""
    if not pid:
        return False
    argv = _children.get(pid)
    running = _child_state(pid)
    if running is False:
        return False
    if running and argv is not None:  # started here: its argv is known, not guessed
        return marker is None or marker.encode() in argv
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        return False
    return marker is None or marker.encode() in cmdline


def signal_pid(pid: int | None, sig: int, marker: str | None = None) -> bool:
    """Send ``sig`` to ``pid`` if it is alive and ours; True if it was sent."""
    if not alive(pid, marker):
        return False
    assert pid is not None
    log.info("signal %d to pid %d", sig, pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    return True


def wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stop(
    pid: int | None, marker: str | None, sig: int = signal.SIGTERM, grace: float = 5.0
) -> bool:
    """Send ``sig``, wait up to ``grace`` s, then SIGKILL. True if a process was stopped."""
    if not signal_pid(pid, sig, marker):
        return False
    assert pid is not None
    if not wait_gone([pid], grace):
        log.warning("pid %d did not exit after signal %d; killing it", pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone([pid], 5.0)
    return True


def stop_many(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM every pid, wait up to ``grace`` s for all, SIGKILL the rest.

    For processes found inside the lab's own namespaces (``ip netns pids``): they
    are the lab's by construction, so no marker is needed.
    """
    living = [pid for pid in pids if alive(pid)]
    for pid in living:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if wait_gone(living, grace):
        return
    for pid in living:
        if alive(pid):
            log.warning("pid %d ignored SIGTERM; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait_gone(living, 5.0)
