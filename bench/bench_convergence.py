#!/usr/bin/env python3
"""Benchmark: convergence, from OpenVPN calling the hook to the route in every kernel.

Run as root: ``.venv/bin/python bench/bench_convergence.py --servers 5 --samples 200``.

It brings up its own lab (prefix ``mrb<pid % 10000>``: real OpenVPN servers and
clients, a private RabbitMQ node, one real agent per server; see docs/lab.md) and
always takes it down again (``finally``, also on Ctrl-C or SIGTERM). It writes
nothing in the repo and never touches the root namespace.

One sample: a source server, and an address of the VPN subnet that no lab node uses
(between the servers' tun addresses and the clients' sticky range, inside every
agent's ``client_networks``). The real hook command runs as OpenVPN runs it (same
argv as the lab's server config, env ``common_name``, ``ifconfig_pool_remote_ip``,
``time_unix``); ``t0`` is taken just before the spawn. One rtnetlink socket per
server namespace, subscribed to route notifications, timestamps every RTM_NEWROUTE /
RTM_DELROUTE of protocol 201 as it arrives (a reader thread per socket). Convergence
of a sample = max over the other servers of (first arrival - t0). Then the same
session's ``client-disconnect`` runs and the withdrawal is measured the same way; the
next sample starts only once every route is gone.

Samples alternate between the two hook forms (the fast ``python -S .../hook.py`` the
lab uses, and the ``.venv/bin/meshroute hook`` console script), round-robin over the
source servers. A sample in which the source agent's status poll (the reconciling
truth, which does not list the made-up session) removed the claim before the
disconnect hook ran is counted as "raced" and left out.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
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
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import netns as pyroute2_netns

from meshroute.lab.lab import Lab
from meshroute.lab.netns import list_netns
from meshroute.lab.openvpn_conf import HookCommand
from meshroute.lab.topology import STICKY_OFFSET, VPN4, VPN6

PROTO = 201
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x40, 0x400
RTA_DST = 1
HDR = struct.Struct("=IHHII")
RTMSG = struct.Struct("=BBBBBBBBI")
RTA = struct.Struct("=HH")
CONSOLE = Path(sys.executable).parent / "meshroute"
NEW, DEL = "new", "del"


class RouteWatch:
    """Arrival times (time.monotonic) of our route notifications in every server netns.

    ``first[(kind, dst, server)]`` keeps the first arrival; :meth:`arm` forgets an
    address's entries before it is used again.
    """

    def __init__(self, netns_by_server: dict[str, str], ipv6: bool) -> None:
        self.groups = RTMGRP_IPV4_ROUTE | (RTMGRP_IPV6_ROUTE if ipv6 else 0)
        self.netns_by_server = netns_by_server
        self.first: dict[tuple[str, str, str], float] = {}
        self.cond = threading.Condition()
        self.socks: list[socket.socket] = []

    def start(self) -> None:
        for server, ns in self.netns_by_server.items():
            sock = _socket_in_netns(ns)
            sock.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE: never ENOBUFS
            sock.bind((0, self.groups))
            self.socks.append(sock)
            threading.Thread(target=self._read, args=(server, sock), daemon=True).start()

    def close(self) -> None:
        for sock in self.socks:
            sock.close()

    def arm(self, dsts: list[str]) -> None:
        with self.cond:
            for key in [k for k in self.first if k[1] in dsts]:
                del self.first[key]

    def wait(self, kind: str, dsts: list[str], servers: list[str], timeout: float) -> bool:
        """Until every server has seen ``kind`` for every dst (False on timeout)."""
        keys = [(kind, d, s) for d in dsts for s in servers]
        with self.cond:
            return self.cond.wait_for(lambda: all(k in self.first for k in keys), timeout)

    def _read(self, server: str, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                return  # closed at the end
            now = time.monotonic()  # first thing after the wake-up: the arrival time
            found = list(_our_routes(data))
            if found:
                with self.cond:
                    for kind, dst in found:
                        self.first.setdefault((kind, dst, server), now)
                    self.cond.notify_all()


def _socket_in_netns(ns: str) -> socket.socket:
    """setns(2) moves only the calling thread: a short-lived thread opens the socket."""
    box: dict[str, object] = {}

    def enter_and_open() -> None:
        try:
            pyroute2_netns.setns(ns, flags=0)
            box["sock"] = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except Exception as exc:
            box["error"] = exc

    thread = threading.Thread(target=enter_and_open)
    thread.start()
    thread.join()
    if "error" in box:
        raise OSError(f"netlink socket in {ns}: {box['error']}")
    return box["sock"]  # type: ignore[return-value]


def _our_routes(data: bytes):
    """(kind, dst) of every protocol-201 route message in one datagram."""
    offset = 0
    while offset + 28 <= len(data):
        length, kind, _, _, _ = HDR.unpack_from(data, offset)
        if kind in (RTM_NEWROUTE, RTM_DELROUTE) and data[offset + 21] == PROTO:
            family, dst_len = data[offset + 16], data[offset + 17]
            cursor, end = offset + 28, offset + length
            while cursor + 4 <= end:
                alen, atype = RTA.unpack_from(data, cursor)
                if atype == RTA_DST:
                    raw = data[cursor + 4 : cursor + alen]
                    addr = ipaddress.ip_address(raw) if family in (2, 10) else raw
                    yield (NEW if kind == RTM_NEWROUTE else DEL), f"{addr}/{dst_len}"
                if alen < 4:
                    break
                cursor += (alen + 3) & ~3
        offset += (length + 3) & ~3 or len(data)


@dataclass
class Sample:
    form: str
    source: str
    connect: list[float] = field(default_factory=list)  # per other server, s after t0
    connect_hook: float = 0.0  # the hook process's wall time (spawn to exit)
    disconnect: list[float] = field(default_factory=list)
    hook_send: float = 0.0  # the same hook against a private socket: spawn to datagram
    timed_out: bool = False
    raced: bool = False


@dataclass(frozen=True)
class Session:
    address: ipaddress.IPv4Address
    address6: ipaddress.IPv6Address | None
    common_name: str
    since: int

    @property
    def dsts(self) -> list[str]:
        return [f"{self.address}/32"] + ([f"{self.address6}/128"] if self.address6 else [])

    def env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "script_type": "",
               "common_name": self.common_name, "ifconfig_pool_remote_ip": str(self.address),
               "time_unix": str(self.since)}  # fmt: skip
        if self.address6:
            env["ifconfig_pool_remote_ip6"] = str(self.address6)
        return env


def hook_argv(form: str, sock: Path, event: str) -> list[str]:
    """The argv OpenVPN builds from the lab's config line (it splits it, no shell)."""
    command = HookCommand.fast(sock) if form == "fast" else HookCommand(CONSOLE, sock)
    return shlex.split(command.command(event))


def run_hook(argv: list[str], session: Session, event: str) -> tuple[float, float]:
    """Spawn the hook as OpenVPN would; (t0 just before the spawn, wall time)."""
    env = {**session.env(), "script_type": event}
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.wait()
    return t0, time.monotonic() - t0


def spawn_to_datagram(argv: list[str], session: Session, probe: socket.socket) -> float:
    """How long the hook takes to send its datagram (to ``probe``, a socket of ours):
    the part of the convergence that is the hook process, not the agents."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env={**session.env(), "script_type": "client-connect"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        probe.recv(4096)
        return time.monotonic() - t0
    finally:
        proc.wait()


def one_sample(lab: Lab, watch: RouteWatch, servers: list[str], session: Session,
               source: str, form: str, timeout: float, probe: socket.socket) -> Sample:  # fmt: skip
    sample = Sample(form, source)
    others = [s for s in servers if s != source]
    sock = lab.paths.hook_socket(source)
    watch.arm(session.dsts)
    t0, sample.connect_hook = run_hook(hook_argv(form, sock, "client-connect"), session,
                                       "client-connect")  # fmt: skip
    sample.timed_out = not watch.wait(NEW, session.dsts, others, timeout)
    sample.connect = _arrivals(watch, NEW, session.dsts, others, t0)
    time.sleep(0.01)
    t1, _ = run_hook(hook_argv(form, sock, "client-disconnect"), session,
                                          "client-disconnect")  # fmt: skip
    done = watch.wait(DEL, session.dsts, others, timeout)
    sample.timed_out |= not done
    deletes = _arrivals(watch, DEL, session.dsts, others, t1)
    sample.raced = any(d < 0 for d in deletes)  # withdrawn before the disconnect hook ran
    sample.disconnect = deletes
    if not done:  # let a poll clear what is left, so the next sample starts clean
        watch.wait(DEL, session.dsts, others, 5.0)
    time.sleep(0.01)
    probe_argv = hook_argv(form, Path(probe.getsockname()), "client-connect")
    sample.hook_send = spawn_to_datagram(probe_argv, session, probe)
    return sample


def _arrivals(watch: RouteWatch, kind: str, dsts: list[str], servers: list[str],
              t0: float) -> list[float]:  # fmt: skip
    """Per server: when its last family arrived (a server has converged when all did)."""
    out = []
    for server in servers:
        times = [watch.first.get((kind, d, server)) for d in dsts]
        if all(t is not None for t in times):
            out.append(max(times) - t0)  # type: ignore[type-var]
    return out


def free_addresses(servers: int) -> list[int]:
    """Host numbers no lab node uses: above the servers' tun (.K), below the sticky .64+J."""
    return list(range(servers + 1, STICKY_OFFSET))


def quantiles(values: list[float]) -> str:
    """n, p50, p90, p99 (nearest rank) and max, in ms."""
    if not values:
        return f"{0:>5}" + f" {'-':>8}" * 4
    ordered = sorted(values)
    ranks = [ordered[max(0, math.ceil(p * len(ordered)) - 1)] for p in (0.5, 0.9, 0.99)]
    return f"{len(ordered):>5}" + "".join(f" {v * 1000:>8.1f}" for v in [*ranks, ordered[-1]])


def rows(mine: list[Sample]) -> dict[str, list[float]]:
    send = statistics.median(s.hook_send for s in mine)  # the hook's own share
    connect = [max(s.connect) for s in mine]
    disconnect = [max(s.disconnect) for s in mine]
    return {
        "connect: convergence (max over others)": connect,
        "connect: minus median hook spawn-to-send": [c - send for c in connect],
        "connect: first-to-last server spread": [max(s.connect) - min(s.connect) for s in mine],
        "hook: process wall time (spawn to exit)": [s.connect_hook for s in mine],
        "hook: spawn to datagram (private socket)": [s.hook_send for s in mine],
        "disconnect: withdrawal convergence": disconnect,
        "disconnect: minus median hook spawn-to-send": [d - send for d in disconnect],
        "disconnect: first-to-last server spread": [
            max(s.disconnect) - min(s.disconnect) for s in mine
        ],
    }


def report(samples: list[Sample]) -> None:
    print(f"\n{'ms':<46} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    for form, label in (("fast", "python -S hook.py"), ("console", "meshroute hook")):
        mine = [s for s in samples if s.form == form and not s.raced and not s.timed_out]
        if mine:
            print(f"-- hook form: {label}")
            for name, values in rows(mine).items():
                print(f"{name:<46} {quantiles(values)}")
    raced = sum(s.raced for s in samples)
    timed_out = sum(s.timed_out and not s.raced for s in samples)
    print(f"\nsamples {len(samples)}; left out: {raced} raced with a status poll, "
          f"{timed_out} timed out")  # fmt: skip


def machine() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    return (f"nproc {os.cpu_count()}, kernel {os.uname().release}, python "
            f"{sys.version.split()[0]}, load {' '.join(load)}")  # fmt: skip


def measure(lab: Lab, args: argparse.Namespace) -> list[Sample]:
    plan = lab.plan()
    servers = list(plan.server_names)
    watch = RouteWatch({s.name: s.netns for s in plan.servers}, args.ipv6)
    watch.start()
    hosts = free_addresses(args.servers)
    samples = []
    probe_dir = tempfile.TemporaryDirectory(prefix="mrb-probe-")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    probe.bind(str(Path(probe_dir.name) / "hook.sock"))
    probe.settimeout(args.timeout)
    try:
        for i in range(2 * args.samples):
            host = hosts[i % len(hosts)]
            session = Session(VPN4.network_address + host,
                              VPN6.network_address + host if args.ipv6 else None,
                              f"bench{i}", int(time.time()))  # fmt: skip
            form = ("fast", "console")[i % 2]
            source = servers[(i // 2) % len(servers)]
            samples.append(
                one_sample(lab, watch, servers, session, source, form, args.timeout, probe)
            )
            time.sleep(args.gap)
    finally:
        watch.close()
        probe.close()
        probe_dir.cleanup()
    return samples


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=5)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--samples", type=int, default=200, help="per hook form")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between samples")
    parser.add_argument("--timeout", type=float, default=2.0, help="per sample and direction")
    parser.add_argument("--ipv6", action="store_true", help="also ifconfig_pool_remote_ip6")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark builds a lab of network namespaces")
    prefix = f"mrb{os.getpid() % 10000}"
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM too must reach the finally below
    lab = Lab(prefix)
    print(f"machine: {machine()}")
    try:
        took = lab.up(args.servers, args.clients, timeout=90.0)
        print(f"lab {prefix}: {args.servers} servers, {args.clients} clients up in {took:.1f}s")
        samples = measure(lab, args)
    finally:
        lab.down()
        left = [ns for ns in list_netns() if ns.startswith(f"{prefix}-")]
        if left:
            print(f"WARNING: namespaces left behind: {left}", file=sys.stderr)
    print(f"after: {machine()}")
    report(samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
