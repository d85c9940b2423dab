"""What three proposed pure-core changes would gain per event (``agent_bench.TRIAL_CORE``).

The agent's per-delta work without the bus and the kernel: ``codec.decode`` +
``AgentCore.on_message`` of 20,000 deltas from one peer (each a new claim), in a
fresh child interpreter per run, as shipped and with the trial's monkeypatches,
interleaved (A B A B ...). Prints the median µs per event of each and the ratio.

    .venv/bin/python bench/trial_core.py --runs 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import ipaddress, json, sys, time
from meshroute.core import codec
from meshroute.core.engine import AgentCore, CoreSettings
from meshroute.core.model import ClaimRecord, Delta, Header, Heartbeat

n = 20_000
settings = CoreSettings(name="a", hold_time=60, announce_interval=5, sync_timeout=1,
                        client_networks=(ipaddress.ip_network("10.64.0.0/10"),),
                        next_hop=ipaddress.ip_address("10.200.200.1"),
                        backbone_networks=(ipaddress.ip_network("10.200.200.0/24"),))
core = AgentCore(settings, epoch=1)
core.start(0.0)
core.on_bus_up(0.0)
now = int(time.time())
hop = ipaddress.ip_address("10.200.200.10")
beat = Heartbeat(Header("p", now * 1000, 1), hop, None, 0, 0, "0" * 16)
core.on_message(codec.decode(codec.encode(beat), user_id="p"), 0.1)
base = int(ipaddress.ip_address("10.64.0.1"))
bodies = []
for i in range(n):
    address = ipaddress.ip_address(base + i)
    record = ClaimRecord(address, f"c{i}", now, now * 1000)
    bodies.append(codec.encode(Delta(Header("p", now * 1000, 2 + i), address, record)))
started = time.perf_counter()
for body in bodies:
    core.on_message(codec.decode(body, user_id="p"), 0.2)
took = time.perf_counter() - started
assert len(core.table.desired_hops()) == n
print(json.dumps(took * 1e6 / n))
"""


def run(prelude: str) -> float:
    out = subprocess.run([sys.executable, "-c", prelude + CHILD], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from agent_bench import TRIAL_CORE, load

    shipped, trial = [], []
    for _ in range(args.runs):
        shipped.append(run(""))
        trial.append(run(TRIAL_CORE))
    a, b = statistics.median(shipped), statistics.median(trial)
    print(json.dumps({"shipped_us_per_event": round(a, 1), "trial_us_per_event": round(b, 1),
                      "trial_over_shipped": round(b / a, 3), "load_1min": round(load(), 2),
                      "shipped": [round(x, 1) for x in shipped],
                      "trial": [round(x, 1) for x in trial]}))  # fmt: skip


if __name__ == "__main__":
    main()
