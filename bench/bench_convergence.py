#!/usr/bin/env python3
"""Benchmark: convergence, meshroute side by side with OpenVPN + BIRD 2 iBGP, one run.

Run as root (needs ``bird2``: ``apt-get install bird2``; see bench/README.md)::

    .venv/bin/python bench/bench_convergence.py --servers 5 --samples 200

It brings up its own lab (prefix ``mrb<pid % 10000>``: real OpenVPN servers and
clients, a private RabbitMQ node, one real agent per server; see docs/lab.md), adds
one BIRD 2 per server namespace in an iBGP full mesh over the backbone (see
``bird_mesh.py``), and always takes it all down again (``finally``, also on Ctrl-C
or SIGTERM). It writes nothing in the repo and never touches the root namespace.

One sample: a form, a source server (round robin) and an address of the VPN subnet
that no lab node uses. The forms, interleaved so that they share the machine's load:

- ``plugin``: meshroute's OpenVPN plugin (this checkout's, built fresh), loaded in
  this process as OpenVPN loads it, one instance per server (argv: that server's
  agent hook socket); the event is ``openvpn_plugin_func_v3(CLIENT_CONNECT_V2)``
  with OpenVPN's variables; ``t0`` just before the call.
- ``fast`` / ``console``: meshroute's script hooks (``python3 -S hook.py`` /
  ``.venv/bin/meshroute hook``), spawned as OpenVPN spawns them (no shell).
- ``bird``: OpenVPN + BIRD: the learn-address script (``/bin/sh`` + ``ip route
  replace`` into table 100), spawned in the source server's namespace; BIRD learns
  it and sends it over iBGP; the other servers' BIRD install it into table 101.

Scripts are spawned from a thread that entered the source server's namespace, as
OpenVPN (which lives there) would. ``t0`` is taken just before the spawn/call. One
``ip -ts monitor route`` per server namespace stamps every route
notification of interest as it reads it: protocol 201 (meshroute), protocol 12 in
table 101 (BIRD's install), anything in table 100 (the learn-address script's
route, at the source). Convergence of a sample = max over the other servers of
(arrival - t0). Then the withdrawal (``client-disconnect`` for meshroute,
``learn-address delete`` for BIRD) is measured the same way.

Where meshroute's time goes: a packet socket in the broker's namespace timestamps
the AMQP segment that carries the sample's address, in (the source agent's publish)
and out (the delivery to each other agent); so each meshroute sample splits into
event -> publish at the broker (source agent), broker fanout, delivery -> route
(receiving agent). For BIRD: the script's route in table 100 at the source ->
route in the others (BIRD's own share).

A meshroute sample in which the source agent's status poll (the reconciling truth,
which does not list the made-up session) removed the claim before the disconnect
ran is counted as "raced" and left out.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import queue
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pyroute2 import netns as pyroute2_netns

from meshroute.lab.lab import Lab
from meshroute.lab.netns import list_netns
from meshroute.lab.openvpn_conf import HookCommand
from meshroute.lab.topology import STICKY_OFFSET, VPN4, LabPlan

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the plugin loader is shared with the tests
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bird_mesh import INSTALL_TABLE, LEARN_TABLE, RTPROT_BIRD, BirdMesh, BirdNode  # noqa: E402

from tests.functional.plugin_fixtures import (  # noqa: E402
    CLIENT_CONNECT_V2,
    CLIENT_DISCONNECT,
    PluginHost,
    build_plugin,
)

PROTO_MESH = 201
CONSOLE = Path(sys.executable).parent / "meshroute"
NEW, DEL = "new", "del"
MESH, BIRD, LEARN = "mesh", "bird", "learn"  # what a route notification is
FORMS = ("plugin", "fast", "console", "bird")
AMQP_PORT = 5672
ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35


def in_netns(ns: str, make: Callable[[], object]) -> object:
    """setns(2) moves only the calling thread: a short-lived thread makes the socket."""
    box: dict[str, object] = {}

    def enter_and_make() -> None:
        try:
            pyroute2_netns.setns(ns, flags=0)
            box["value"] = make()
        except Exception as exc:
            box["error"] = exc

    thread = threading.Thread(target=enter_and_make)
    thread.start()
    thread.join()
    if "error" in box:
        raise OSError(f"in {ns}: {box['error']}")
    return box["value"]


class RouteWatch:
    """When each route notification of interest reached every server namespace.

    One ``ip -ts monitor route`` per server namespace (a small C process,
    woken by the kernel's notification, that stamps it with the wall clock as it
    reads it: no interpreter lock between the kernel and the timestamp); a thread
    per monitor turns the lines into ``first[(what, kind, dst, server)]`` on this
    process's monotonic clock. :meth:`arm` forgets an address's entries.
    """

    def __init__(self, netns_by_server: dict[str, str]) -> None:
        self.netns_by_server = netns_by_server
        self.first: dict[tuple[str, str, str, str], float] = {}
        self.cond = threading.Condition()
        self.procs: list[subprocess.Popen[str]] = []
        self.offset = time.time() - time.monotonic()

    def start(self) -> None:
        for server, ns in self.netns_by_server.items():
            # -ts: "[ISO time] route"; stdbuf: a line as soon as it is printed, not 4 KiB later
            argv = ["ip", "netns", "exec", ns, "stdbuf", "-oL", "ip", "-ts", "monitor", "route"]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(server, proc), daemon=True).start()
        time.sleep(0.5)  # every monitor has subscribed before the first sample

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)

    def arm(self, dsts: list[str]) -> None:
        with self.cond:
            for key in [k for k in self.first if k[2] in dsts]:
                del self.first[key]

    def wait(self, what: str, kind: str, dsts: list[str], servers: list[str],
             timeout: float) -> bool:  # fmt: skip
        """Until every server has seen it for every dst (False on timeout)."""
        keys = [(what, kind, d, s) for d in dsts for s in servers]
        with self.cond:
            return self.cond.wait_for(lambda: all(k in self.first for k in keys), timeout)

    def _read(self, server: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = parse_monitor_line(line, self.offset)
            if found:
                at, what, kind, dst = found
                with self.cond:
                    self.first.setdefault((what, kind, dst, server), at)
                    self.cond.notify_all()


def parse_monitor_line(line: str, offset: float) -> tuple[float, str, str, str] | None:
    """``[2026-11-29T02:15:38.972463] [Deleted ]DST ... [table T] [proto P] ...`` ->
    (monotonic time, what, kind, dst) for the routes we time, else None."""
    if not line.startswith("["):
        return None
    stamp, _, rest = line[1:].partition("] ")
    words = rest.split()
    kind = DEL if words[:1] == ["Deleted"] else NEW
    words = words[1:] if kind == DEL else words
    if not words or ":" in words[0] or not words[0][0].isdigit():
        return None  # IPv6, or not a route line
    dst = words[0] if "/" in words[0] else f"{words[0]}/32"
    table = _after(words, "table") or "main"
    proto = _after(words, "proto")
    what = (MESH if proto == str(PROTO_MESH) else
            BIRD if proto in ("bird", str(RTPROT_BIRD)) and table == str(INSTALL_TABLE) else
            LEARN if table == str(LEARN_TABLE) else None)  # fmt: skip
    if what is None:
        return None
    wall = datetime.fromisoformat(stamp).timestamp()
    return wall - offset, what, kind, dst


def _after(words: list[str], key: str) -> str | None:
    try:
        return words[words.index(key) + 1]
    except (ValueError, IndexError):
        return None


class BrokerTap:
    """First time an AMQP segment carrying a sample's address passed the broker's
    interface: ``first[("pub", addr, source_ip)]`` (to the broker) and
    ``first[("dlv", addr, agent_ip)]`` (from the broker)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.needles: dict[bytes, str] = {}
        self.first: dict[tuple[str, str, str], float] = {}
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None

    def start(self) -> None:
        sock = in_netns(self.ns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM,
                                                       socket.htons(ETH_P_ALL)))  # fmt: skip
        assert isinstance(sock, socket.socket)
        # The kernel's own time of each packet (CLOCK_REALTIME), not when this
        # process got to read it: the reader thread shares the GIL with the others.
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock = sock
        self.offset = time.time() - time.monotonic()
        threading.Thread(target=self._read, daemon=True).start()

    def close(self) -> None:
        if self.sock:
            self.sock.close()

    def arm(self, address: str) -> None:
        with self.lock:
            self.needles = {f'"{address}"'.encode(): address}
            self.first = {k: v for k, v in self.first.items() if k[1] != address}

    def _read(self) -> None:
        assert self.sock is not None
        while True:
            try:
                packet, ancillary, _, _ = self.sock.recvmsg(1 << 16, 64)
            except OSError:
                return
            now = time.monotonic()
            for level, kind, data in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS) and len(data) >= 16:
                    sec, nsec = struct.unpack_from("=qq", data)
                    now = sec + nsec / 1e9 - self.offset
            if len(packet) > 40 and packet[0] >> 4 == 4 and packet[9] == socket.IPPROTO_TCP:
                self._note(packet, now)

    def _note(self, packet: bytes, now: float) -> None:
        src, dst = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
        tcp = packet[(packet[0] & 0x0F) * 4 :]
        sport, dport = struct.unpack_from("!HH", tcp)
        if AMQP_PORT not in (sport, dport):
            return
        payload = tcp[(tcp[12] >> 4) * 4 :]
        with self.lock:
            for needle, address in self.needles.items():
                if needle in payload:
                    key = ("pub", address, src) if dport == AMQP_PORT else ("dlv", address, dst)
                    self.first.setdefault(key, now)


class NetnsSpawner:
    """A thread inside a namespace that runs programs there (fork, exec, wait), as a
    process living in that namespace (OpenVPN) would: the child inherits the
    thread's namespace."""

    def __init__(self, ns: str) -> None:
        self.jobs: queue.Queue[tuple[list[str], dict[str, str]] | None] = queue.Queue()
        self.results: queue.Queue[tuple[float, float] | BaseException] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, args=(ns,), daemon=True)
        self.thread.start()

    def run(self, argv: list[str], env: dict[str, str]) -> tuple[float, float]:
        """(t0 just before the spawn, wall time until the program exited)."""
        self.jobs.put((argv, env))
        result = self.results.get(timeout=30)
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self.jobs.put(None)

    def _serve(self, ns: str) -> None:
        try:
            pyroute2_netns.setns(ns, flags=0)
        except Exception as exc:
            self.results.put(exc)
            return
        while (job := self.jobs.get()) is not None:
            argv, env = job
            try:
                t0 = time.monotonic()
                proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fmt: skip
                proc.wait()
                self.results.put((t0, time.monotonic() - t0))
            except Exception as exc:
                self.results.put(exc)


@dataclass
class Sample:
    form: str
    source: str
    connect: dict[str, float] = field(default_factory=dict)  # other server -> s after t0
    hook: float = 0.0  # what OpenVPN waits: the call, or the script's spawn to exit
    disconnect: dict[str, float] = field(default_factory=dict)
    at_source: float | None = None  # bird: the script's route in table 100, after t0
    publish: float | None = None  # mesh: the source agent's publish at the broker
    delivered: dict[str, float] = field(default_factory=dict)  # mesh: other server -> s
    timed_out: bool = False
    raced: bool = False


@dataclass(frozen=True)
class Session:
    address: ipaddress.IPv4Address
    common_name: str
    since: int

    @property
    def dst(self) -> str:
        return f"{self.address}/32"

    def env(self, event: str) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "script_type": event,
                "common_name": self.common_name, "ifconfig_pool_remote_ip": str(self.address),
                "time_unix": str(self.since), "trusted_ip": "198.18.1.7",
                "trusted_port": "58528"}  # fmt: skip


class Triggers:
    """How each form makes OpenVPN's event happen on a server: (t0, OpenVPN's wait)."""

    def __init__(self, lab: Lab, plan: LabPlan, library: Path | None, bird: BirdMesh | None):
        self.lab = lab
        self.spawners = {s.name: NetnsSpawner(s.netns) for s in plan.servers}
        self.plugins = {s.name: PluginHost(library, str(lab.paths.hook_socket(s.name)))
                        for s in plan.servers} if library else {}  # fmt: skip
        for host in self.plugins.values():
            if host.open() != 0:
                raise RuntimeError(f"the plugin did not open: {host.logs}")
        self.bird = bird

    def close(self) -> None:
        for host in self.plugins.values():
            host.close()
        for spawner in self.spawners.values():
            spawner.close()

    def fire(self, form: str, source: str, session: Session, up: bool) -> tuple[float, float]:
        if form == "plugin":
            kind = CLIENT_CONNECT_V2 if up else CLIENT_DISCONNECT
            env = session.env("client-connect" if up else "client-disconnect")
            host = self.plugins[source]
            t0 = time.monotonic()
            host.call(kind, [], env)
            return t0, time.monotonic() - t0
        if form == "bird":
            assert self.bird is not None
            argv = [str(self.bird.script), "add" if up else "delete", str(session.address),
                    *([session.common_name] if up else [])]  # fmt: skip
            return self.spawners[source].run(argv, session.env("learn-address"))
        event = "client-connect" if up else "client-disconnect"
        sock = self.lab.paths.hook_socket(source)
        command = HookCommand.fast(sock) if form == "fast" else HookCommand(CONSOLE, sock)
        return self.spawners[source].run(shlex.split(command.command(event)), session.env(event))


def one_sample(watch: RouteWatch, tap: BrokerTap, triggers: Triggers, servers: list[str],
               session: Session, source: str, form: str, ips: dict[str, str],
               timeout: float) -> Sample:  # fmt: skip
    sample = Sample(form, source)
    others = [s for s in servers if s != source]
    what = BIRD if form == "bird" else MESH
    watch.arm([session.dst])
    tap.arm(str(session.address))
    t0, sample.hook = triggers.fire(form, source, session, up=True)
    sample.timed_out = not watch.wait(what, NEW, [session.dst], others, timeout)
    sample.connect = _arrivals(watch, what, NEW, session.dst, others, t0)
    learned = watch.first.get((LEARN, NEW, session.dst, source))
    sample.at_source = None if learned is None else learned - t0
    pub = tap.first.get(("pub", str(session.address), ips[source]))
    sample.publish = None if pub is None else pub - t0
    sample.delivered = {s: tap.first[k] - t0 for s in others
                        if (k := ("dlv", str(session.address), ips[s])) in tap.first}  # fmt: skip
    time.sleep(0.01)
    t1, _ = triggers.fire(form, source, session, up=False)
    done = watch.wait(what, DEL, [session.dst], others, timeout)
    sample.timed_out |= not done
    deletes = _arrivals(watch, what, DEL, session.dst, others, t1)
    sample.raced = any(d < 0 for d in deletes.values())  # gone before the disconnect ran
    sample.disconnect = deletes
    if not done:  # let a poll clear what is left, so the next sample starts clean
        watch.wait(what, DEL, [session.dst], others, 5.0)
    return sample


def _arrivals(watch: RouteWatch, what: str, kind: str, dst: str, servers: list[str],
              t0: float) -> dict[str, float]:  # fmt: skip
    found = {s: watch.first.get((what, kind, dst, s)) for s in servers}
    return {s: t - t0 for s, t in found.items() if t is not None}


def free_addresses(servers: int) -> list[int]:
    """Host numbers no lab node uses: above the servers' tun (.K), below the sticky .64+J."""
    return list(range(servers + 1, STICKY_OFFSET))


def quantiles(values: list[float]) -> str:
    """n, p50, p90, p99 (nearest rank) and max, in ms."""
    if not values:
        return f"{0:>5}" + f" {'-':>8}" * 4
    ordered = sorted(values)
    ranks = [ordered[max(0, math.ceil(p * len(ordered)) - 1)] for p in (0.5, 0.9, 0.99)]
    return f"{len(ordered):>5}" + "".join(f" {v * 1000:>8.2f}" for v in [*ranks, ordered[-1]])


def rows(form: str, mine: list[Sample]) -> dict[str, list[float]]:
    out = {
        "convergence: event -> route on every other": [max(s.connect.values()) for s in mine],
        "first-to-last server spread": [
            max(s.connect.values()) - min(s.connect.values()) for s in mine
        ],
        "OpenVPN held (call / script spawn to exit)": [s.hook for s in mine],
        "withdrawal: event -> gone everywhere": [max(s.disconnect.values()) for s in mine],
    }
    if form == "bird":
        timed = [s for s in mine if s.at_source is not None]
        out["  script -> route in table 100 (source)"] = [s.at_source or 0.0 for s in timed]
        out["  BIRD's share: table 100 -> every other"] = [
            max(s.connect.values()) - (s.at_source or 0.0) for s in timed
        ]
    else:
        timed = [s for s in mine
                 if s.publish is not None and s.delivered.keys() == s.connect.keys()]  # fmt: skip
        out["  event -> publish at broker (source agent)"] = [s.publish or 0.0 for s in timed]
        out["  broker: publish -> last delivery out"] = [
            max(s.delivered.values()) - (s.publish or 0.0) for s in timed
        ]
        out["  delivery -> route (slowest receiving agent)"] = [
            max(s.connect[k] - s.delivered[k] for k in s.connect) for s in timed
        ]
    return out


LABELS = {"plugin": "meshroute, OpenVPN plugin", "fast": "meshroute, python3 -S hook.py",
          "console": "meshroute, meshroute hook (console script)",
          "bird": "OpenVPN + BIRD 2 iBGP (learn-address: sh + ip route replace)"}  # fmt: skip


def report(samples: list[Sample], forms: list[str]) -> None:
    print(f"\n{'ms':<48} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    for form in forms:
        mine = [s for s in samples if s.form == form and not s.raced and not s.timed_out]
        if mine:
            print(f"-- {LABELS[form]}")
            for name, values in rows(form, mine).items():
                print(f"{name:<48} {quantiles(values)}")
    for form in forms:
        raced = sum(s.raced for s in samples if s.form == form)
        timed_out = sum(s.timed_out and not s.raced for s in samples if s.form == form)
        print(f"{form}: {sum(s.form == form for s in samples)} samples; left out: {raced} "
              f"raced with a status poll, {timed_out} timed out")  # fmt: skip


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes and their threads (10 ms ticks)."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


@dataclass
class CpuUse:
    """CPU time of a group of processes: idle rate first, then during the samples."""

    pids: list[int]
    idle_rate: tuple[float, float] = (0.0, 0.0)  # (user, system) CPU s per s, idle
    start: float = 0.0
    start_cpu: tuple[float, float] = (0.0, 0.0)

    def baseline(self, seconds: float) -> None:
        before, t0 = cpu_seconds(self.pids), time.monotonic()
        time.sleep(seconds)
        after, took = cpu_seconds(self.pids), time.monotonic() - t0
        self.idle_rate = ((after[0] - before[0]) / took, (after[1] - before[1]) / took)

    def begin(self) -> None:
        self.start, self.start_cpu = time.monotonic(), cpu_seconds(self.pids)

    def per_event(self, events: int) -> tuple[float, float]:
        """(user, system) CPU seconds per event above the idle rate, whole group."""
        now, took = cpu_seconds(self.pids), time.monotonic() - self.start
        return tuple(  # type: ignore[return-value]
            (now[i] - self.start_cpu[i] - self.idle_rate[i] * took) / max(1, events) for i in (0, 1)
        )


def cpu_line(what: str, use: CpuUse, events: int) -> str:
    user, system = use.per_event(events)
    return (f"CPU per event, {what} (above idle): {(user + system) * 1000:.2f} ms "
            f"(user {user * 1000:.2f}, system {system * 1000:.2f})")  # fmt: skip


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def machine() -> str:
    loads = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (f"nproc {os.cpu_count()}, kernel {os.uname().release}, python "
            f"{sys.version.split()[0]}, load {loads}")  # fmt: skip


def measure(lab: Lab, triggers: Triggers, forms: list[str], args: argparse.Namespace,
            loads: list[float], cpu: dict[str, CpuUse]) -> list[Sample]:  # fmt: skip
    plan = lab.plan()
    servers = list(plan.server_names)
    ips = {s.name: str(s.backbone) for s in plan.servers}
    watch = RouteWatch({s.name: s.netns for s in plan.servers})
    tap = BrokerTap(plan.broker_ns)
    watch.start()
    tap.start()
    hosts = free_addresses(args.servers)
    samples = []
    for use in cpu.values():
        use.baseline(3.0)
        use.begin()
    try:
        for i in range(len(forms) * args.samples):
            host = hosts[i % len(hosts)]
            session = Session(VPN4.network_address + host, f"bench{i}", int(time.time()))
            form = forms[i % len(forms)]
            source = servers[(i // len(forms)) % len(servers)]
            samples.append(one_sample(watch, tap, triggers, servers, session, source, form,
                                      ips, args.timeout))  # fmt: skip
            if i % 50 == 0:
                loads.append(load())
            time.sleep(args.gap)
    finally:
        watch.close()
        tap.close()
    return samples


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def start_bird(plan: LabPlan, directory: Path) -> BirdMesh:
    nodes = [BirdNode(s.name, s.netns, str(s.backbone),
                      tuple(str(p.backbone) for p in plan.servers if p.name != s.name))
             for s in plan.servers]  # fmt: skip
    mesh = BirdMesh(directory, nodes)
    mesh.start()
    took = mesh.wait_established()
    print(f"BIRD: {len(nodes)} routers, iBGP full mesh established in {took:.1f}s")
    return mesh


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=5)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--samples", type=int, default=200, help="per form")
    parser.add_argument("--forms", default="plugin,fast,bird",
                        help=f"comma-separated, of {', '.join(FORMS)}")  # fmt: skip
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between samples")
    parser.add_argument("--timeout", type=float, default=2.0, help="per sample and direction")
    args = parser.parse_args()
    forms = [f for f in args.forms.split(",") if f]
    if not forms or any(f not in FORMS for f in forms):
        sys.exit(f"--forms: choose from {', '.join(FORMS)}")
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark builds a lab of network namespaces")
    prefix = f"mrb{os.getpid() % 10000}"
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM too must reach the finally below
    lab = Lab(prefix)
    work = tempfile.TemporaryDirectory(prefix="mrb-conv-")
    library = build_plugin(Path(work.name) / "plugin") if "plugin" in forms else None
    print(f"machine: {machine()}")
    bird = triggers = None
    loads = [load()]
    cpu_lines: list[str] = []
    try:
        took = lab.up(args.servers, args.clients, timeout=90.0,
                      hooks="plugin" if library else "script")  # fmt: skip
        print(f"lab {prefix}: {args.servers} servers, {args.clients} clients up in {took:.1f}s")
        plan = lab.plan()
        if "bird" in forms:
            bird = start_bird(plan, Path(work.name) / "bird")
        triggers = Triggers(lab, plan, library, bird)
        state = lab.state()
        cpu = {"agents": CpuUse([state.pids[f"{s}.agent"] for s in plan.server_names])}
        if bird:
            cpu["bird"] = CpuUse([proc.pid for proc in bird.procs.values()])
        samples = measure(lab, triggers, forms, args, loads, cpu)
        mesh_events = 2 * sum(s.form != "bird" for s in samples)
        bird_events = 2 * sum(s.form == "bird" for s in samples)
        cpu_lines = [cpu_line(f"all {args.servers} agents", cpu["agents"], mesh_events)]
        if bird:
            cpu_lines.append(cpu_line(f"all {args.servers} BIRDs", cpu["bird"], bird_events))
    finally:
        if triggers:
            triggers.close()
        if bird:
            bird.stop()
        lab.down()
        work.cleanup()
        left = [ns for ns in list_netns() if ns.startswith(f"{prefix}-")]
        if left:
            print(f"WARNING: namespaces left behind: {left}", file=sys.stderr)
    loads.append(load())
    print(f"after: {machine()}")
    print(
        f"load (1-min average) during the run: min {min(loads):.2f}, median "
        f"{statistics.median(loads):.2f}, max {max(loads):.2f} on {os.cpu_count()} CPUs"
    )
    report(samples, forms)
    print("\n".join(cpu_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
