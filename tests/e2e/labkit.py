"""Helpers for the e2e tier: run the real ``meshroute lab`` CLI, look at what is left.

The tests drive the lab the way a user does (the CLI, as separate processes) and
observe it through :mod:`meshroute.lab.observe` (kernels, control sockets, pings).
Every lab here has its own prefix (``mre<pid><tag>``), so a user's lab and CI never
collide, and every fixture runs ``lab down`` in ``finally``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from meshroute.lab import observe
from meshroute.lab.lab import Lab, agent_command
from meshroute.lab.topology import owns_namespace

T = TypeVar("T")
LAB_IFNAME = re.compile(r"^((s|c)[0-9]+-(i|b)|broker-b|b[0-9]+-b|br-inet|br-bb)$")


def unique_prefix(tag: str) -> str:
    return f"mre{os.getpid()}{tag}"


def cli(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``meshroute ARGS`` (this installation's) and return what it did."""
    done = subprocess.run(
        [*agent_command(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"meshroute {' '.join(args)} exited {done.returncode}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
    return done


@dataclass
class RunningLab:
    """A lab started through the CLI, and its Python view for observing it."""

    prefix: str
    lab: Lab
    up_seconds: float

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return cli("lab", args[0], "--prefix", self.prefix, *args[1:], check=check)

    def failed_pings(self, families: tuple[int, ...] = (4, 6)) -> list[observe.Ping]:
        return [p for p in observe.ping_matrix(self.lab.plan(), families) if not p.ok]

    def route_problems(self) -> list[str]:
        return observe.route_problems(self.lab.plan(), self.lab.state().client_server)

    def assert_converged(self, timeout: float = 30.0) -> None:
        problems = self.lab.wait_converged(timeout)
        assert problems == [], problems

    def logs_tail(self, lines: int = 30) -> str:
        out = []
        for path in sorted(self.lab.paths.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"----- {path.name} -----\n" + "\n".join(text))
        return "\n".join(out)


@contextmanager
def running_lab(
    tag: str,
    servers: int,
    clients: int,
    brokers: int = 1,
    backbone: str = "bridge",
    sites: int = 0,
) -> Iterator[RunningLab]:
    """``lab up`` through the CLI; ``lab down`` afterwards, also when anything failed."""
    prefix = unique_prefix(tag)
    lab = Lab(prefix)
    started = time.monotonic()
    try:
        done = cli("lab", "up", "--prefix", prefix, "--servers", str(servers),
                   "--clients", str(clients), "--brokers", str(brokers),
                   "--backbone", backbone,
                   *(["--sites", str(sites)] if sites else []), check=False)  # fmt: skip
        running = RunningLab(prefix, lab, time.monotonic() - started)
        if done.returncode != 0:
            raise AssertionError(f"lab up failed:\n{done.stderr}\n{running.logs_tail()}")
        print(f"lab {prefix} {servers}x{clients} ({backbone}) up in {running.up_seconds:.1f}s")
        yield running
    finally:
        keep = os.environ.get("MESHROUTE_E2E_KEEP_LOGS")
        if keep and lab.paths.logs.exists():  # for CI artifacts: `down` removes them
            shutil.copytree(lab.paths.logs, Path(keep) / prefix, dirs_exist_ok=True)
        cli("lab", "down", "--prefix", prefix, check=False)


def leftovers(prefix: str) -> list[str]:
    """Anything of the lab ``prefix`` that still exists: namespaces, interfaces,
    processes (by lab path in their command line or environment), files."""
    lab = Lab(prefix)
    found = [f"netns {ns}" for ns in _netns_names() if owns_namespace(prefix, ns)]
    found += [f"file {p}" for p in Path("/run/netns").glob(f"{prefix}-*")]
    if lab.paths.root.exists():
        found.append(f"file {lab.paths.root}")
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True,
                                      check=True).stdout)  # fmt: skip
    found += [f"interface {link['ifname']}" for link in links if LAB_IFNAME.match(link["ifname"])]
    found += [f"process {pid}" for pid in _processes_mentioning(f"{lab.paths.root}/".encode())]
    return found


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _processes_mentioning(needle: bytes) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            text = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if state != "Z" and needle in text:
            pids.append(int(proc.name))
    return pids
