#!/usr/bin/env python3
"""Benchmark: the latency each backbone adds to client-to-client traffic across servers.

Run as root::

    .venv/bin/python bench/bench_backbone.py --count 300

For each backbone it brings up its own lab (``meshroute lab up --backbone FORM``,
prefix ``mrk<pid % 10000><n>``; real OpenVPN servers and clients, broker, agents;
see docs/lab.md and docs/backbone.md) and always takes it down again (``finally``,
also on Ctrl-C). It writes nothing in the repo and never touches the root namespace.

Forms: ``bridge``, ``openvpn`` (tap hub on s1) and ``openvpn-p2p`` (a full mesh of
point-to-point tunnels) with 3 servers and 6 clients,
``openvpn-tun`` (the article's tun1: s1 server, s2 client) with 2 servers and 4,
and ``openvpn-tun3``, the same form with 3 servers and 6 (expected: lost pings).
Clients are homed round robin (c1 s1, c2 s2, c3 s3, c4 s1, ...). Pairs, each
``ping -c COUNT -i 0.01`` from one client namespace to another client's VPN address:

- ``same``: c1 -> c4, both on s1: the OpenVPN data tunnel only (the baseline);
- ``hub``: c2 -> c1, s2 -> s1: one backbone crossing, to the hub (OpenVPN forms);
- ``spoke``: c2 -> c3, s2 -> s3: for the tap hub, through the hub's OpenVPN
  (two UDP legs and a userspace switch); for the bridge and the mesh, direct.

The RTT added by the backbone is ``pair - same`` (medians). The IPv6 pairs are run
too (``--family 6``). Output: one table row per form and pair (p50, p90, p99, loss).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MESHROUTE = [str(Path(sys.executable).parent / "meshroute")]
FORMS = {  # label: (backbone, servers, clients)
    "bridge": ("bridge", 3, 6),
    "openvpn": ("openvpn", 3, 6),
    "openvpn-p2p": ("openvpn-p2p", 3, 6),
    "openvpn-tun": ("openvpn-tun", 2, 4),
    "openvpn-tun3": ("openvpn-tun", 3, 6),  # the article's form with a third server
}
PAIRS = {"same": ("c1", "c4"), "hub": ("c2", "c1"), "spoke": ("c2", "c3")}


def lab(*args: str, prefix: str, check: bool = True) -> str:
    done = subprocess.run([*MESHROUTE, "lab", args[0], "--prefix", prefix, *args[1:]],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if check and done.returncode != 0:
        raise RuntimeError(f"lab {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def rtts(prefix: str, src: str, address: str, count: int) -> tuple[list[float], int]:
    """Per-packet RTTs (ms) of ``count`` pings from ``src``; and how many were lost."""
    argv = ["ip", "netns", "exec", f"{prefix}-{src}", "ping", "-n", "-c", str(count),
            "-i", "0.01", "-W", "1", address]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    times = [float(w[5:]) for w in out.split() if w.startswith("time=")]
    return times, count - len(times)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(form: str, prefix: str, count: int, families: list[int]) -> list[dict]:
    _, servers, clients = FORMS[form]
    from meshroute.lab.topology import make_plan

    plan = make_plan(prefix, servers, clients)
    rows = []
    for family in families:
        for pair, (src, dst) in PAIRS.items():
            if pair == "spoke" and servers < 3:
                continue
            target = plan.client(dst)
            address = str(target.address if family == 4 else target.address6)
            rtts(prefix, src, address, 20)  # warm up: neighbour caches, OpenVPN routes
            times, lost = rtts(prefix, src, address, count)
            rows.append({"form": form, "family": family, "pair": pair, "path": f"{src}->{dst}",
                         "p50": statistics.median(times) if times else None,
                         "p90": quantile(times, 0.9) if times else None,
                         "p99": quantile(times, 0.99) if times else None,
                         "lost": lost})  # fmt: skip
    return rows


def render(rows: list[dict]) -> str:
    base = {(r["form"], r["family"]): r["p50"] for r in rows if r["pair"] == "same"}
    lines = ["| backbone | family | pair | p50 ms | p90 ms | p99 ms | lost | added p50 ms |",
             "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        fmt = [f"{r[k]:.3f}" if r[k] is not None else "-" for k in ("p50", "p90", "p99")]
        same = base.get((r["form"], r["family"]))
        added = "" if r["pair"] == "same" or same is None or r["p50"] is None else (
            f"{r['p50'] - same:+.3f}")  # fmt: skip
        lines.append(f"| {r['form']} | v{r['family']} | {r['pair']} ({r['path']}) | "
                     f"{' | '.join(fmt)} | {r['lost']} | {added} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=300, help="pings per pair")
    parser.add_argument("--forms", default=",".join(FORMS),
                        help=f"comma-separated, of {', '.join(FORMS)}")  # fmt: skip
    parser.add_argument("--family", choices=["4", "6", "both"], default="both")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (the lab)")
    families = [4, 6] if args.family == "both" else [int(args.family)]
    rows: list[dict] = []
    for n, form in enumerate(args.forms.split(",")):
        prefix = f"mrk{os.getpid() % 10000}{n}"
        backbone, servers, clients = FORMS[form]
        try:
            lab("up", "--servers", str(servers), "--clients", str(clients),
                "--backbone", backbone, prefix=prefix)  # fmt: skip
            rows += measure(form, prefix, args.count, families)
        finally:
            lab("down", prefix=prefix, check=False)
        print(render([r for r in rows if r["form"] == form]), flush=True)
    print("\n" + render(rows))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
