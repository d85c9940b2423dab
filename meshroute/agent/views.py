"""What the CLI sees of a running agent: the table, the peers and the health (JSON-ready).

Built on the agent's own thread (see :meth:`meshroute.agent.loop.Agent.query`), so each
view is one consistent moment. The agent is read through a
:class:`~meshroute.agent.readout.Readout` only, never through its insides. Field
names are part of the CLI's ``--json`` contract (documented in docs/cli.md): add
fields, never rename or retype them; a change that breaks readers bumps ``SCHEMA``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from meshroute.agent.readout import Readout
from meshroute.core.model import ClaimRecord, RouteKey, address_key

if TYPE_CHECKING:
    from meshroute.agent.loop import Agent

SCHEMA = 1


def table_view(agent: Agent) -> dict[str, Any]:
    seen = Readout(agent)
    wall_now = seen.wall_now()
    rows = []
    for address in sorted(seen.addresses(), key=address_key):
        claim = seen.winner(address)
        if claim is None:
            continue
        record, local = claim.record, claim.owner == seen.name
        peer = seen.peers.get(claim.owner)
        hop = None if local or peer is None else peer.next_hop_for(address)
        installed = seen.installed.get(address)
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
                "claimants": sorted(seen.claims_for(address)),
                **_contest(address, claim.owner, seen.claims_for(address)),
            }
        )
    return {"schema": SCHEMA, "agent": seen.name, "epoch": seen.epoch, "claims": rows}


def _contest(address: RouteKey, winner: str, claims: Mapping[str, ClaimRecord]) -> dict[str, Any]:
    """Every claimant (the winner first, then by stamp) and why the winner won."""
    ordered = sorted(claims.items(), key=lambda kv: (kv[0] != winner, -kv[1].stamp, kv[0]))
    detail = [
        {
            "owner": owner,
            "common_name": r.common_name,
            "connected_since": r.connected_since,
            "stamp": r.stamp,
            "winner": owner == winner,
        }
        for owner, r in ordered
    ]
    return {"all_claims": detail, "why": _why(ordered)}


def _why(ordered: list[tuple[str, ClaimRecord]]) -> str:
    if len(ordered) == 1:
        return "the only claimant"
    (first, won), (second, lost) = ordered[0], ordered[1]
    if won.stamp > lost.stamp:
        return f"latest session: stamp {won.stamp} > {lost.stamp} of {second}"
    if won.stamp == lost.stamp and first > second:
        return f"same stamp as {second}; the higher owner name breaks the tie"
    return "chosen by the winner rule (docs/design.md)"


def peers_view(agent: Agent) -> dict[str, Any]:
    seen = Readout(agent)
    now = seen.monotonic()
    history = record_peers(agent)
    peers = []
    for name in sorted(seen.peers):
        peer = seen.peers[name]
        peers.append(
            {
                "name": name,
                "next_hop": None if peer.next_hop is None else str(peer.next_hop),
                "next_hop6": None if peer.next_hop6 is None else str(peer.next_hop6),
                "epoch": peer.epoch,
                "last_seen": round(now - peer.last_seen, 3),
                "last_seen_at": history.peers[name].last_seen_wall,
                "claims": len(peer.claims),
                "refused": len(peer.refused),
                "quarantined": peer.over_cap,
                "next_hop_problem": peer.hop_problem,
                "clock_offset_ms": peer.offset.offset_ms,
                "state": "up" if peer.synced else "syncing",
                "expires_in": None
                if seen.frozen
                else round(max(0.0, seen.hold_time - (now - peer.last_seen)), 3),
            }
        )
    wall = seen.wall_now()
    gone = [
        {
            "name": r.name,
            "next_hop": None,
            "next_hop6": None,
            "epoch": None,
            "last_seen": round(max(0.0, wall - r.last_seen_wall), 3),
            "last_seen_at": r.last_seen_wall,
            "claims": 0,
            "refused": 0,
            "quarantined": False,
            "next_hop_problem": None,
            "clock_offset_ms": None,
            "state": f"down ({r.gone})",
            "expires_in": None,
        }
        for r in history.rows()
        if not r.up
    ]
    return {"schema": SCHEMA, "agent": seen.name, "frozen": seen.frozen, "peers": peers + gone}


def record_peers(agent: Agent):
    """Update the agent's peer history from its table (on the agent thread)."""
    seen = Readout(agent)
    history = seen.stats.peer_history
    live = {name: (peer.last_seen, len(peer.claims)) for name, peer in seen.peers.items()}
    history.update(live, seen.departed, seen.wall_now(), seen.monotonic())
    return history


def silent_for(agent: Agent) -> float | None:
    """Seconds since any peer was last heard; None when no peer was ever known."""
    last = record_peers(agent).last_heard_wall()
    return None if last is None else max(0.0, Readout(agent).wall_now() - last)


def health_view(agent: Agent) -> dict[str, Any]:
    seen = Readout(agent)
    now, stats = seen.monotonic(), seen.stats

    def age(t: float | None) -> float | None:
        return None if t is None else round(now - t, 3)

    broker = seen.broker_connected
    polling = stats.last_poll_error is None and stats.polls_ok > 0
    silence = silent_for(agent)
    # Peers were known and none has been heard for the hold time: this agent is
    # cut off (or alone) although the broker connection looks fine.
    peers_silent = silence is not None and silence > seen.hold_time
    isolated = seen.isolated(now) if broker else None
    problems = [
        text
        for bad, text in (
            (not broker, "not connected to the broker"),
            (isolated is not None, f"isolated: {isolated}"),
            (not polling, "OpenVPN status poll not working"),
            (bool(stats.route_errors), "routes failed"),
            (peers_silent, "no peer heard for longer than the hold time"),
        )
        if bad
    ]
    return {
        "schema": SCHEMA,
        "agent": seen.name,
        "epoch": seen.epoch,
        "ok": not problems,
        "problems": problems,
        "warnings": _warnings(agent),
        "peers_silent_for": None if silence is None else round(silence, 3),
        "uptime": round(now - stats.started_at, 3),
        "broker_connected": broker,
        "frozen": seen.frozen,
        "synced": seen.synced,
        "local_clients_known": seen.local_known,
        "local_claims": seen.local_claims,
        "peers": len(seen.peers),
        "routes_installed": len(seen.installed),
        "last_poll_age": age(stats.last_poll_at),
        "last_poll_error": stats.last_poll_error,
        "last_apply_age": age(stats.last_apply_at),
        "last_apply": stats.last_apply_summary,
        "route_errors": stats.route_errors,
        "counters": {
            **seen.event_counters(),
            "refusals": dict(seen.counters.refusals),
            "ignored_local_addresses": stats.ignored_local,
            "applies": stats.applies,
            "apply_failures": stats.apply_failures,
            "full_resyncs": stats.full_resyncs,
        },
        "hooks": hook_counters(stats.hooks),
    }


def _warnings(agent: Agent) -> list[str]:
    """What an operator should look at although routing works: broken clocks, peers
    quarantined or with a refused next hop."""
    seen = Readout(agent)
    limit = seen.clock_offset_warning
    found = []
    for name in sorted(seen.peers):
        peer = seen.peers[name]
        offset = peer.offset.offset_ms
        if offset is not None and abs(offset) > limit * 1000:
            found.append(
                f"peer {name}'s clock is {offset / 1000:+.3f}s off ours "
                f"(clock_offset_warning {limit:g}s)"
            )
        if peer.over_cap:
            found.append(f"peer {name} quarantined: over max_claims_per_peer")
        if peer.hop_problem:
            found.append(f"peer {name}: {peer.hop_problem}")
    return found


def hook_counters(hooks: Any) -> dict[str, Any]:
    """The hook receiver's counters (zeros when no receiver runs, as in tests)."""
    if hooks is None:
        return {
            "received": 0,
            "delivered": 0,
            "ignored": 0,
            "bad": 0,
            "handler_errors": 0,
            "bad_by_reason": {},
        }
    return {
        "received": hooks.received,
        "delivered": hooks.delivered,
        "ignored": hooks.ignored,
        "bad": hooks.bad,
        "handler_errors": hooks.handler_errors,
        "bad_by_reason": dict(hooks.bad_by_reason),
    }
