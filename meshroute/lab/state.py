"""The lab's state file, ``<lab dir>/lab.json``: what ``up`` made, for later commands.

Every ``meshroute lab`` command is a separate process; they share what one needs
from another through this file: the lab's size (from which the whole address plan
follows, see :mod:`meshroute.lab.topology`), every pid it started, and which server
each client uses now.

Invariants: the file is written before the first namespace exists and after every
process start, so ``down`` finds what a crashed ``up`` left; writes are atomic
(temp file + rename) and read-modify-write cycles hold an exclusive lock, so two
lab commands at once cannot lose each other's pids.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "lab.json"
LOCK_FILE = "lab.lock"


@dataclass
class LabState:
    prefix: str
    servers: int
    clients: int
    phase: str = "starting"
    """starting (up in progress or crashed), up (converged), failed (up gave up)."""
    pids: dict[str, int] = field(default_factory=dict)
    """role ("s1.openvpn", "s1.agent", "c1.openvpn") -> pid."""
    client_server: dict[str, str] = field(default_factory=dict)
    """client -> the server it was (re)started on, first in its remote list."""
    client_since: dict[str, float] = field(default_factory=dict)
    """client -> when its current OpenVPN process started (unix time): a claim older
    than that is a stale session, not the one to wait for."""
    broker_port: int = 0
    brokers: int = 1
    """RabbitMQ nodes: 1 (``broker``) or a cluster ``b1..bK``."""
    created: float = 0.0
    backbone: str = "bridge"
    """The management net: bridge, openvpn (tap hub) or openvpn-tun (see backbone.py)."""
    sites: int = 0
    """Clients c1..cK are site routers with a host behind them (``lab up --sites``)."""


class LabStore:
    """Load and update ``lab.json`` in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> LabState:
        data = json.loads(self.path.read_text())
        return LabState(**data)

    def save(self, state: LabState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(state), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def update(self) -> Iterator[LabState]:
        """Yield the state under an exclusive lock; saved when the block succeeds."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.load()
            yield state
            self.save(state)

    def set_pid(self, role: str, pid: int) -> None:
        with self.update() as state:
            state.pids[role] = pid
