"""Join: a real agent starts into a mesh holding N claims (issue 8, targets 6 and 3).

P light peers (``agent_bench.LightPeer``: real broker users on a private RabbitMQ
node, real protocol) hold C claims each and answer every sync request with a
snapshot, as agents do; they heartbeat every second with a matching digest. Per
round the real ``meshroute agent`` is spawned with an empty kernel table in its
namespace, and the clock runs from the spawn (``Popen``) to the N-th route
notification there (``ip -ts monitor``). Also recorded: the first route, how many
snapshots the peers sent (the target is one per peer), the agent's CPU time and,
once everything is installed, its RSS (target 3 at 100 x 1,000).

    .venv/bin/python bench/bench_join.py --peers 50 --claims 200 --rounds 5    # 10,000
    .venv/bin/python bench/bench_join.py --peers 50 --claims 1000 --rounds 3   # 50,000
    .venv/bin/python bench/bench_join.py --peers 100 --claims 1000 --rounds 1  # memory
    .venv/bin/python bench/bench_join.py --rounds 3 --agent-source ../main   # side by side

With ``--agent-source`` the rounds alternate between that checkout's agent and this
one's (other, this, other, this, ...) against the same peers; medians per source.

Root (namespaces). Nothing outside ``mrbj<pid>-a`` and loopback is touched.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent_bench import LIGHT_PYROUTE2, Bench, claims, cpu_seconds, ip, load, median, rss_mib
from bench_drain import summarize_profile

THIS_SOURCE = Path(__file__).resolve().parents[1]  # this checkout

SETTINGS = {
    "hold_time": "15",
    "announce_interval": "5",
    "status_poll_interval": "10",
    "sync_timeout": "3",
    "resync_interval": "30",
    "client_networks": "10.64.0.0/10",
    "log_level": "info",
}


def one_round(bench: Bench, n: int, settle: float, profile: Path | None = None) -> dict:
    agent, monitor = bench.agent, bench.monitor
    assert agent is not None and monitor is not None
    ip("-n", bench.netns, "route", "flush", "proto", "201")
    monitor.reset()
    for peer in bench.peers:
        peer.snapshots_sent = 0
    t0 = time.time()
    agent.start()
    assert agent.proc is not None
    spy = None
    if profile is not None:  # attaches a few ms after the spawn: the start-up is partly missed
        py_spy = str(Path(sys.executable).parent / "py-spy")
        spy = subprocess.Popen([py_spy, "record", "--pid", str(agent.proc.pid), "--rate", "250",
                                "--format", "raw", "--output", str(profile), "--threads"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        last, exact = monitor.wait_count(bench.netns, n, deleted=False, timeout=180)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; agent log:\n{bench.agent_log_tail()}") from None
    with monitor.cond:
        first = min(monitor.added)
    cpu = cpu_seconds(agent.proc.pid)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
    time.sleep(settle)  # the sync window ends, a resync runs: the RSS of a running agent
    result = {
        "claims": n,
        "join_s": round(last - t0, 3),
        "first_route_s": round(first - t0, 3),
        "agent_cpu_s": round(cpu, 3),
        "snapshots_per_peer": sum(p.snapshots_sent for p in bench.peers) / len(bench.peers),
        "agent_rss_mib": round(rss_mib(agent.proc.pid), 1),
        "load_1min": round(load(), 2),
        "monitor_lost": monitor.lost,  # > 0: join_s is a lower bound
        "exact": exact,
    }  # fmt: skip
    agent.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=50)
    parser.add_argument("--claims", type=int, default=200, help="claims per peer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds after the last route before the RSS is read")  # fmt: skip
    parser.add_argument("--agent-source", type=Path,
                        help="side by side: rounds alternate between the agent from this "
                             "checkout (label 'other') and this one ('this')")  # fmt: skip
    parser.add_argument("--light-pyroute2", action="store_true",
                        help="the agent behind agent_bench.LIGHT_PYROUTE2")  # fmt: skip
    parser.add_argument("--profile", type=Path, help="py-spy the agent in one more round")
    args = parser.parse_args()
    settings = {**SETTINGS, "max_claims_per_peer": str(max(65536, args.claims))}
    prelude = LIGHT_PYROUTE2 if args.light_pyroute2 else None
    bench = Bench(f"mrbj{os.getpid() % 10000}", settings, prelude)
    sources: list[tuple[str, Path]] = [("this", THIS_SOURCE)]
    if args.agent_source is not None:
        sources.insert(0, ("other", args.agent_source.resolve()))
        for _label, source in sources:  # byte code for both, as make_agent does for one
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(source / "meshroute")],
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        bench.start_node()
        bench.make_agent()
        base = int(ipaddress.ip_address("10.64.0.1"))
        held = [claims(str(ipaddress.ip_address(base + i * args.claims)), args.claims, f"p{i}c")
                for i in range(args.peers)]  # fmt: skip
        bench.add_peers(held)
        bench.beat(1.0)
        n = args.peers * args.claims
        results = []
        for _ in range(args.rounds):
            for label, source in sources:
                bench.use_agent_source(source)
                result = {"source": label, **one_round(bench, n, args.settle)}
                print(json.dumps(result), flush=True)
                results.append(result)
        if args.profile is not None:
            bench.use_agent_source(THIS_SOURCE)
            raw = args.profile.with_suffix(".raw")
            print(json.dumps(one_round(bench, n, args.settle, raw)))
            args.profile.write_text(summarize_profile(raw))
            print(f"profile: {args.profile}")
        for label, _source in sources:
            rows = [r for r in results if r["source"] == label]
            print(json.dumps({
                "source": label,
                "median_join_s": median([r["join_s"] for r in rows]),
                "join_s_all": [r["join_s"] for r in rows],
                "median_first_route_s": median([r["first_route_s"] for r in rows]),
                "median_agent_cpu_s": median([r["agent_cpu_s"] for r in rows]),
                "median_rss_mib": median([r["agent_rss_mib"] for r in rows]),
                "load_1min": [r["load_1min"] for r in rows],
            }))  # fmt: skip
    finally:
        bench.close()


if __name__ == "__main__":
    main()
