"""Prometheus exposition of a running agent (``metrics_listen``).

A custom collector reads the agent's counters at scrape time, so the agent's loop
does no metrics work at all; it owns its own registry (no process-global state).
Names follow the project's words: claims, peers, routes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from meshroute.agent import Agent


class AgentCollector:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self):
        agent, stats = self.agent, self.agent.stats
        table = agent.core.table
        yield _gauge("meshroute_broker_connected", "1 while connected to the broker",
                     int(bool(agent.bus.connected)))  # fmt: skip
        yield _gauge("meshroute_frozen", "1 while frozen (no peer expires)", int(table.frozen))
        yield _gauge("meshroute_local_claims", "claims of this agent's clients", len(table.local))
        yield _gauge("meshroute_peers", "peers currently known", len(table.peers))
        yield _gauge("meshroute_routes_installed", "owned routes in the kernel",
                     len(agent.sync.installed))  # fmt: skip
        peer_claims = GaugeMetricFamily("meshroute_peer_claims", "claims per peer", labels=["peer"])
        for name, peer in table.peers.items():
            peer_claims.add_metric([name], len(peer.claims))
        yield peer_claims
        counters = {
            "hook_events": ("hook events received", stats.hook_events),
            "polls_ok": ("status polls that worked", stats.polls_ok),
            "polls_failed": ("status polls that failed", stats.polls_failed),
            "bus_decode_errors": ("bus messages refused by validation", stats.decode_errors),
            "internal_errors": ("inputs dropped by an internal error", stats.internal_errors),
            "stale_messages": ("late, duplicate or old-epoch messages", table.counters.stale),
            "refused_claims": ("claims refused (allow-list, cap)", table.counters.refused_claims),
            "expired_peers": ("peers expired after the hold time", table.counters.expired_peers),
            "route_applies": ("route batches applied", stats.applies),
            "route_apply_failures": ("route batches with a failed route", stats.apply_failures),
            "full_resyncs": ("full kernel resyncs", stats.full_resyncs),
        }
        for name, (doc, value) in counters.items():
            family = CounterMetricFamily(f"meshroute_{name}", doc)
            family.add_metric([], value)
            yield family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def serve_metrics(agent: Agent, host: str, port: int) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    start_http_server(port, addr=host, registry=registry)
    return registry
