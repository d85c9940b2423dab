"""The agent loop alone: where a drained event's CPU goes, without pika's thread.

Splits the real agent's CPU per event (``bench_drain.py``) into parts, each run in
a fresh child interpreter on one thread, 20,000 deltas from one peer (each a new
claim, as the drain's add rounds), CPU time (``time.process_time``) per event:

- ``core``: ``codec.decode`` + ``AgentCore.on_message`` (as ``trial_core.py``);
- ``loop-fake``: the same envelopes put in ``Agent.inbox`` and drained by
  ``Agent._iterate`` (batches of up to 10,000, tick, publish, reconcile, acks to a
  stub bus) against ``FakeDataplane``;
- ``loop-netlink``: the same against ``NetlinkDataplane`` in a throwaway namespace
  ``mrbl<pid>`` (root; a veth pair puts the next hop on link).

What the real agent spends above ``loop-netlink`` is the bus: pika's I/O thread,
the hand-over, and the two threads sharing the interpreter lock.

    .venv/bin/python bench/bench_loop.py --runs 3        # root for loop-netlink
    .venv/bin/python bench/bench_loop.py --runs 5 --against ../main   # side by side
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import ipaddress, sys, time
from meshroute.core import codec
from meshroute.agent.loop import Agent, LoopSettings
from meshroute.bus.base import Envelope
from meshroute.core.clock import SystemClock
from meshroute.core.engine import AgentCore, CoreSettings
from meshroute.dataplane.fake import FakeDataplane
from meshroute.core.model import ClaimRecord, Delta, Header, Heartbeat

mode, netns, n = sys.argv[1], sys.argv[2], 20_000

class StubBus:
    connected = True
    def start(self, handler): pass
    def publish(self, body, *, msg_type, message_id, to=None): pass
    def acknowledge(self, receipt): pass
    def stop(self, timeout=5.0): pass

settings = CoreSettings(name="a", hold_time=600, announce_interval=5, sync_timeout=0.01,
                        client_networks=(ipaddress.ip_network("10.64.0.0/10"),),
                        next_hop=ipaddress.ip_address("10.200.200.1"),
                        backbone_networks=(ipaddress.ip_network("10.200.200.0/24"),))
clock = SystemClock()
core = AgentCore(settings, epoch=clock.wall_ms())
now = int(time.time())
hop = ipaddress.ip_address("10.200.200.10")
beat = codec.encode(Heartbeat(Header("p", now * 1000, 1), hop, None, 0, 0, "0" * 16))
base = int(ipaddress.ip_address("10.64.0.1"))
bodies = []
for i in range(n):
    address = ipaddress.ip_address(base + i)
    record = ClaimRecord(address, f"c{i}", now, now * 1000)
    bodies.append(codec.encode(Delta(Header("p", now * 1000, 2 + i), address, record)))

if mode == "core":
    core.start(clock.monotonic()); core.on_bus_up(clock.monotonic())
    core.on_message(codec.decode(beat, user_id="p"), clock.monotonic())
    t = time.process_time()
    for body in bodies:
        core.on_message(codec.decode(body, user_id="p"), clock.monotonic())
    took = time.process_time() - t
else:
    if mode == "loop-netlink":
        from meshroute.dataplane.netlink import NetlinkDataplane
        dataplane = NetlinkDataplane(254, 201, netns)
    else:
        dataplane = FakeDataplane()
    agent = Agent(core, bus=StubBus(), dataplane=dataplane, status_source=lambda: [],
                  clock=clock, settings=LoopSettings(resync_interval=3600, tick=0.001))
    core.start(clock.monotonic()); core.on_bus_up(clock.monotonic())
    agent.on_message(Envelope(beat, "p", "heartbeat", received_at=clock.monotonic()))
    agent._iterate(); time.sleep(0.05); agent._iterate()  # the first full resync, the window
    t = time.process_time()
    for body in bodies:
        agent.on_message(Envelope(body, "p", "delta", received_at=clock.monotonic()))
    while agent.inbox.qsize():
        agent._iterate()
    took = time.process_time() - t
    assert len(agent.mirror.installed) == n, len(agent.mirror.installed)
print(took * 1e6 / n)
"""


def child(mode: str, netns: str, source: Path | None = None) -> float:
    """One part in a fresh interpreter, with meshroute from ``source`` if given."""
    # ``python -c`` puts its working directory first on sys.path: run it in the checkout.
    cwd = source if source is not None else Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", CHILD, mode, netns], check=True,
                         capture_output=True, text=True, cwd=cwd).stdout  # fmt: skip
    return float(out.strip().splitlines()[-1])


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--against", type=Path,
                        help="side by side: each part also run with meshroute from this "
                             "checkout, alternating (keys prefixed 'other_')")  # fmt: skip
    args = parser.parse_args()
    netns = f"mrbl{os.getpid() % 10000}"
    modes = ["core", "loop-fake", "loop-netlink"]
    sources: list[tuple[str, Path | None]] = [("", None)]
    if args.against is not None:
        sources.insert(0, ("other_", args.against.resolve()))
    results: dict[str, list[float]] = {p + m: [] for p, _ in sources for m in modes}
    try:
        ip("netns", "add", netns)
        ip("-n", netns, "link", "set", "lo", "up")
        ip("-n", netns, "link", "add", "bb0", "type", "veth", "peer", "name", "bb1")
        ip("-n", netns, "addr", "add", "10.200.200.1/24", "dev", "bb0")
        ip("-n", netns, "link", "set", "bb0", "up")
        ip("-n", netns, "link", "set", "bb1", "up")
        for _ in range(args.runs):
            for mode in modes:
                for prefix, source in sources:
                    if mode == "loop-netlink":
                        subprocess.run(["ip", "-n", netns, "route", "flush", "proto", "201"],
                                       check=False, capture_output=True)  # fmt: skip
                    results[prefix + mode].append(child(mode, netns, source))
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
    sys.path.insert(0, str(Path(__file__).parent))
    print(json.dumps({
        **{f"{m}_us_per_event": round(statistics.median(v), 1) for m, v in results.items()},
        "runs": {m: [round(x, 1) for x in v] for m, v in results.items()},
        "load_1min": round(os.getloadavg()[0], 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
