"""Shared harness for the real-agent benches (``bench_drain.py``, ``bench_join.py``).

One private RabbitMQ node (own name, ports, data dir; stopped by pid), one real
``meshroute agent`` process (the daemon's own code: pika bus, netlink dataplane)
whose dataplane works in a throwaway namespace ``<prefix>-<name>`` (a veth pair puts
the backbone 10.200.200.0/24 on link), and light peers in this process that speak
the real protocol on the real bus (``AmqpBus``, a broker user each). Route arrival
times come from ``ip -ts monitor route`` in the agent's namespace (a C process
stamping each notification as the kernel hands it over). Everything is taken down
in ``close()``; nothing leaves the namespaces and loopback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the agent process harness is shared with the tests

from meshroute.bus.amqp import AmqpBus  # noqa: E402
from meshroute.bus.base import Envelope  # noqa: E402
from meshroute.core import codec  # noqa: E402
from meshroute.core.claimset import ClaimSet  # noqa: E402
from meshroute.core.model import ClaimRecord, Delta, Header, Heartbeat, Snapshot, SyncRequest  # noqa: E402
from meshroute.lab.rabbitmq import RabbitNode, free_port  # noqa: E402
from tests.integration import mesh  # noqa: E402
from tests.integration.mesh import AgentProc, ip  # noqa: E402

EXCHANGE = "meshroute"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROTO = "201"
AGENT = "agent-a"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load() -> float:
    return os.getloadavg()[0]


class RouteMonitor:
    """Counts meshroute's route notifications in one namespace, with kernel-side stamps.

    ``ip`` writes to a file, which a thread here tails: a pipe to a busy Python
    reader would block ``ip`` and overflow its netlink socket (ENOBUFS, lost lines)."""

    def __init__(self, netns: str, path: Path) -> None:
        argv = ["ip", "netns", "exec", netns, "stdbuf", "-oL", "ip", "-ts",
                "-rcvbuf", str(32 << 20), "monitor", "route"]  # fmt: skip
        self.path = path
        with path.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.added: list[float] = []  # wall times of each new/changed route
        self.deleted: list[float] = []
        self.lost = 0  # ENOBUFS reports: notifications the monitor missed
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.3)  # subscribed before anything is timed

    def _read(self) -> None:
        with self.path.open(errors="replace") as lines:
            partial = ""
            while self.proc.poll() is None:
                chunk = lines.readline()
                if not chunk:
                    time.sleep(0.005)
                    continue
                partial += chunk
                if partial.endswith("\n"):
                    self._line(partial)
                    partial = ""

    def _line(self, line: str) -> None:
        if "No buffer space" in line:
            with self.cond:
                self.lost += 1
            return
        if not line.startswith("[") or f"proto {PROTO}" not in line:
            return
        stamp, _, rest = line[1:].partition("] ")
        at = datetime.fromisoformat(stamp).timestamp()
        with self.cond:
            (self.deleted if rest.startswith("Deleted") else self.added).append(at)
            self.cond.notify_all()

    def reset(self) -> None:
        with self.cond:
            self.added.clear()
            self.deleted.clear()
            self.lost = 0

    def wait(self, predicate: Callable[[RouteMonitor], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    def wait_count(self, netns: str, n: int, deleted: bool, timeout: float) -> tuple[float, bool]:
        """Until ``n`` routes were added (or deleted); the wall time of the last one.

        When the monitor lost notifications (a burst beyond the socket buffer that
        ``net.core.rmem_max`` allows), completion is checked with a dump once the
        notifications have stopped for a second, and the time is that of the last
        notification seen (``exact`` False: a lower bound)."""
        stamps = self.deleted if deleted else self.added
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.wait(lambda m: len(stamps) >= n, 1.0):
                with self.cond:
                    return max(stamps), True
            with self.cond:
                seen, last = len(stamps), max(stamps, default=0.0)
            if self.lost and seen and time.time() - last > 1.0:
                present = ip("-n", netns, "route", "show", "proto", PROTO).count("\n")
                if present == (0 if deleted else n):
                    return last, False
        raise RuntimeError(f"only {len(stamps)} of {n} route notifications")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=5)


class LightPeer:
    """One peer agent on the real bus: heartbeats, deltas, snapshots on request."""

    acknowledges = True  # as the agent: one ack per message, after handling it

    def __init__(self, name: str, url: str, hop: str, claims: tuple[ClaimRecord, ...] = ()):
        self.name = name
        self.hop = ipaddress.ip_address(hop)
        self.claim_set = ClaimSet()  # what it holds now (snapshots, digests)
        for record in claims:
            self.claim_set.set(record)
        self.epoch, self.seq = int(time.time() * 1000), 0
        self.snapshots_sent = 0
        self.state_seq = 0  # seq of the last snapshot or delta sent (the heartbeat's)
        self.up = threading.Event()
        # Held from a message's seq to its publish: the heartbeat thread must never
        # publish a state_seq whose delta is not on the wire yet (the agent would
        # rightly ask for a snapshot, and a drain round would carry its cost).
        self._lock = threading.RLock()
        self.bus = AmqpBus([url], name, EXCHANGE)

    def start(self) -> None:
        self.bus.start(self)

    def header(self) -> Header:
        with self._lock:
            self.seq += 1
            return Header(self.name, self.epoch, self.seq)

    # bus handler: answer sync requests with a direct snapshot (as an agent does)
    def on_message(self, envelope: Envelope) -> None:
        if envelope.msg_type != "sync-request" or envelope.user_id == self.name:
            if envelope.receipt is not None:
                self.bus.acknowledge(envelope.receipt)
            return
        message = codec.decode(envelope.body, user_id=envelope.user_id)
        assert isinstance(message, SyncRequest)
        if message.target in (None, self.name):
            self.send_snapshot(to=message.header.origin)
        if envelope.receipt is not None:
            self.bus.acknowledge(envelope.receipt)

    def on_connection(self, up: bool) -> None:
        if up:
            self.up.set()

    def send_snapshot(self, to: str | None) -> None:
        with self._lock:
            records = tuple(self.claim_set.records.values())
            snap = Snapshot(self.header(), self.hop, None, records)
            self.state_seq = snap.header.seq
            self.bus.publish(codec.encode(snap), msg_type="snapshot",
                             message_id=f"{self.name}-{snap.header.seq}", to=to)  # fmt: skip
            self.snapshots_sent += 1

    def delta(self, address, record: ClaimRecord | None) -> None:
        """One claim (or its withdrawal, ``record=None``) as a delta to everyone."""
        with self._lock:
            message = Delta(self.header(), address, record)
            if record is None:
                self.claim_set.remove(address)
            else:
                self.claim_set.set(record)
            self.state_seq = message.header.seq
            self.bus.publish(codec.encode(message), msg_type="delta",
                             message_id=f"{self.name}-{message.header.seq}")  # fmt: skip

    def heartbeat(self, to: str | None = None) -> None:
        with self._lock:
            count, digest, state_seq = len(self.claim_set), self.claim_set.digest, self.state_seq
            beat = Heartbeat(self.header(), self.hop, None, state_seq=state_seq,
                             count=count, digest=digest)  # fmt: skip
            # Straight to the agent under test: fanned out, 100 peers' heartbeats would
            # be 10,000 deliveries/s into this one Python process, which cannot keep up
            # (bench_scale.py), and its answers to sync requests would lag behind them.
            self.bus.publish(codec.encode(beat), msg_type="heartbeat",
                             message_id=f"{self.name}-{beat.header.seq}", to=to)  # fmt: skip


# A trial of "import only the pyroute2 the agent needs" without changing the code
# that imports it: pyroute2's package __init__ imports the whole library (~10 MiB
# of RSS and ~100 ms here, besides pika and click); this prelude registers the
# package without running it, so ``pyroute2.netns``, ``pyroute2.netlink...`` and
# ``IPRoute`` (netinfo's start-up look-ups) load alone. Run with ``--light-pyroute2``.
LIGHT_PYROUTE2 = """
import importlib, importlib.machinery, importlib.util, sys
_spec = importlib.util.find_spec("pyroute2")
_pkg = importlib.util.module_from_spec(
    importlib.machinery.ModuleSpec("pyroute2", None, is_package=True))
_pkg.__path__ = list(_spec.submodule_search_locations)
_WHERE = {"IPRoute": "pyroute2.iproute.linux"}

def _lazy(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    try:
        return importlib.import_module("pyroute2." + name)
    except ModuleNotFoundError:
        raise AttributeError(name) from None

_pkg.__getattr__ = _lazy
sys.modules["pyroute2"] = _pkg
"""
# A trial of two of the pure-core changes docs/performance.md proposes, applied by
# monkeypatching the agent process (the files belong to other work): one JSON
# decoder object for every body, and IPv4 text parsed by inet_pton (the slow path
# decides whatever is not canonical). ``--trial-core`` / trial_core.py: it measures
# what the changes would gain, nothing more. (Testing client_networks as integers
# and masks was tried too: no faster with one network, 0.74 against 0.63 µs.)
TRIAL_CORE = """
import ipaddress, json, socket
from meshroute.core import codec

_DECODER = json.JSONDecoder(object_pairs_hook=codec._unique_keys,
                            parse_constant=codec._no_constant)

def _parse_json(body):
    if not isinstance(body, bytes | bytearray | memoryview):
        raise codec.CodecError(f"body: expected bytes, got {type(body).__name__}")
    if len(body) > codec.MAX_BODY_BYTES:
        raise codec.CodecError(f"body: {len(body)} bytes exceeds the limit")
    try:
        obj = _DECODER.decode(bytes(body).decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise codec.CodecError(f"body: not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise codec.CodecError(f"body: expected a JSON object, got {type(obj).__name__}")
    return obj

_slow_ip = ipaddress.ip_address
_V4 = ipaddress.IPv4Address

def _fast_ip(text):
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
    except (OSError, TypeError):
        return _slow_ip(text)
    address = _V4(int.from_bytes(packed, "big"))
    return address if str(address) == text else _slow_ip(text)

codec._parse_json = _parse_json
codec.ipaddress = type("ipaddress_fast", (), {"ip_address": staticmethod(_fast_ip)})
"""
RUN_AGENT = """
import sys
from meshroute.agent.daemon import main
sys.exit(main(sys.argv[1]))
"""


class BenchAgent(AgentProc):
    """The agent process, optionally behind a prelude (``python -c PRELUDE...``)."""

    prelude: str | None = None

    def start(self) -> None:
        if self.prelude is None:
            super().start()
            return
        config = self.write_config()
        command = [sys.executable, "-c", self.prelude + RUN_AGENT, str(config)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=mesh.REPO)  # fmt: skip


@dataclass
class Bench:
    """The node, one agent namespace and process, and the monitor; see the module doc."""

    prefix: str
    settings: dict[str, str]
    prelude: str | None = None  # e.g. LIGHT_PYROUTE2

    def __post_init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.node = RabbitNode(self.tmp / "rabbit", node_name=f"{self.prefix}-{os.getpid()}",
                               port=free_port())  # fmt: skip
        self.netns = f"{self.prefix}-a"
        self.agent: BenchAgent | None = None
        self.monitor: RouteMonitor | None = None
        self.peers: list[LightPeer] = []
        self._beating = threading.Event()

    def use_agent_source(self, source: Path) -> None:
        """Run the agent from another checkout (``python -m meshroute`` in that
        directory): the same bench, side by side with other code."""
        mesh.REPO = source

    def start_node(self) -> None:
        self.node.start(timeout=90)

    def make_agent(self) -> BenchAgent:
        """The agent's namespace, user and config; not started (``agent.start()``)."""
        # Byte code compiled now, as an installed package has it: with
        # PYTHONDONTWRITEBYTECODE set and a source just edited, every start would
        # compile the changed modules again (measured: a fifth of a start-up).
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(mesh.REPO / "meshroute")],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("netns", "del", self.netns)
        ip("netns", "add", self.netns)
        ip("-n", self.netns, "link", "set", "lo", "up")
        ip("-n", self.netns, "link", "add", "bb0", "type", "veth", "peer", "name", "bb1")
        ip("-n", self.netns, "addr", "add", "10.200.200.1/24", "dev", "bb0")
        ip("-n", self.netns, "link", "set", "bb0", "up")
        ip("-n", self.netns, "link", "set", "bb1", "up")
        name = AGENT
        url = self.node.add_agent(name, f"pw-{name}", EXCHANGE)
        self.agent = BenchAgent(name, 1, self.netns, self.tmp, url, EXCHANGE, self.settings)
        self.agent.prelude = self.prelude
        self.agent.serve_openvpn()
        self.monitor = RouteMonitor(self.netns, self.tmp / "monitor.txt")
        return self.agent

    def add_peers(self, claims_by_peer: list[tuple[ClaimRecord, ...]]) -> list[LightPeer]:
        names = [f"peer{i:03d}" for i in range(len(claims_by_peer))]
        urls = self.node.add_agents({n: f"pw-{n}" for n in names}, EXCHANGE)
        for i, (name, claims) in enumerate(zip(names, claims_by_peer, strict=True)):
            peer = LightPeer(name, urls[name], f"10.200.200.{10 + i}", claims)
            peer.start()
            self.peers.append(peer)
        for peer in self.peers:
            if not peer.up.wait(60):
                raise RuntimeError(f"{peer.name} did not connect")
        return self.peers

    def beat(self, interval: float = 1.0) -> None:
        """Every peer heartbeats every ``interval`` s from now on (a thread)."""

        def run() -> None:
            while not self._beating.wait(interval):
                for peer in self.peers:
                    peer.heartbeat(to=AGENT)

        threading.Thread(target=run, daemon=True).start()

    def close(self) -> None:
        self._beating.set()
        for peer in self.peers:
            peer.bus.stop(2)
        if self.monitor is not None:
            self.monitor.close()
        if self.agent is not None:
            self.agent.stop()
            if self.agent.fake is not None:
                self.agent.fake.listener.close()
        subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)
        self.node.stop()
        if not os.environ.get("MESHROUTE_BENCH_KEEP"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def agent_log_tail(self, lines: int = 20) -> str:
        assert self.agent is not None
        text = self.agent.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def claims(first: str, count: int, cn_prefix: str = "c") -> tuple[ClaimRecord, ...]:
    """``count`` claims for consecutive addresses from ``first``, stamped now."""
    now = int(time.time())
    base = int(ipaddress.ip_address(first))
    return tuple(
        ClaimRecord(ipaddress.ip_address(base + i), f"{cn_prefix}{i}", now, now * 1000)
        for i in range(count)
    )


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
