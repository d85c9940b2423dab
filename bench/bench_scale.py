"""Scale: N agents' traffic on one real RabbitMQ node, measured (issue 8, target 7).

N light peers speak the real protocol over the real AMQP bus (``AmqpBus``, one
connection, one queue and one binding each, as agents have): each publishes a real
heartbeat every ``--interval`` seconds to the fanout exchange, and each counts and
decodes what it receives. The bench records, over a steady window, the broker's
CPU (from /proc of its Erlang VM) and memory, deliveries per second, publishes per
second, and the delivery latency (``sent_ms`` in the body to arrival).

From these the model in docs/performance.md ("Scale") extrapolates N = 1,000.

    .venv/bin/python bench/bench_scale.py --agents 100 --interval 5 --seconds 30

Runs a private node (own name, ports, data dir) and stops it by pid at the end.
Everything stays on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from meshroute.bus.amqp import AmqpBus
from meshroute.bus.base import Envelope
from meshroute.core import codec
from meshroute.core.model import Header, Heartbeat
from meshroute.lab.rabbitmq import RabbitNode, free_port

EXCHANGE = "meshroute"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Counter:
    """A bus handler: counts, decodes and times what one light peer receives."""

    def __init__(self) -> None:
        self.received = 0
        self.latencies_ms: list[float] = []
        self.up = threading.Event()
        self._lock = threading.Lock()

    def on_message(self, envelope: Envelope) -> None:
        message = codec.decode(envelope.body, user_id=envelope.user_id)
        now_ms = time.time() * 1000
        with self._lock:
            self.received += 1
            sent = message.header.sent_ms
            if sent is not None and len(self.latencies_ms) < 200_000:
                self.latencies_ms.append(now_ms - sent)

    def on_connection(self, up: bool) -> None:
        if up:
            self.up.set()


def beam_pid(node: RabbitNode) -> int:
    """The Erlang VM of the node (the process that does the broker's work)."""
    out = node.ctl("eval", "list_to_integer(os:getpid()).")
    return int(out.strip())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(agents: int, interval: float, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mr-scale-") as tmp:
        node = RabbitNode(Path(tmp), node_name=f"mr-scale-{os.getpid()}", port=free_port())
        node.start(timeout=90)
        buses: list[tuple[AmqpBus, Counter]] = []
        try:
            names = [f"p{i:04d}" for i in range(agents)]
            urls = node.add_agents({n: f"pw-{n}" for n in names}, EXCHANGE)
            for name in names:
                handler = Counter()
                bus = AmqpBus([urls[name]], name, EXCHANGE)
                bus.start(handler)
                buses.append((bus, handler))
            for _, handler in buses:
                if not handler.up.wait(60):
                    raise RuntimeError("a light peer did not connect within 60 s")
            pid = beam_pid(node)
            stop = threading.Event()
            published = [0]

            def publisher() -> None:
                # Agents' heartbeats are not in step (each agent's timer starts at its
                # own start): spread the N publishes evenly over the interval.
                epoch = int(time.time() * 1000)
                start, step, k = time.monotonic(), interval / agents, 0
                while not stop.is_set():
                    name, (bus, _) = names[k % agents], buses[k % agents]
                    seq = k // agents + 1
                    wall = int(time.time() * 1000)
                    header = Header(name, epoch, seq, clock=wall, sent_ms=wall)
                    beat = Heartbeat(header, None, None, 0, 0, "0" * 16)
                    bus.publish(codec.encode(beat), msg_type="heartbeat",
                                message_id=f"{name}-{seq}")  # fmt: skip
                    published[0] += 1
                    k += 1
                    stop.wait(max(0.0, start + k * step - time.monotonic()))

            thread = threading.Thread(target=publisher, daemon=True)
            thread.start()
            time.sleep(min(10.0, 2 * interval))  # warm up: queues, consumers, caches
            for _, handler in buses:
                with handler._lock:
                    handler.received = 0
                    handler.latencies_ms.clear()
            published[0] = 0
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = cpu_seconds(pid), time.monotonic()
            stop.set()
            thread.join(5)
            elapsed = t1 - t0
            received = sum(h.received for _, h in buses)
            latencies = sorted(x for _, h in buses for x in h.latencies_ms)
            return {
                "agents": agents,
                "interval_s": interval,
                "publishes_per_s": published[0] / elapsed,
                "deliveries_per_s": received / elapsed,
                "expected_deliveries_per_s": agents * agents / interval,
                "broker_cpu_percent": 100 * (cpu1 - cpu0) / elapsed,
                "broker_cpu_us_per_delivery": 1e6 * (cpu1 - cpu0) / max(1, received),
                "broker_rss_mib": rss_mib(pid),
                "latency_p50_ms": statistics.median(latencies) if latencies else float("nan"),
                "latency_p99_ms": latencies[int(0.99 * (len(latencies) - 1))]
                if latencies
                else float("nan"),
                "load_1min": os.getloadavg()[0],
            }
        finally:
            for bus, _ in buses:
                bus.stop(2)
            node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--interval", type=float, default=5.0, help="heartbeat interval, s")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window, s")
    args = parser.parse_args()
    result = run(args.agents, args.interval, args.seconds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
