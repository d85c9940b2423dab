"""What the CLI sees of a running agent: the table, the peers and the health (JSON-ready).

Built on the agent's own thread (see :meth:`meshroute.agent.Agent.query`), so each
view is one consistent moment. Field names are part of the CLI's ``--json``
contract: add fields, never rename them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshroute.model import address_key

if TYPE_CHECKING:
    from meshroute.agent import Agent


def table_view(agent: Agent) -> dict[str, Any]:
    core, table = agent.core, agent.core.table
    wall_now = agent.clock.wall_ms() / 1000
    rows = []
    for address in sorted(table.addresses(), key=address_key):
        claim = table.winner(address)
        if claim is None:
            continue
        record, local = claim.record, claim.owner == core.name
        peer = table.peers.get(claim.owner)
        hop = None if local or peer is None else peer.next_hop_for(address)
        installed = agent.sync.installed.get(address)
        rows.append(
            {
                "address": str(address),
                "common_name": record.common_name,
                "owner": claim.owner,
                "next_hop": None if hop is None else str(hop),
                "connected_since": record.connected_since,
                "connected_for": max(0, int(wall_now - record.connected_since)),
                "stamp": record.stamp,
                "local": local,
                "installed": installed is not None and installed == hop,
                "claimants": sorted(table.claims_for(address)),
            }
        )
    return {"agent": core.name, "epoch": core.epoch, "claims": rows}


def peers_view(agent: Agent) -> dict[str, Any]:
    now = agent.clock.monotonic()
    table = agent.core.table
    peers = []
    for name in sorted(table.peers):
        peer = table.peers[name]
        peers.append(
            {
                "name": name,
                "next_hop": None if peer.next_hop is None else str(peer.next_hop),
                "next_hop6": None if peer.next_hop6 is None else str(peer.next_hop6),
                "epoch": peer.epoch,
                "last_seen": round(now - peer.last_seen, 3),
                "claims": len(peer.claims),
                "refused": len(peer.refused),
                "state": "up" if peer.synced else "syncing",
                "expires_in": None
                if table.frozen
                else round(max(0.0, table.hold_time - (now - peer.last_seen)), 3),
            }
        )
    return {"agent": agent.core.name, "frozen": table.frozen, "peers": peers}


def health_view(agent: Agent) -> dict[str, Any]:
    now = agent.clock.monotonic()
    core, stats, table = agent.core, agent.stats, agent.core.table

    def age(t: float | None) -> float | None:
        return None if t is None else round(now - t, 3)

    broker = bool(agent.bus.connected)
    polling = stats.last_poll_error is None and stats.polls_ok > 0
    return {
        "agent": core.name,
        "epoch": core.epoch,
        "ok": broker and polling and not stats.route_errors,
        "uptime": round(now - stats.started_at, 3),
        "broker_connected": broker,
        "frozen": table.frozen,
        "synced": core.synced,
        "local_clients_known": core.local_known,
        "local_claims": len(table.local),
        "peers": len(table.peers),
        "routes_installed": len(agent.sync.installed) + len(agent.sync.strays),
        "last_poll_age": age(stats.last_poll_at),
        "last_poll_error": stats.last_poll_error,
        "last_apply_age": age(stats.last_apply_at),
        "last_apply": stats.last_apply_summary,
        "route_errors": stats.route_errors,
        "counters": {
            "hook_events": stats.hook_events,
            "polls_ok": stats.polls_ok,
            "polls_failed": stats.polls_failed,
            "bus_decode_errors": stats.decode_errors,
            "internal_errors": stats.internal_errors,
            "stale_messages": table.counters.stale,
            "refused_claims": table.counters.refused_claims,
            "expired_peers": table.counters.expired_peers,
            "ignored_local_addresses": stats.ignored_local,
            "applies": stats.applies,
            "apply_failures": stats.apply_failures,
            "full_resyncs": stats.full_resyncs,
        },
    }
