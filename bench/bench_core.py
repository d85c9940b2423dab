#!/usr/bin/env python3
"""Benchmark: the pure core (claim table, agent core, codec, reconcile) without I/O.

Run: ``.venv/bin/python bench/bench_core.py [--repeat 5] [--profile]``. No root, no
broker, no kernel: the dataplane is :class:`~meshroute.dataplane.fake.FakeDataplane`.
Every row is the median of ``--repeat`` runs (memory: of ``--memory-runs`` child
processes, so that one measurement never inherits another's heap).

a. Memory of one agent holding 100,000 claims from 100 peers (snapshots encoded,
   decoded and applied as the agent does), then with the core's route mirror of the
   same routes (``KernelMirror.installed``), then with what ``NetlinkDataplane`` keeps
   (the set of owned route keys: the same address objects, no prefix map);
   RSS of a child process that imported what the agent imports (pika,
   prometheus_client, click, the netlink dataplane: no pyroute2 unless interfaces are
   looked up), and tracemalloc.
b. Churn: hook datagrams parsed and fed to ``AgentCore.on_connect``/``on_disconnect``
   in batches of 100, each batch followed by the agent's per-iteration work (tick,
   encode the deltas, take_dirty, desired_hops_for, plan_some, fake apply). And the
   receive side: 10,000 peer deltas decoded, applied and reconciled the same way.
c. Join: a new core gets 50 snapshots x 200 claims (decoded), then desired_hops(),
   a full plan against an empty kernel and its routes as prefixes, then the fake apply.
d. Full resync, pure part: desired_hops() + KernelMirror.plan_full (the dump's prefixes
   read into the mirror, then the diff) for 20,000 routes, no change; its budget is
   DESIGN.md's 150 ms minus the ~60 ms kernel dump (bench_dataplane d).

Not a test: nothing here asserts on time. The targets are DESIGN.md's.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import ipaddress
import json
import logging
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

from meshroute.core import codec
from meshroute.core.engine import AgentCore, CoreSettings
from meshroute.core.model import ClaimRecord, Delta, Header, Snapshot
from meshroute.core.reconcile import KernelMirror
from meshroute.dataplane.fake import FakeDataplane
from meshroute.openvpn.events import parse_hook_datagram

CLIENTS = ipaddress.IPv4Network("10.64.0.0/10")  # room for 100k+ claims
SELF_HOP = ipaddress.IPv4Address("172.16.0.1")
WALL_MS = 1_700_000_000_000
EPOCH = WALL_MS
BATCH = 100  # events per agent loop iteration
# DESIGN.md: a no-change resync of 20,000 routes (dump + diff) within 150 ms. The
# netlink dump of 20,000 takes ~60 ms (bench_dataplane.py, row d), which leaves this.
RESYNC_BUDGET_MS = 90
ROAMERS = 1_000_000  # address index of the local churn clients (no overlap with peers)
FRESH = 2_000_000  # address index of the clients that peers' deltas add


# --- fixtures: peers, claims, messages ----------------------------------------------


def peer_name(index: int) -> str:
    return f"vpnsrv{index:03d}"


def peer_hop(index: int) -> ipaddress.IPv4Address:
    return SELF_HOP + 1 + index


def address(index: int) -> ipaddress.IPv4Address:
    return CLIENTS.network_address + 1 + index


def records(start: int, count: int) -> tuple[ClaimRecord, ...]:
    since = WALL_MS // 1000 - 3600
    return tuple(
        ClaimRecord(address(i), f"client{i:06d}", since, since * 1000 + i)
        for i in range(start, start + count)
    )


def snapshot_body(peer: int, start: int, count: int, seq: int = 1) -> bytes:
    header = Header(peer_name(peer), EPOCH + peer, seq)
    return codec.encode(Snapshot(header, peer_hop(peer), None, records(start, count)))


def snapshot_bodies(peers: int, per_peer: int) -> list[tuple[str, bytes]]:
    """(user_id, body) of one snapshot per peer, disjoint address ranges."""
    return [(peer_name(p), snapshot_body(p, p * per_peer, per_peer)) for p in range(peers)]


def new_core(hold_time: float = 3600.0) -> AgentCore:
    """A core past its start-up sync window, connected, local clients known."""
    settings = CoreSettings(
        name="self",
        hold_time=hold_time,  # long: fake time must not expire the background peers
        client_networks=(CLIENTS,),
        next_hop=SELF_HOP,
    )
    core = AgentCore(settings, epoch=EPOCH)
    core.start(0.0)
    core.on_bus_up(0.0)
    core.tick(settings.sync_timeout + 1)
    core.on_poll([], fetched_at=settings.sync_timeout + 1)
    core.take_outbox()
    return core


def feed(core: AgentCore, bodies: list[tuple[str, bytes]], now: float) -> None:
    for user_id, body in bodies:
        core.on_message(codec.decode(body, user_id=user_id), now)


@dataclass
class Loop:
    """The agent's per-iteration work after a batch of events (agent.Agent._iterate),
    with the bus replaced by ``codec.encode`` and the kernel by a FakeDataplane."""

    core: AgentCore
    sync: KernelMirror
    dataplane: FakeDataplane
    published: int = 0

    @classmethod
    def for_core(cls, core: AgentCore) -> Loop:
        dataplane = FakeDataplane()
        sync = KernelMirror()
        table = core.table
        table.take_dirty()
        plan = sync.plan_full(dataplane.dump(), table.desired_hops((SELF_HOP,)))
        sync.record(plan, dataplane.apply(plan.routes(), plan.deletes()).failed)
        dataplane.reset_counters()
        return cls(core, sync, dataplane)

    def iterate(self, now: float) -> None:
        core, table = self.core, self.core.table
        core.tick(now)
        for out in core.take_outbox():
            codec.encode(out.message)
            self.published += 1
        dirty = table.take_dirty()
        if not dirty:
            return
        desired = table.desired_hops_for(dirty, (SELF_HOP,))
        plan = self.sync.plan_some(dirty, desired)
        if plan:
            result = self.dataplane.apply(plan.routes(), plan.deletes())
            self.sync.record(plan, result.failed)


# --- measurement helpers --------------------------------------------------------------


def median_of(run: Callable[[], dict[str, float]], repeat: int) -> dict[str, float]:
    """Run ``repeat`` times; the median of each returned number."""
    samples = [run() for _ in range(repeat)]
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def clock(func: Callable[[], object]) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def vm_rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


# --- a. memory (in a child process) ---------------------------------------------------


def memory_child(peers: int, per_peer: int, trace: bool) -> dict[str, float]:
    """Runs in a fresh interpreter; numbers in MiB."""
    gc.collect()
    core_only = vm_rss_kib()  # python + the pure core (this script's imports)
    import click  # noqa: F401 - the agent process imports these; count them in
    import pika  # noqa: F401
    import prometheus_client  # noqa: F401

    import meshroute.agent.daemon
    import meshroute.dataplane.netlink  # noqa: F401 - no pyroute2 since 29 Nov (wire.py)

    gc.collect()
    if trace:
        tracemalloc.start()
    base = vm_rss_kib()
    core = new_core()
    for p in range(peers):  # one peer at a time, like the agent's queue delivers them
        body = snapshot_body(p, p * per_peer, per_peer)
        core.on_message(codec.decode(body, user_id=peer_name(p)), 1.0)
        del body
    core.table.take_dirty()
    gc.collect()
    table_rss = vm_rss_kib()
    traced_table = tracemalloc.get_traced_memory()[0] if trace else 0
    # The core's mirror, as after a successful first apply (keys: the claims' objects).
    sync = KernelMirror()
    plan = sync.plan_full({}, core.table.desired_hops((SELF_HOP,)))
    sync.record(plan, {})
    del plan
    gc.collect()
    mirror_rss = vm_rss_kib()
    traced_mirror = tracemalloc.get_traced_memory()[0] if trace else 0
    # What NetlinkDataplane keeps: the set of owned route keys, the same address
    # objects its dump handed to the core's mirror (no second, prefix-keyed map).
    owned_keys = set(sync.installed)
    gc.collect()
    routes_rss = vm_rss_kib()
    traced_routes = tracemalloc.get_traced_memory()[0] if trace else 0
    assert len(sync.installed) == len(owned_keys) == peers * per_peer
    mib = 1024.0
    return {
        "core_only_rss": core_only / mib,
        "base_rss": base / mib,
        "table_rss": table_rss / mib,
        "mirror_rss": mirror_rss / mib,
        "routes_rss": routes_rss / mib,
        "table_delta": (table_rss - base) / mib,
        "mirror_delta": (mirror_rss - table_rss) / mib,
        "dataplane_delta": (routes_rss - mirror_rss) / mib,
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / mib,
        "traced_table": traced_table / 2**20,
        "traced_mirror": (traced_mirror - traced_table) / 2**20,
        "traced_dataplane": (traced_routes - traced_mirror) / 2**20,
    }


# --- b. churn -------------------------------------------------------------------------


def hook_datagrams(events: int, pool: int, lag: int) -> list[bytes]:
    """client-connect of pool[k], then client-disconnect of pool[k - lag], repeated."""
    since = str(WALL_MS // 1000)

    def datagram(kind: str, index: int) -> bytes:
        op = "connect" if kind == "client-connect" else "disconnect"
        event = {
            "v": 1, "event": kind, "op": op, "address": str(address(ROAMERS + index)),
            "address6": None, "common_name": f"roamer{index:05d}", "time_unix": since,
            "trusted_ip": "198.51.100.7", "trusted_port": "1194", "ts_ms": WALL_MS,
        }  # fmt: skip
        return json.dumps(event, separators=(",", ":")).encode()

    out = []
    for k in range(events // 2):
        out.append(datagram("client-connect", k % pool))
        out.append(datagram("client-disconnect", (k - lag) % pool))
    return out


def bench_local_churn(events: int, background: list[tuple[str, bytes]]) -> dict[str, float]:
    core = new_core()
    feed(core, background, 1.0)
    loop = Loop.for_core(core)
    pool, lag = 5_000, 50
    datagrams = hook_datagrams(events, pool, lag)
    for k in range(pool - lag, pool):  # so that the first disconnects find a session
        core.on_connect(address(ROAMERS + k), f"roamer{k:05d}", None, now=1.0, wall_ms=WALL_MS)
    loop.iterate(1.0)
    started = time.perf_counter()
    now, wall = 2.0, WALL_MS
    for first in range(0, len(datagrams), BATCH):
        for data in datagrams[first : first + BATCH]:
            event = parse_hook_datagram(data, wall)
            addr = event.address
            if not core.table.allowed(addr):
                continue
            if event.op == "connect":
                core.on_connect(addr, event.common_name or "", event.connected_since,
                                now=now, wall_ms=wall)  # fmt: skip
            else:
                core.on_disconnect(addr, event.common_name, now=now)
            now, wall = now + 0.0002, wall + 1
        loop.iterate(now)
    elapsed = time.perf_counter() - started
    return {
        "events_per_s": len(datagrams) / elapsed,
        "us_per_event": elapsed / len(datagrams) * 1e6,
    }


def peer_deltas(count: int, peers: int, per_peer: int) -> list[tuple[str, bytes]]:
    """Deltas from synced peers: a third add a route, a third move an address from
    another peer (next hop changes), a third withdraw an address added before."""
    out: list[tuple[str, bytes]] = []
    seqs = [1] * peers
    added: list[list[int]] = [[] for _ in range(peers)]
    since = WALL_MS // 1000
    for i in range(count):
        p = i % peers
        seqs[p] += 1
        header = Header(peer_name(p), EPOCH + p, seqs[p])
        kind = (i // peers) % 3
        if kind == 2 and added[p]:
            index = added[p].pop()
            message = Delta(header, address(index), None)
        else:
            if kind == 1:  # an address of the next peer, with a newer stamp
                index = ((p + 1) % peers) * per_peer + (i // (3 * peers)) % per_peer
            else:
                index = FRESH + i
                added[p].append(index)
            record = ClaimRecord(address(index), f"client{index}", since, WALL_MS + i)
            message = Delta(header, record.address, record)
        out.append((peer_name(p), codec.encode(message)))
    return out


def bench_receive_churn(
    deltas: list[tuple[str, bytes]], background: list[tuple[str, bytes]]
) -> dict[str, float]:
    core = new_core()
    feed(core, background, 1.0)
    loop = Loop.for_core(core)
    now = 2.0
    started = time.perf_counter()
    for first in range(0, len(deltas), BATCH):
        for user_id, body in deltas[first : first + BATCH]:
            core.on_message(codec.decode(body, user_id=user_id), now)
        now += BATCH * 0.0002
        loop.iterate(now)
    elapsed = time.perf_counter() - started
    changes = loop.dataplane.changes
    return {
        "events_per_s": len(deltas) / elapsed,
        "us_per_event": elapsed / len(deltas) * 1e6,
        "route_changes": changes,
    }


# --- c. join and d. full resync -------------------------------------------------------


def bench_join(bodies: list[tuple[str, bytes]]) -> dict[str, float]:
    settings = CoreSettings(name="self", client_networks=(CLIENTS,), next_hop=SELF_HOP)
    core = AgentCore(settings, epoch=EPOCH)
    core.start(0.0)
    core.on_bus_up(0.0)
    sync, dataplane = KernelMirror(), FakeDataplane()
    found: dict = {}

    def learn() -> None:
        feed(core, bodies, 0.5)

    def plan() -> None:
        kernel = dataplane.dump()
        desired = core.table.desired_hops((SELF_HOP,))
        found["plan"] = plan = sync.plan_full(kernel, desired, allow_delete=False)
        found["routes"], found["deletes"] = plan.routes(), plan.deletes()

    def install() -> None:
        result = dataplane.apply(found["routes"], found["deletes"])
        sync.record(found["plan"], result.failed)

    t_learn, t_plan, t_install = clock(learn), clock(plan), clock(install)
    routes = len(dataplane.owned)
    assert routes == sum(1 for _ in core.table.addresses()), routes
    return {
        "learn_ms": t_learn * 1e3,
        "plan_ms": t_plan * 1e3,
        "pure_ms": (t_learn + t_plan) * 1e3,
        "fake_install_ms": t_install * 1e3,
        "routes": routes,
    }


def bench_resync(core: AgentCore, kernel: dict) -> dict[str, float]:
    """What the agent's full resync does after the dump (Agent._reconcile)."""
    own, sync = (SELF_HOP,), KernelMirror()
    found: dict = {}
    t_desired = clock(lambda: found.update(desired=core.table.desired_hops(own)))
    t_plan_full = clock(lambda: found.update(plan=sync.plan_full(kernel, found["desired"])))
    t_prefixes = clock(lambda: found.update(routes=core.table.desired_routes(own)))
    assert not found["plan"] and len(found["desired"]) == len(kernel) == len(found["routes"])
    return {
        "desired_ms": t_desired * 1e3,
        "plan_full_ms": t_plan_full * 1e3,
        "total_ms": (t_desired + t_plan_full) * 1e3,
        "desired_routes_ms": t_prefixes * 1e3,
    }


def resync_fixture(peers: int, per_peer: int) -> tuple[AgentCore, dict]:
    """A core with peers x per_peer routes; the kernel dump as fresh objects (cold)."""
    core = new_core()
    feed(core, snapshot_bodies(peers, per_peer), 1.0)
    desired = core.table.desired_hops((SELF_HOP,))
    kernel = {
        ipaddress.IPv4Network(f"{address}/32"): ipaddress.IPv4Address(str(hop))
        for address, hop in desired.items()
    }
    return core, kernel


# --- the run: every section in a fresh interpreter -----------------------------------
#
# A child process per section: one section's heap (and the cyclic GC's work over it)
# never slows the next, and each RSS sample starts from a clean interpreter.


Run = Callable[[], dict[str, float]]


def section_memory(args: argparse.Namespace) -> Run:
    return lambda: memory_child(100, 1_000, trace=False)


def section_memory_traced(args: argparse.Namespace) -> Run:
    return lambda: memory_child(100, 1_000, trace=True)


def section_local(args: argparse.Namespace) -> Run:
    background = snapshot_bodies(50, 200)
    return lambda: bench_local_churn(args.events, background)


def section_receive(args: argparse.Namespace) -> Run:
    background, deltas = snapshot_bodies(50, 200), peer_deltas(10_000, 50, 200)
    return lambda: bench_receive_churn(deltas, background)


def section_join(args: argparse.Namespace) -> Run:
    bodies = snapshot_bodies(50, 200)
    return lambda: bench_join(bodies)


def section_resync(args: argparse.Namespace) -> Run:
    core, kernel = resync_fixture(100, 200)
    return lambda: bench_resync(core, kernel)


# name -> set up (untimed), returning one timed run
SECTIONS: dict[str, Callable[[argparse.Namespace], Run]] = {
    "memory": section_memory,
    "memory-traced": section_memory_traced,
    "local": section_local,
    "receive": section_receive,
    "join": section_join,
    "resync": section_resync,
}


def in_child(section: str, args: argparse.Namespace) -> dict[str, float]:
    argv = [sys.executable, __file__, "--section", section, "--repeat", str(args.repeat),
            "--events", str(args.events)]  # fmt: skip
    if args.profile:
        argv += ["--profile", "--top", str(args.top)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    if args.profile:
        print(out.stdout, end="")
        return {}
    return json.loads(out.stdout)


@dataclass(frozen=True)
class Row:
    name: str
    value: str
    target: str = ""
    verdict: str = ""


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def memory_rows(args: argparse.Namespace) -> list[Row]:
    mem = median_of(lambda: in_child("memory", args), args.memory_runs)
    traced = in_child("memory-traced", args)  # tracemalloc slows and bloats a run: once
    total_mb = mem["routes_rss"] * 2**20 / 1e6
    return [
        Row("a. RSS, python + pure core imported", f"{mem['core_only_rss']:.1f} MiB"),
        Row("a. RSS, + pika, prometheus, click, dataplane", f"{mem['base_rss']:.1f} MiB"),
        Row("a. RSS delta, table 100k claims / 100 peers", f"{mem['table_delta']:.1f} MiB"),
        Row("a. RSS delta, + core mirror (KernelMirror)", f"{mem['mirror_delta']:.1f} MiB"),
        Row("a. RSS delta, + dataplane owned-key set", f"{mem['dataplane_delta']:.1f} MiB"),
        Row("a. tracemalloc, table / core mirror / owned set",
            f"{traced['traced_table']:.1f} / {traced['traced_mirror']:.1f} / "
            f"{traced['traced_dataplane']:.1f} MiB"),
        Row("a. process RSS, table + core mirror", f"{mem['mirror_rss']:.1f} MiB"),
        Row("a. process RSS, table + mirror + owned set", f"{mem['routes_rss']:.1f} MiB",
            "<= 80 MB",
            verdict(total_mb <= 80)),
        Row("a. process peak RSS (ru_maxrss)", f"{mem['max_rss']:.1f} MiB"),
    ]  # fmt: skip


def churn_rows(args: argparse.Namespace) -> list[Row]:
    local, remote = in_child("local", args), in_child("receive", args)
    return [
        Row(f"b. local churn, {args.events:,} hook events, batches of {BATCH}",
            f"{local['events_per_s']:,.0f} ev/s ({local['us_per_event']:.0f} us)",
            ">= 5,000 ev/s", verdict(local["events_per_s"] >= 5_000)),
        Row("b. receive churn, 10,000 peer deltas (decode incl.)",
            f"{remote['events_per_s']:,.0f} ev/s ({remote['us_per_event']:.0f} us)",
            ">= 5,000 ev/s", verdict(remote["events_per_s"] >= 5_000)),
    ]  # fmt: skip


def join_rows(args: argparse.Namespace) -> list[Row]:
    join = in_child("join", args)
    return [
        Row("c. join: decode + apply 50 x 200 snapshots", f"{join['learn_ms']:.1f} ms"),
        Row("c. join: desired_hops + full plan + prefixes", f"{join['plan_ms']:.1f} ms"),
        Row("c. join: pure part total (10,000 routes)", f"{join['pure_ms']:.1f} ms",
            "<= 2 s with install", verdict(join["pure_ms"] <= 2_000)),
        Row("c. join: FakeDataplane.apply (not the kernel)", f"{join['fake_install_ms']:.1f} ms"),
    ]  # fmt: skip


def resync_rows(args: argparse.Namespace) -> list[Row]:
    resync = in_child("resync", args)
    budget = f"<= {RESYNC_BUDGET_MS} ms (150 - dump)"
    return [
        Row("d. resync: desired_hops(), 20,000", f"{resync['desired_ms']:.1f} ms"),
        Row("d. resync: plan_full (dump -> mirror, diff)", f"{resync['plan_full_ms']:.1f} ms"),
        Row("d. resync: pure part total", f"{resync['total_ms']:.1f} ms",
            budget, verdict(resync["total_ms"] <= RESYNC_BUDGET_MS)),
        Row("d. (desired_routes(), prefix keys: tests, CLI)",
            f"{resync['desired_routes_ms']:.1f} ms"),
    ]  # fmt: skip


def print_rows(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        f"median of {args.repeat} runs (memory: {args.memory_runs} child processes); "
        f"nproc {os.cpu_count()}; python {sys.version.split()[0]}"
    )
    width = max(len(r.name) for r in rows)
    print(f"{'measurement':<{width}}  {'median':>26}  {'target':<20} verdict")
    for r in rows:
        print(f"{r.name:<{width}}  {r.value:>26}  {r.target:<20} {r.verdict}".rstrip())


def profile_section(name: str, args: argparse.Namespace) -> None:
    """cProfile one run of a section (its set-up excluded); top functions by own time."""
    run = SECTIONS[name](args)
    profiler = cProfile.Profile()
    profiler.runcall(run)
    print(f"\n=== {name}: top {args.top} by own time ===")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(args.top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per time measurement")
    parser.add_argument("--memory-runs", type=int, default=3, help="child processes for (a)")
    parser.add_argument("--events", type=int, default=20_000, help="hook events for (b)")
    parser.add_argument("--profile", action="store_true", help="cProfile each section instead")
    parser.add_argument("--top", type=int, default=15, help="functions shown per profile")
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The core logs a warning per refused claim and per freeze; none is expected here,
    # and printing them would measure the terminal.
    logging.basicConfig(level=logging.ERROR)
    if args.section and args.profile:
        profile_section(args.section, args)
    elif args.section:
        run = SECTIONS[args.section](args)
        repeat = 1 if args.section.startswith("memory") else args.repeat
        print(json.dumps(median_of(run, repeat)))
    elif args.profile:
        for name in ("memory", "local", "receive", "join", "resync"):
            in_child(name, args)
    else:
        rows = memory_rows(args) + churn_rows(args) + join_rows(args) + resync_rows(args)
        print_rows(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
