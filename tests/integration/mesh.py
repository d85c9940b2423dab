"""A mesh of real `meshroute agent` processes for integration tests.

Each agent is a real process (the console entry point, a config file, signals) on the
test session's RabbitMQ node. Its dataplane works in a throwaway network namespace
of its own (``dataplane_netns``), where a veth pair makes the backbone next hops
10.200.200.0/24 and fd00:200::/64 reachable; the root namespace is never touched.
Each agent polls a fake OpenVPN management interface (a unix socket) whose clients
the test controls, and receives OpenVPN hooks from the real `meshroute hook`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from meshroute.control import ControlError, request
from tests.fakes import (
    FakeManagement,
    FakeSession,
    poll,
    render_status,
    serve_fake_management,
    unix_listener,
)

REPO = Path(__file__).resolve().parents[2]
VPN = ipaddress.ip_network("10.100.100.0/24")
PROTO = 201


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def libfaketime() -> Path:
    """Debian's libfaketime (package faketime; the variant for threaded programs)."""
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))
    if not found:
        raise FileNotFoundError("libfaketimeMT.so.1 not found: install Debian's faketime")
    return found[0]


def backbone(index: int) -> str:
    return f"10.200.200.{index}"


@dataclass
class AgentProc:
    name: str
    index: int
    netns: str
    tmp: Path
    url: str
    exchange: str
    settings: dict[str, str]
    fake: FakeManagement | None = None
    sessions: dict[str, FakeSession] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    clock_offset: int = 0  # seconds this server's wall clock is off (libfaketime)
    run_in_netns: bool = False
    """Run the process itself inside ``netns`` (its broker traffic crosses it)."""

    @property
    def control(self) -> Path:
        return self.tmp / f"{self.name}.sock"

    @property
    def hook_socket(self) -> Path:
        return self.tmp / f"{self.name}.hook"

    @property
    def log(self) -> Path:
        return self.tmp / f"{self.name}.log"

    def write_config(self) -> Path:
        conf = {
            "name": self.name,
            "broker_url": self.url,
            "exchange": self.exchange,
            "next_hop": backbone(self.index),
            "client_networks": str(VPN),
            "openvpn_mgmt": str(self.tmp / f"{self.name}.mgmt"),
            "control_socket": str(self.control),
            "hook_socket": str(self.hook_socket),
            "dataplane_netns": self.netns,
            "state_dir": str(self.tmp),
            "log_level": "debug",
            **self.settings,
        }
        path = self.tmp / f"{self.name}.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))
        return path

    # --- the OpenVPN side -------------------------------------------------------

    def serve_openvpn(self) -> None:
        self.fake = serve_fake_management(unix_listener(self.tmp / f"{self.name}.mgmt"))
        self._publish_status()

    def _publish_status(self) -> None:
        assert self.fake is not None
        sessions = list(self.sessions.values())
        self.fake.status = lambda: render_status(sessions, self.clock_offset)

    def went_silent(self, address: str) -> None:
        """The client of this session moved away: OpenVPN still lists it, stale."""
        session = self.sessions[address]
        self.sessions[address] = FakeSession(
            session.common_name, session.address, session.since, session.address6, live=False
        )
        self._publish_status()

    def connect(self, address: str, cn: str, *, hook: bool = True, live: bool | None = None) -> int:
        """A client session starts here: OpenVPN lists it, and runs the hook.

        ``live=True`` lists its Last Ref as "now" at every poll (see FakeSession).
        """
        since = int(time.time()) + self.clock_offset
        self.sessions[address] = FakeSession(cn, address, since, live=live)
        self._publish_status()
        if hook:
            env = {"common_name": cn, "ifconfig_pool_remote_ip": address,
                   "time_unix": str(since), "PATH": os.environ.get("PATH", "")}  # fmt: skip
            hook_cmd = [sys.executable, "-m", "meshroute", "hook", "--socket",
                        str(self.hook_socket), "client-connect"]  # fmt: skip
            subprocess.run(hook_cmd, env=env, check=True, timeout=10, cwd=REPO)
        return since

    # --- the process ------------------------------------------------------------

    def start(self) -> None:
        config = self.write_config()
        command = [sys.executable, "-m", "meshroute", "agent", str(config)]
        env = None
        if self.clock_offset:
            # A skewed wall clock for this process only (libfaketime preloaded into
            # the agent itself, so its pid is the agent's); monotonic time stays real.
            env = {
                **os.environ,
                "LD_PRELOAD": str(libfaketime()),
                "FAKETIME": f"{self.clock_offset:+d}s",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            }
        if self.run_in_netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env
            )

    def signal(self, sig: int) -> int:
        """Send ``sig`` and wait for the process; its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)

    def query(self, what: str) -> dict | None:
        try:
            return request(self.control, what, timeout=2)
        except ControlError:
            return None

    def wait_ready(self, timeout: float = 20) -> None:
        def ready():
            health = self.query("health")
            return health and health["broker_connected"] and health["local_clients_known"]

        poll(ready, timeout, f"agent {self.name} to be ready (log {self.log})")

    # --- its kernel -------------------------------------------------------------

    def routes(self) -> dict[str, str]:
        """Owned routes in this agent's namespace, read with iproute2 (not our code)."""
        out = ip("-n", self.netns, "-j", "route", "show", "proto", str(PROTO))
        return {r["dst"]: r["gateway"] for r in json.loads(out or "[]")}


class Mesh:
    def __init__(self, rabbit, tmp: Path, exchange: str, settings: dict[str, str]) -> None:
        self.rabbit = rabbit
        self.tmp = tmp
        self.exchange = exchange
        self.settings = settings
        self.agents: dict[str, AgentProc] = {}
        self._tag = f"mrt-it{os.getpid()}"

    def add(self, name: str, clock_offset: int = 0) -> AgentProc:
        index = len(self.agents) + 1
        netns = f"{self._tag}-{name}"
        self._make_netns(netns, index)
        url = self.rabbit.node.add_agent(name, f"pw-{name}", self.exchange)
        agent = AgentProc(name, index, netns, self.tmp, url, self.exchange, self.settings)
        agent.clock_offset = clock_offset
        self.agents[name] = agent
        agent.serve_openvpn()
        agent.start()
        return agent

    def _make_netns(self, netns: str, index: int) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("netns", "del", netns)  # a leftover of an interrupted run
        ip("netns", "add", netns)
        ip("-n", netns, "link", "set", "lo", "up")
        ip("-n", netns, "link", "add", "bb0", "type", "veth", "peer", "name", "bb1")
        ip("-n", netns, "addr", "add", f"{backbone(index)}/24", "dev", "bb0")
        ip("-n", netns, "link", "set", "bb0", "up")
        ip("-n", netns, "link", "set", "bb1", "up")

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
            if agent.fake is not None:
                agent.fake.close()
        for agent in self.agents.values():
            subprocess.run(["ip", "netns", "del", agent.netns], check=False, capture_output=True)

    def logs(self) -> str:
        """Each agent's own log lines, the last ones (pika's DEBUG chatter left out:
        it would push meshroute's lines out of the tail)."""
        return "\n".join(
            f"----- {a.name} -----\n{_own_lines(a.log.read_text(errors='replace'))[-12000:]}"
            for a in self.agents.values()
            if a.log.exists()
        )


def _own_lines(text: str) -> str:
    return "".join(line for line in text.splitlines(True) if " DEBUG pika." not in line)


FAST = {
    "announce_interval": "0.5",
    "hold_time": "3",
    "status_poll_interval": "1",
    "sync_timeout": "1",
    "resync_interval": "5",
}
"""Timers for tests: a hold time of seconds, not the production 15 s."""


@contextlib.contextmanager
def running_mesh(
    rabbit,
    tmp: Path,
    tag: str,
    names: tuple[str, ...] = ("a", "b", "c"),
    settings: dict[str, str] | None = None,
    clock_offsets: dict[str, int] | None = None,
):
    """Agents ``names`` (suffixed with a unique exchange name) on the session's node,
    ready; stopped and their namespaces removed at the end, their logs printed (pytest
    shows them when the test failed)."""
    rabbit.require_node()
    exchange = rabbit.unique(tag)
    mesh = Mesh(rabbit, tmp, exchange, settings if settings is not None else FAST)
    try:
        for name in names:
            mesh.add(f"{name}-{exchange}", clock_offset=(clock_offsets or {}).get(name, 0))
        for agent in mesh.agents.values():
            agent.wait_ready()
        yield mesh
    finally:
        mesh.close()
        print(mesh.logs())
