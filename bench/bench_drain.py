"""Drain: events per second from the bus into the kernel, one real agent (issue 8, target 5).

A real ``meshroute agent`` (see ``agent_bench.py``) and one light peer on a private
RabbitMQ node. Per round the agent is paused (SIGSTOP), the peer publishes N deltas
(each a claim: one route to add; or each a withdrawal: one route to delete) and the
broker holds them; then the agent is resumed (SIGCONT) and the clock runs until the
N-th route notification in the agent's namespace (``ip -ts monitor``). So the figure
is the agent's whole path for a backlog: AMQP frames, decode, the core, the
reconcile, netlink, acks. The agent's CPU time over the round gives µs per event.
In the same run, as the yardstick: ``ip -batch`` adding and deleting the same N
routes in that namespace (another protocol and table), i.e. the kernel's share.

    .venv/bin/python bench/bench_drain.py --events 20000 --rounds 5        # root
    .venv/bin/python bench/bench_drain.py --profile /tmp/drain.txt        # py-spy
    .venv/bin/python bench/bench_drain.py --rounds 2 --agent-source ../main   # side by side

With ``--agent-source`` the rounds alternate between that checkout's agent and this
one's (other, this, other, this, ...), each on a fresh node, agent and namespace,
and the medians are printed per source.

Nothing outside the namespace ``mrbd<pid>-a`` and loopback is touched.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from agent_bench import TRIAL_CORE, Bench, LightPeer, claims, cpu_seconds, load, median, rss_mib

DEFAULT_SOURCE = Path(__file__).resolve().parents[1]  # this checkout

SETTINGS = {
    "hold_time": "60",  # the paused agent must not expire its peer meanwhile
    "announce_interval": "5",
    "status_poll_interval": "10",
    "sync_timeout": "1",
    "resync_interval": "30",
    "client_networks": "10.64.0.0/10",
    "max_claims_per_peer": "1000000",
    "log_level": "info",
}


def wait_published(peer: LightPeer, timeout: float = 120) -> None:
    """Until the broker has confirmed every message the peer published."""
    deadline = time.monotonic() + timeout
    bus = peer.bus
    while time.monotonic() < deadline:
        with bus._lock:
            pending = len(bus._outbox) + len(bus._unconfirmed)
        if not pending:
            return
        time.sleep(0.02)
    raise RuntimeError("the peer's messages were not confirmed in time")


def one_round(bench: Bench, peer: LightPeer, base: str, n: int, withdraw: bool,
              profile: Path | None = None) -> dict[str, float]:  # fmt: skip
    agent = bench.agent
    monitor = bench.monitor
    assert agent is not None and agent.proc is not None and monitor is not None
    pid = agent.proc.pid
    records = claims(base, n)
    snapshots = peer.snapshots_sent
    os.kill(pid, signal.SIGSTOP)
    try:
        monitor.reset()
        for record in records:
            peer.delta(record.address, None if withdraw else record)
        wait_published(peer)
        time.sleep(0.2)
    finally:
        cpu0, t0 = cpu_seconds(pid), time.time()
        os.kill(pid, signal.SIGCONT)
    spy = None
    if profile is not None:
        py_spy = str(Path(sys.executable).parent / "py-spy")
        spy = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "250",
                                "--format", "raw", "--output", str(profile), "--threads"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    stamps = monitor.deleted if withdraw else monitor.added
    try:
        last, exact = monitor.wait_count(bench.netns, n, deleted=withdraw, timeout=180)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; agent log:\n{bench.agent_log_tail()}") from None
    cpu1 = cpu_seconds(pid)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
    with monitor.cond:
        first = min(stamps)
    took = last - t0
    return {
        "kind": "withdraw" if withdraw else "add",
        "events": n,
        "seconds": round(took, 4),
        "events_per_s": round(n / took),
        "first_route_ms": round((first - t0) * 1e3, 1),
        "agent_cpu_us_per_event": round((cpu1 - cpu0) * 1e6 / n, 1),
        "agent_rss_mib": round(rss_mib(pid), 1),
        "load_1min": round(load(), 2),
        "monitor_lost": monitor.lost,  # > 0: events_per_s is an upper bound
        "exact": exact,
        # > 0: the agent asked for the peer's state during the round (and paid for it)
        "peer_snapshots": peer.snapshots_sent - snapshots,
    }


def ip_batch(netns: str, base: str, n: int) -> dict[str, float]:
    """The yardstick: ``ip -batch`` adding, then deleting, the same N host routes."""
    start = int(ipaddress.ip_address(base))
    adds = "".join(f"route add {ipaddress.ip_address(start + i)}/32 via 10.200.200.10 "
                   "proto 202 table 100\n" for i in range(n))  # fmt: skip
    dels = adds.replace("route add", "route del")
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for what, text in (("add", adds), ("withdraw", dels)):
            path = Path(tmp) / what
            path.write_text(text)
            started = time.perf_counter()
            subprocess.run(["ip", "-n", netns, "-batch", str(path)], check=True)
            times[what] = time.perf_counter() - started
    return {f"ip_batch_{k}_events_per_s": round(n / v) for k, v in times.items()}


_LINE = re.compile(r":\d+\)$")
IDLE = (
    "Condition.wait",
    "PollPoller.poll",
    "_PollLikeSelector.select",
    "HookReceiver._run",
    "Event.wait",
    "SimpleQueue.get",
)


def summarize_profile(path: Path, top: int = 30) -> str:
    """py-spy's raw (collapsed) stacks -> the busy threads and each one's top functions.

    A sample whose innermost frame is a wait (``IDLE``) counts as idle; shares are of
    the busy samples of all threads, and per thread of that thread's busy samples."""
    threads: dict[str, tuple[Counter[str], Counter[str]]] = {}
    busy: Counter[str] = Counter()
    idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        count = int(count_text)
        if frames[-1].startswith(IDLE):
            idle += count
            continue
        name = frames[0].split(": ", 1)[-1]
        frames = [_LINE.sub(")", f) for f in frames]  # one entry per function
        inclusive, own = threads.setdefault(name, (Counter(), Counter()))
        busy[name] += count
        for frame in set(frames[1:]):
            inclusive[frame] += count
        own[frames[-1]] += count
    total = sum(busy.values())
    out = [f"busy samples: {total} (idle {idle})", "busy samples by thread:"]
    out += [f"  {c / total:6.1%}  {t}" for t, c in busy.most_common(6)]
    for name, _ in busy.most_common(2):
        inclusive, own = threads[name]
        n = busy[name]
        out.append(f"{name}: inclusive")
        out += [f"  {c / n:6.1%}  {f}" for f, c in inclusive.most_common(top)]
        out.append(f"{name}: own time")
        out += [f"  {c / n:6.1%}  {f}" for f, c in own.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", type=Path, help="py-spy the agent in one more add round")
    parser.add_argument("--agent-source", type=Path,
                        help="side by side: rounds alternate between the agent from this "
                             "checkout (label 'other') and this one ('this')")  # fmt: skip
    parser.add_argument("--trial-core", action="store_true",
                        help="the agent behind agent_bench.TRIAL_CORE")  # fmt: skip
    parser.add_argument("--prefetch", type=int,
                        help="the agent's AMQP prefetch (default: AmqpBus's own)")  # fmt: skip
    args = parser.parse_args()
    prelude = TRIAL_CORE if args.trial_core else None
    if args.prefetch is not None:
        prelude = (prelude or "") + (
            "\nimport meshroute.bus.amqp as _amqp\n"
            f"_amqp.AmqpBus.__init__.__kwdefaults__['prefetch'] = {args.prefetch}\n"
        )
    sources: list[tuple[str, Path | None]] = [("this", None)]
    if args.agent_source is not None:
        sources.insert(0, ("other", args.agent_source.resolve()))
    results: list[dict] = []
    for r in range(args.rounds):
        for label, source in sources:
            profile = args.profile if r == args.rounds - 1 and label == "this" else None
            base = str(ipaddress.ip_address("10.65.0.1") + r * args.events)
            results += run(args.events, base, prelude, source, label, profile, r)
    for label, _source in sources:
        for kind in ("add", "withdraw"):
            rows = [x for x in results if x["kind"] == kind and x["source"] == label]
            print(json.dumps({
                "median": kind,
                "source": label,
                "events_per_s": median([x["events_per_s"] for x in rows]),
                "events_per_s_all": [x["events_per_s"] for x in rows],
                "ip_batch_events_per_s": median([x[f"ip_batch_{kind}_events_per_s"] for x in rows]),
                "agent_cpu_us_per_event": median([x["agent_cpu_us_per_event"] for x in rows]),
                "agent_cpu_us_all": [x["agent_cpu_us_per_event"] for x in rows],
                "load_1min": [x["load_1min"] for x in rows],
            }))  # fmt: skip


def run(n: int, base: str, prelude: str | None, source: Path | None, label: str,
        profile: Path | None, index: int) -> list[dict]:  # fmt: skip
    """One agent (from ``source``, default this checkout) on a node of its own: a warm-up,
    then one add and one withdraw round of ``n`` (and a profiled add round if asked)."""
    bench = Bench(f"mrbd{os.getpid() % 10000}{label[0]}{index}", SETTINGS, prelude)
    results = []
    try:
        bench.use_agent_source(source if source is not None else DEFAULT_SOURCE)
        bench.start_node()
        agent = bench.make_agent()
        (peer,) = bench.add_peers([()])
        agent.start()
        agent.wait_ready(60)
        bench.beat(1.0)
        one_round(bench, peer, "10.64.0.1", 1000, withdraw=False)  # warm-up
        one_round(bench, peer, "10.64.0.1", 1000, withdraw=True)
        for withdraw in (False, True):
            result = {"source": label, **one_round(bench, peer, base, n, withdraw)}
            result.update(ip_batch(bench.netns, base, n))
            print(json.dumps(result), flush=True)
            results.append(result)
        if profile is not None:
            raw = profile.with_suffix(".raw")
            print(json.dumps(one_round(bench, peer, "10.66.0.1", n, False, raw)))
            profile.write_text(summarize_profile(raw))
            print(f"profile: {profile}")
    finally:
        bench.close()
    return results


if __name__ == "__main__":
    main()
