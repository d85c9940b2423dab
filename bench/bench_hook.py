"""How long OpenVPN waits for ``meshroute hook`` (it runs every hook synchronously).

    .venv/bin/python bench/bench_hook.py [--runs 50]

Rows (median and p90 of --runs process runs each, wall time from spawn to exit):

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

REPO = Path(__file__).resolve().parents[1]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
MESHROUTE = REPO / ".venv" / "bin" / "meshroute"
HOOK_SCRIPT = REPO / "meshroute" / "openvpn" / "hook.py"


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="mrt-bench-hook-") as tmp:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
