"""How long OpenVPN waits for meshroute per event (it runs every hook synchronously).

    .venv/bin/python bench/bench_hook.py [--runs 50] [--calls 2000]

Plugin rows (``meshroute-plugin.so``, built here from this checkout with its
Makefile; ``bench/plugin_harness.c`` loads it as OpenVPN does and times each
``openvpn_plugin_func_v3`` call, the time OpenVPN's event loop is held, with an
OpenVPN-like environment of 72 variables): p50/p90/p99/max in microseconds of
--calls calls per event type, (1) against a HookReceiver (the agent's real
parser) 200 us apart, (2) with no agent (socket missing: the drop path), and (3)
back to back against a receiver, counting how many the kernel's queue took.

Script rows (median and p90 of --runs process runs each, wall time from spawn to exit):

- ``python3 -c pass``: the floor of any Python hook (the venv's base interpreter,
  called by its real path: a pyenv-style shim alone costs more than the hook).
- ``python3 -S -c pass``: the same without ``site`` (the absolute floor).
- ``.venv/bin/python -c pass``: the floor in the venv (its site/.pth work included).
- ``hook, no agent``: ``meshroute hook learn-address add 10.8.0.6 c1``, socket missing.
- ``hook, agent listening``: the same with a HookReceiver bound on the socket.
- ``spawn -> event``: from spawn to the receiver's callback (what convergence sees).
- the same for ``python3 -S meshroute/openvpn/hook.py ...`` (no site, no package).

Needs no root and touches nothing outside a temporary directory.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from meshroute.openvpn.hook_receiver import HookReceiver
from meshroute.openvpn.plugin import PLUGIN_FILE, SOURCE_DIR

REPO = Path(__file__).resolve().parents[1]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
MESHROUTE = REPO / ".venv" / "bin" / "meshroute"
HOOK_SCRIPT = REPO / "meshroute" / "openvpn" / "hook.py"
HARNESS = REPO / "bench" / "plugin_harness.c"


def base_python() -> str:
    """The interpreter the venv was made from, called directly (no shell shim)."""
    return str(Path(sys._base_executable).resolve())


def time_runs(argv: list[str], runs: int, after: Callable[[], None] | None = None) -> list[float]:
    subprocess.run(argv, capture_output=True, check=False)  # warm the page cache
    if after:
        after()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False)
        samples.append(time.perf_counter() - start)
        if after:
            after()
    return samples


def spawn_to_event(argv: list[str], events: queue.Queue[float], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(events.get(timeout=10) - start)
        proc.wait()
    return samples


def row(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"| {name} | {statistics.median(samples) * 1000:.1f} | {p90 * 1000:.1f} |"


def build_plugin_and_harness(tmp: Path) -> tuple[Path, Path]:
    """This checkout's plugin (its Makefile, O=tmp) and the timing harness."""
    subprocess.run(["make", "-s", "-C", str(SOURCE_DIR), f"O={tmp}"], check=True)
    harness = tmp / "plugin_harness"
    subprocess.run(["cc", "-O2", "-Wall", "-I/usr/include/openvpn", "-o", str(harness),
                    str(HARNESS), "-ldl"], check=True)  # fmt: skip
    return tmp / PLUGIN_FILE, harness


def run_harness(harness: Path, library: Path, sock: Path, calls: int, pace_us: int) -> list[str]:
    done = subprocess.run([str(harness), str(library), str(sock), str(calls), str(pace_us)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.splitlines()


def plugin_rows(tmp: Path, calls: int) -> None:
    library, harness = build_plugin_and_harness(tmp)
    sock = tmp / "plugin-hook.sock"
    print(f"| plugin call ({calls} per event) | p50 us | p90 us | p99 us | max us |")
    print("|---|---|---|---|---|")
    events: queue.Queue[object] = queue.Queue()
    with HookReceiver(sock, events.put) as receiver:
        for line in run_harness(harness, library, sock, calls, 200):
            name, _, *figures = line.split()
            print(f"| {name}, agent listening | {' | '.join(figures)} |")
        time.sleep(0.5)
        paced = receiver.stats
        print(f"(receiver: {paced.delivered} delivered, {paced.bad} bad, of {3 * calls} sent)")
    for line in run_harness(harness, library, tmp / "missing.sock", calls, 0):
        name, _, *figures = line.split()
        print(f"| {name}, no agent (socket missing) | {' | '.join(figures)} |")
    with HookReceiver(sock, events.put) as receiver:
        lines = run_harness(harness, library, sock, calls, 0)
        time.sleep(0.5)
        for line in lines:
            name, _, *figures = line.split()
            print(f"| {name}, back to back | {' | '.join(figures)} |")
        burst = receiver.stats
        print(f"(back to back: the receiver got {burst.delivered} of {3 * calls}; the rest "
              f"found its queue full, net.unix.max_dgram_qlen = {_qlen()})\n")  # fmt: skip


def _qlen() -> str:
    try:
        return Path("/proc/sys/net/unix/max_dgram_qlen").read_text().strip()
    except OSError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--calls", type=int, default=2000, help="plugin calls per event")
    args = parser.parse_args()
    runs = args.runs
    with tempfile.TemporaryDirectory(prefix="mrt-bench-hook-") as tmp:
        print(f"load before: {Path('/proc/loadavg').read_text().strip()}")
        plugin_rows(Path(tmp), args.calls)
        sock = Path(tmp) / "hook.sock"
        hook = [str(MESHROUTE), "hook", "--socket", str(sock), "learn-address", "add",
                "10.8.0.6", "c1"]  # fmt: skip
        print(f"| what ({runs} runs) | median ms | p90 ms |\n|---|---|---|")
        base = base_python()
        print(row("`python3 -c pass` (base interpreter)", time_runs([base, "-c", "pass"], runs)))
        print(row("`python3 -S -c pass` (no site)", time_runs([base, "-S", "-c", "pass"], runs)))
        print(row("`.venv/bin/python -c pass`", time_runs([str(VENV_PYTHON), "-c", "pass"], runs)))
        print(row("hook, no agent (socket missing)", time_runs(hook, runs)))
        direct = [base, "-S", str(HOOK_SCRIPT), *hook[2:]]
        print(row("hook as `python3 -S hook.py`, no agent", time_runs(direct, runs)))
        events: queue.Queue[float] = queue.Queue()
        with HookReceiver(sock, lambda event: events.put(time.perf_counter())):
            drain = lambda: [events.get(timeout=10)]  # noqa: E731 - one event per run
            print(row("hook, agent listening", time_runs(hook, runs, after=drain)))
            print(row("spawn -> receiver callback", spawn_to_event(hook, events, runs)))
            print(row("`python3 -S hook.py`, agent listening", time_runs(direct, runs, drain)))
            print(row("`-S hook.py` spawn -> callback", spawn_to_event(direct, events, runs)))
        print(f"load after: {Path('/proc/loadavg').read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
