"""Prometheus exposition of a running agent (``metrics_listen``); see docs/metrics.md.

Invariants:

- The scrape thread never reads the agent's live structures (the claim table's
  dicts change under it: 5 of 3,000 scrapes failed that way). It asks the agent's
  own thread for a :class:`Snapshot` (through :meth:`Agent.call_soon`, the same path
  as CLI queries) and renders only that copy. When the agent does not answer within
  ``SNAPSHOT_TIMEOUT`` the last snapshot is served with ``meshroute_agent_responsive 0``.
- A peer that went away stays in ``meshroute_peer_up`` (0) with its last-seen time.
- Only ``/metrics`` is served; any other path is 404.
- Its own registry (no process-global state): the agent's collector, the process
  collector (CPU, memory, fds) and the platform collector (Python version).
"""

from __future__ import annotations

import ipaddress
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from meshroute import __version__
from meshroute.agent.readout import Readout
from meshroute.agent.views import hook_counters, record_peers
from meshroute.core.telemetry import HistogramSnapshot, PeerRecord

if TYPE_CHECKING:
    from meshroute.agent.loop import Agent

SNAPSHOT_TIMEOUT = 2.0
_ = PLATFORM_COLLECTOR  # the global one is not used: each registry gets its own


@dataclass
class Snapshot:
    """Everything one scrape shows, copied on the agent's thread."""

    gauges: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, HistogramSnapshot] = field(default_factory=dict)
    peers: list[PeerRecord] = field(default_factory=list)
    peer_claims: dict[str, int] = field(default_factory=dict)
    peer_offsets: dict[str, float] = field(default_factory=dict)  # peer -> seconds
    peer_refused: dict[tuple[str, str], int] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)
    hooks_bad: dict[str, int] = field(default_factory=dict)


GAUGES = {
    "broker_connected": "1 while connected to the broker",
    "frozen": "1 while frozen (broker unreachable: no peer expires, no route is removed)",
    "synced": "1 once the start-up sync with the peers is over",
    "local_claims": "claims of this agent's clients",
    "peers": "peers currently known (up or syncing)",
    "routes_installed": "owned routes in the kernel",
    "route_errors": "routes that failed in the last apply",
    "uptime_seconds": "seconds since the agent started",
}
COUNTERS = {
    "hook_events": "hook events handled by the agent",
    "hook_datagrams": "hook datagrams received on the hook socket",
    "hook_datagrams_ignored": "hook datagrams for nothing routed (iroute subnet, MAC)",
    "hook_handler_errors": "hook events the agent could not take",
    "polls_ok": "OpenVPN status polls that worked",
    "polls_failed": "OpenVPN status polls that failed",
    "bus_decode_errors": "bus messages refused by validation",
    "internal_errors": "inputs dropped by an internal error",
    "stale_messages": "late, duplicate or old-epoch bus messages",
    "refused_claims": "peer claims refused (outside client_networks, per-peer cap)",
    "expired_peers": "peers expired after the hold time",
    "route_applies": "route batches applied",
    "route_apply_failures": "route batches with a failed route",
    "full_resyncs": "full kernel resyncs",
}
HISTOGRAMS = {
    "apply_seconds": "time to apply one batch of route changes to the kernel",
    "poll_seconds": "time of one OpenVPN management status poll",
    "hook_to_route_seconds": "hook datagram received -> the route of its address changed here",
}


def take_snapshot(agent: Agent) -> Snapshot:
    """Copy what the metrics show (call on the agent's thread only)."""
    seen = Readout(agent)
    stats, now = seen.stats, seen.monotonic()
    snap = Snapshot()
    snap.gauges = {
        "broker_connected": int(seen.broker_connected),
        "frozen": int(seen.frozen),
        "synced": int(seen.synced),
        "local_claims": seen.local_claims,
        "peers": len(seen.peers),
        "routes_installed": len(seen.installed),
        "route_errors": len(stats.route_errors),
        "uptime_seconds": max(0.0, now - stats.started_at),
    }
    hooks = hook_counters(stats.hooks)
    snap.counters = {
        **seen.event_counters(),
        "hook_datagrams": hooks["received"],
        "hook_datagrams_ignored": hooks["ignored"],
        "hook_handler_errors": hooks["handler_errors"],
        "route_applies": stats.applies,
        "route_apply_failures": stats.apply_failures,
        "full_resyncs": stats.full_resyncs,
    }
    snap.hooks_bad = hooks["bad_by_reason"]
    snap.refusals = {
        "bus_invalid": stats.decode_errors,
        "local_outside_client_networks": stats.ignored_local,
        "hook_invalid": hooks["bad"],
        # the table's, by reason: outside_client_networks, per_peer_cap, stamp_ahead,
        # epoch_ahead, clock_ahead, next_hop (docs/design.md, "Trust")
        **seen.counters.refusals,
    }
    snap.histograms = {
        "apply_seconds": stats.apply_seconds.snapshot(),
        "poll_seconds": stats.poll_seconds.snapshot(),
        "hook_to_route_seconds": stats.hook_to_route_seconds.snapshot(),
    }
    snap.peers = record_peers(agent).rows()
    for name, peer in seen.peers.items():
        snap.peer_claims[name] = len(peer.claims)
        if peer.offset.offset_ms is not None:
            snap.peer_offsets[name] = peer.offset.offset_ms / 1000
        for address in peer.refused.records:
            problem = None
            if isinstance(address, ipaddress.IPv4Network | ipaddress.IPv6Network):
                problem = seen.subnet_problem(address)
            elif not seen.allowed(address):
                problem = "outside_client_networks"
            if problem is not None:
                reason = problem
            else:
                reason = "per_peer_cap" if peer.over_cap else "stamp_ahead"
            key = (name, reason)
            snap.peer_refused[key] = snap.peer_refused.get(key, 0) + 1
    return snap


class AgentCollector:
    def __init__(self, agent: Agent, timeout: float = SNAPSHOT_TIMEOUT) -> None:
        self.agent = agent
        self.timeout = timeout
        self._last: Snapshot | None = None
        self._lock = threading.Lock()

    def fetch(self) -> tuple[Snapshot, bool]:
        """A fresh snapshot from the agent's thread, or the last one and False."""
        reply: Future[Snapshot] = Future()

        def build() -> None:
            try:
                reply.set_result(take_snapshot(self.agent))
            except Exception as exc:  # reported to the scrape, never to the loop
                reply.set_exception(exc)

        self.agent.call_soon(build)
        try:
            snap = reply.result(timeout=self.timeout)
        except FutureTimeout:
            with self._lock:
                return (self._last or Snapshot()), False
        with self._lock:
            self._last = snap
        return snap, True

    def collect(self):
        snap, responsive = self.fetch()
        yield GaugeMetricFamily(
            "meshroute_agent_responsive",
            "1 if the agent loop answered this scrape (0: the values are the last ones)",
            value=int(responsive),
        )
        info = GaugeMetricFamily("meshroute_build_info", "meshroute version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        for name, doc in GAUGES.items():
            yield GaugeMetricFamily(f"meshroute_{name}", doc, value=snap.gauges.get(name, 0))
        for name, doc in COUNTERS.items():
            yield CounterMetricFamily(f"meshroute_{name}", doc, value=snap.counters.get(name, 0))
        yield from _labelled(snap)
        for name, doc in HISTOGRAMS.items():
            h = snap.histograms.get(name)
            if h is not None:
                yield HistogramMetricFamily(
                    f"meshroute_{name}", doc, buckets=h.cumulative(), sum_value=h.total
                )


def _labelled(snap: Snapshot):
    refusals = CounterMetricFamily(
        "meshroute_refusals", "inputs refused, by reason", labels=["reason"]
    )
    for reason, n in sorted(snap.refusals.items()):
        refusals.add_metric([reason], n)
    yield refusals
    bad = CounterMetricFamily(
        "meshroute_hook_datagrams_bad", "hook datagrams refused, by reason", labels=["reason"]
    )
    for reason, n in sorted(snap.hooks_bad.items()):
        bad.add_metric([reason], n)
    yield bad
    up = GaugeMetricFamily("meshroute_peer_up", "1 peer known now, 0 went away", labels=["peer"])
    seen = GaugeMetricFamily(
        "meshroute_peer_last_seen_timestamp_seconds",
        "when the peer was last heard (unix time, this agent's clock)",
        labels=["peer"],
    )
    claims = GaugeMetricFamily("meshroute_peer_claims", "claims per peer", labels=["peer"])
    for record in snap.peers:
        up.add_metric([record.name], int(record.up))
        seen.add_metric([record.name], record.last_seen_wall)
        claims.add_metric([record.name], snap.peer_claims.get(record.name, 0))
    yield from (up, seen, claims)
    refused = GaugeMetricFamily(
        "meshroute_peer_refused_claims",
        "claims of a peer currently refused, by reason",
        labels=["peer", "reason"],
    )
    for (peer, reason), n in sorted(snap.peer_refused.items()):
        refused.add_metric([peer, reason], n)
    yield refused
    offset = GaugeMetricFamily(
        "meshroute_peer_clock_offset_seconds",
        "the peer's clock minus ours, estimated from its messages (less the least delay)",
        labels=["peer"],
    )
    for peer, seconds in sorted(snap.peer_offsets.items()):
        offset.add_metric([peer], seconds)
    yield offset


def make_registry(agent: Agent) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def serve_metrics(agent: Agent, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``/metrics`` on host:port from a daemon thread; 404 elsewhere."""
    registry = make_registry(agent)
    server = ThreadingHTTPServer((host, port), _handler_for(registry))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def _handler_for(registry: CollectorRegistry) -> Any:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self._send(404, b"not found: meshroute serves /metrics only\n", "text/plain")
                return
            self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # scrapes are not log lines
            pass

    return Handler
