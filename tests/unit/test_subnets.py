"""Subnets behind clients (iroute): codec, trust bounds, winner rule, routes (issue 10)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from meshroute.core import subnets
from meshroute.core.codec import CodecError, decode, encode
from meshroute.core.model import ClaimRecord, Delta, Header, Heartbeat, Snapshot, parse_destination
from meshroute.core.reconcile import KernelMirror
from meshroute.core.table import ClaimTable
from meshroute.openvpn.events import parse_hook_datagram
from meshroute.openvpn.status import parse_status, routed_subnets

net = ipaddress.ip_network
ip = ipaddress.ip_address

HOST = ip("10.100.0.5")
SITE = net("192.168.50.0/24")
SITE6 = net("fd50:1::/64")
WIDER = net("192.168.0.0/16")
HOP_X, HOP_Y, HOP_X6 = ip("10.200.0.2"), ip("10.200.0.3"), ip("fd20::2")
CLIENTS = (net("10.100.0.0/16"), net("fd10::/64"))
BACKBONE = (net("10.200.0.0/24"), net("fd20::/64"))
ROUTED = (net("192.168.0.0/16"), net("fd50::/16"))


def rec(address=SITE, cn="site1", since=100, stamp=100_000) -> ClaimRecord:
    return ClaimRecord(address, cn, since, stamp)


def snap(origin, seq, *claims, hop=HOP_X, hop6=HOP_X6, epoch=1) -> Snapshot:
    return Snapshot(Header(origin, epoch, seq), hop, hop6, tuple(claims))


def table(routed=ROUTED, backbone=BACKBONE) -> ClaimTable:
    return ClaimTable(
        "me", hold_time=10.0, client_networks=CLIENTS, backbone_networks=backbone,
        routed_networks=routed,
    )  # fmt: skip


# --- codec ----------------------------------------------------------------------------


def roundtrip(message):
    return decode(encode(message), user_id=message.header.origin)


def test_snapshot_with_subnets_roundtrips_and_keeps_them_apart_on_the_wire():
    message = Snapshot(
        Header("x", 1, 2), HOP_X, HOP_X6,
        (rec(HOST, "c1"), rec(SITE), rec(SITE6)), echo=(rec(net("192.168.60.0/25")),),
    )  # fmt: skip
    body = json.loads(encode(message))
    assert [c["address"] for c in body["claims"]] == ["10.100.0.5"]
    assert [c["address"] for c in body["subnets"]] == ["192.168.50.0/24", "fd50:1::/64"]
    assert [c["address"] for c in body["subnet_echo"]] == ["192.168.60.0/25"]
    assert body["echo"] == []
    assert roundtrip(message) == message


def test_without_subnets_the_wire_is_what_it_was():
    message = Snapshot(Header("x", 1, 2), HOP_X, None, (rec(HOST, "c1"),))
    beat = Heartbeat(Header("x", 1, 3), HOP_X, None, 2, 1, "00000000000000ab")
    assert "subnet" not in encode(message).decode() + encode(beat).decode()


def test_delta_and_heartbeat_with_subnets_roundtrip():
    delta = Delta(Header("x", 1, 5), SITE, rec(SITE))
    gone = Delta(Header("x", 1, 6), SITE6, None)
    beat = Heartbeat(
        Header("x", 1, 7), HOP_X, None, 6, 1, "00000000000000ab", 2, "0123456789abcdef"
    )
    for message in (delta, gone, beat):
        assert roundtrip(message) == message
    assert json.loads(encode(delta))["address"] == "192.168.50.0/24"


def body(**fields) -> bytes:
    obj = {"v": 1, "type": "snapshot", "origin": "x", "epoch": 1, "seq": 1,
           "next_hop": "10.200.0.2", "next_hop6": None, "claims": [], "echo": []}  # fmt: skip
    obj.update(fields)
    return json.dumps(obj).encode()


def claim_obj(address: str) -> dict:
    return {"address": address, "cn": "site1", "since": 1, "stamp": 2}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"claims": [claim_obj("192.168.50.0/24")]}, "not a bare host address"),
        ({"subnets": [claim_obj("192.168.50.0")]}, "not a subnet ADDR/LEN"),
        ({"subnets": [claim_obj("192.168.50.1/24")]}, "not a subnet ADDR/LEN"),
        ({"subnets": [claim_obj("192.168.50.1/32")]}, "is a host, not a subnet"),
        ({"subnets": [claim_obj("fe80::/64%eth0")]}, "not a subnet ADDR/LEN"),
        ({"subnets": [claim_obj(" 10.0.0.0/8")]}, "not a subnet ADDR/LEN"),
        ({"subnets": [claim_obj("10.1.0.0/16"), claim_obj("10.1.0.0/16")]}, "duplicate"),
        ({"subnets": "10.1.0.0/16"}, "expected list"),
    ],
)
def test_decode_refuses_bad_subnets_naming_the_field(fields, message):
    with pytest.raises(CodecError, match=message):
        decode(body(**fields), user_id="x")


def test_decode_refuses_a_bad_subnet_digest():
    beat = {"v": 1, "type": "heartbeat", "origin": "x", "epoch": 1, "seq": 1, "next_hop": None,
            "next_hop6": None, "state_seq": 1, "count": 0, "digest": "0" * 16,
            "subnet_count": 1, "subnet_digest": "XYZ"}  # fmt: skip
    with pytest.raises(CodecError, match="subnet_digest"):
        decode(json.dumps(beat).encode(), user_id="x")


def test_an_agent_before_subnets_reads_none_as_a_host(monkeypatch):
    """The older decoder: no ``subnets`` field known; ``address`` a bare host only."""
    from meshroute.core import codec

    snapshot = Snapshot(Header("x", 1, 2), HOP_X, None, (rec(HOST, "c1"), rec(SITE)))
    monkeypatch.setattr(codec, "_destination", codec._address)  # the v1 delta rule
    old_view = json.loads(encode(snapshot))
    del old_view["subnets"]  # what an older decoder sees: nothing but the host claim
    assert decode(json.dumps(old_view).encode(), user_id="x").claims == (rec(HOST, "c1"),)
    with pytest.raises(CodecError, match="not a bare host address"):
        decode(encode(Delta(Header("x", 1, 3), SITE, rec(SITE))), user_id="x")


# --- trust bounds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subnet", "routed", "reason"),
    [
        (SITE, (), subnets.OUTSIDE_ROUTED),
        (net("172.16.0.0/24"), ROUTED, subnets.OUTSIDE_ROUTED),
        (net("192.0.0.0/8"), ROUTED, subnets.OUTSIDE_ROUTED),  # covers routed, not inside
        (net("0.0.0.0/0"), (net("0.0.0.0/0"),), subnets.DEFAULT_ROUTE),
        (net("::/0"), (net("::/0"),), subnets.DEFAULT_ROUTE),
        (net("10.0.0.0/7"), (net("10.0.0.0/7"),), subnets.PREFIX_LENGTH),
        (net("fd00::/15"), (net("fd00::/8"),), subnets.PREFIX_LENGTH),
        (net("10.200.0.0/23"), (net("10.0.0.0/8"),), subnets.OVERLAPS_BACKBONE),
        (net("10.200.0.128/25"), (net("10.0.0.0/8"),), subnets.OVERLAPS_BACKBONE),
        (net("10.100.0.0/24"), (net("10.0.0.0/8"),), subnets.OVERLAPS_CLIENTS),
        (net("10.0.0.0/8"), (net("10.0.0.0/8"),), subnets.OVERLAPS_BACKBONE),
        (net("172.16.0.0/24"), (net("172.16.0.0/12"),), subnets.COVERS_NEXT_HOP),
    ],
)
def test_every_refusal_reason_is_counted_and_no_route_made(subnet, routed, reason):
    t = ClaimTable(
        "me", hold_time=10.0, client_networks=CLIENTS, backbone_networks=BACKBONE,
        routed_networks=routed, reserved_hops=(ip("172.16.0.9"),),
    )  # fmt: skip
    t.apply(snap("x", 1, rec(subnet)), now=0)
    assert t.counters.refusals == {reason: 1}
    assert t.desired_routes() == {} and t.winner(subnet) is None


def test_a_subnet_inside_routed_networks_becomes_a_route_via_its_owner():
    t = table()
    t.apply(snap("x", 1, rec(HOST, "c1"), rec(SITE), rec(SITE6)), now=0)
    assert t.desired_routes() == {net("10.100.0.5/32"): HOP_X, SITE: HOP_X, SITE6: HOP_X6}
    assert t.counters.refusals == {}


def test_empty_routed_networks_accept_no_subnet_but_hosts_as_before():
    t = table(routed=())
    t.apply(snap("x", 1, rec(HOST, "c1"), rec(SITE)), now=0)
    assert t.desired_routes() == {net("10.100.0.5/32"): HOP_X}
    assert t.counters.refusals == {subnets.OUTSIDE_ROUTED: 1}


def test_a_next_hop_announced_later_inside_a_subnet_removes_its_route():
    t = table(routed=(net("172.16.0.0/12"),), backbone=())
    t.apply(snap("x", 1, rec(net("172.16.5.0/24"))), now=0)
    assert t.desired_routes() == {net("172.16.5.0/24"): HOP_X}
    t.apply(snap("y", 1, hop=ip("172.16.5.1"), hop6=None), now=1)
    assert t.desired_routes() == {}


def test_narrowing_routed_networks_withdraws_and_widening_admits_again():
    t = table()
    t.apply(snap("x", 1, rec(SITE)), now=0)
    t.set_policy(CLIENTS, 100, now=1, routed_networks=(net("172.16.0.0/12"),))
    assert t.desired_routes() == {}
    t.set_policy(CLIENTS, 100, now=2, routed_networks=ROUTED)
    assert t.desired_routes() == {SITE: HOP_X}


# --- winner rule and overlaps ------------------------------------------------------------


def test_same_subnet_from_two_agents_follows_the_winner_rule_in_any_order():
    old, new = rec(stamp=100), rec(stamp=200)
    t1, t2 = table(), table()
    t1.apply(snap("x", 1, old), now=0)
    t1.apply(snap("y", 1, new, hop=HOP_Y), now=0)
    t2.apply(snap("y", 1, new, hop=HOP_Y), now=0)
    t2.apply(snap("x", 1, old), now=0)
    assert t1.winner(SITE).owner == t2.winner(SITE).owner == "y"
    assert t1.desired_routes() == t2.desired_routes() == {SITE: HOP_Y}


def test_overlapping_subnets_of_different_lengths_are_both_routed():
    t = table()
    t.apply(snap("x", 1, rec(WIDER, "hq")), now=0)
    t.apply(snap("y", 1, rec(SITE, "branch"), hop=HOP_Y), now=0)
    assert t.desired_routes() == {WIDER: HOP_X, SITE: HOP_Y}


def test_a_subnet_delta_withdraws_and_a_dead_peer_takes_its_subnets():
    t = table()
    t.apply(snap("x", 1, rec(SITE), rec(WIDER, "hq")), now=0)
    t.apply(Delta(Header("x", 1, 2), SITE, None), now=1)
    assert t.desired_routes() == {WIDER: HOP_X}
    assert t.expire(now=100) == ["x"] and t.desired_routes() == {}


def test_a_heartbeat_compares_host_and_subnet_digests_apart():
    sender = table()
    sender.set_local(rec(HOST, "c1"))
    sender.set_local(rec(SITE))
    local = sender.local
    t = table()
    t.apply(snap("x", 1, rec(HOST, "c1"), rec(SITE)), now=0)
    beat = Heartbeat(Header("x", 1, 2), HOP_X, HOP_X6, 1, local.hosts, local.digest,
                     local.subnets, local.subnet_digest)  # fmt: skip
    assert t.apply(beat, now=1).request_sync_from is None
    other = Heartbeat(Header("x", 1, 3), HOP_X, HOP_X6, 1, local.hosts, local.digest, 1, "0" * 16)
    assert t.apply(other, now=2).request_sync_from == "x"


# --- reconcile ----------------------------------------------------------------------------


def test_reconcile_installs_and_removes_subnet_routes_by_prefix():
    sync = KernelMirror()
    plan = sync.plan_full({HOST: HOP_X, net("10.9.0.0/24"): HOP_X}, {SITE: HOP_Y, HOST: HOP_X})
    assert plan.replace == {SITE: HOP_Y} and plan.delete == (net("10.9.0.0/24"),)
    assert [(r.prefix, r.next_hop) for r in plan.routes()] == [(SITE, HOP_Y)]
    assert plan.deletes() == [net("10.9.0.0/24")]
    sync.record(plan, {})
    assert sync.installed == {HOST: HOP_X, SITE: HOP_Y}


def test_a_kept_subnet_route_is_not_deleted():
    sync = KernelMirror()
    plan = sync.plan_full({SITE: HOP_Y}, {}, keep=lambda key, hop: key == SITE)
    assert not plan


# --- OpenVPN side ---------------------------------------------------------------------------


def test_learn_address_of_an_iroute_subnet_is_a_subnet_event():
    data = json.dumps(
        {
            "v": 1,
            "event": "learn-address",
            "op": "add",
            "address": "192.168.50.0/24",
            "common_name": "site1",
            "ts_ms": 1,
        }
    )
    event = parse_hook_datagram(data.encode())
    assert (event.subnet, event.address, event.common_name) == (SITE, None, "site1")


def test_parse_destination_normalises_hosts_and_refuses_host_bits():
    assert parse_destination("192.168.50.0/24") == SITE
    assert parse_destination("10.100.0.5/32") == HOST == parse_destination("10.100.0.5")
    with pytest.raises(ValueError, match="not a subnet"):
        parse_destination("192.168.50.1/24")


STATUS = "\n".join([
    "TITLE\tOpenVPN 2.6.3",
    "TIME\t2024-01-01 00:00:00\t1700000000",
    "HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tVirtual IPv6 Address"
    "\tBytes Received\tBytes Sent\tConnected Since\tConnected Since (time_t)\tUsername"
    "\tClient ID\tPeer ID\tData Channel Cipher",
    "CLIENT_LIST\tsite1\t10.0.0.2:1194\t10.100.0.6\t\t1\t2\tx\t1699999000\tUNDEF\t3\t0\tAES",
    "HEADER\tROUTING_TABLE\tVirtual Address\tCommon Name\tReal Address\tLast Ref"
    "\tLast Ref (time_t)",
    "ROUTING_TABLE\t192.168.50.0/24\tsite1\t10.0.0.2:1194\tx\t1699999900",
    "ROUTING_TABLE\t10.100.0.6\tsite1\t10.0.0.2:1194\tx\t1699999901",
    "ROUTING_TABLE\t192.168.60.0/24\tgone\t10.0.0.9:1194\tx\t1699999902",
    "END",
])  # fmt: skip


def test_status_lists_the_iroute_subnet_with_its_client_session():
    report = parse_status(STATUS)
    assert report.problems == ()
    found = routed_subnets(report)
    assert [(s, c.common_name, c.connected_since, ref) for s, c, ref in found] == [
        (SITE, "site1", 1699999000, 1699999900)
    ]


# --- local claims --------------------------------------------------------------------------


def test_a_router_disconnecting_takes_its_subnets_with_it_at_once():
    from meshroute.core.local import LocalClaims

    t = table()
    local = LocalClaims(t, started_ms=0)
    local.connected(HOST, "site1", 100, now=0.0, wall_ms=100_000)
    local.connected(SITE, "site1", 100, now=0.0, wall_ms=100_000)
    local.connected(WIDER, "other", 100, now=0.0, wall_ms=100_000)
    changes = local.disconnected(HOST, "site1", now=1.0, connected_since=100)
    assert sorted(map(str, (a for a, r in changes if r is None))) == ["10.100.0.5", str(SITE)]
    assert set(t.local.records) == {WIDER}


# --- configuration and reload ---------------------------------------------------------------


def test_routed_networks_config_default_overlap_warning_and_bad_value() -> None:
    from meshroute.config.schema import ConfigError, load_config

    assert load_config(None, {}, {"client_networks": "10.100.0.0/16"}).config.routed_networks == ()
    loaded = load_config(
        None,
        {"MESHROUTE_ROUTED_NETWORKS": "192.168.0.0/16, 10.0.0.0/8"},
        {"client_networks": "10.100.0.0/16"},
    )
    assert loaded.config.routed_networks == (net("192.168.0.0/16"), net("10.0.0.0/8"))
    assert any("routed_networks: 10.0.0.0/8 overlaps 10.100.0.0/16" in w for w in loaded.warnings)
    with pytest.raises(ConfigError, match=r"routed_networks.*host bits set"):
        load_config(None, {}, {"routed_networks": "192.168.1.1/24"})


def test_a_reload_that_narrows_routed_networks_withdraws_our_own_subnet() -> None:
    from meshroute.core.engine import AgentCore, CoreSettings

    settings = CoreSettings(name="me", client_networks=CLIENTS, routed_networks=ROUTED)
    core = AgentCore(settings, epoch=1, wall_clock=lambda: 1_700_000_000_000)
    core.on_connect(SITE, "site1", None, now=0.0, wall_ms=1_700_000_000_000)
    assert SITE in core.table.local.records
    narrowed = CoreSettings(name="me", client_networks=CLIENTS, routed_networks=(WIDER,))
    core.reconfigure(narrowed, now=1.0)
    assert SITE in core.table.local.records  # still inside 192.168.0.0/16
    core.reconfigure(CoreSettings(name="me", client_networks=CLIENTS), now=2.0)
    assert SITE not in core.table.local.records
    deltas = [o.message for o in core.take_outbox() if isinstance(o.message, Delta)]
    assert deltas[-1].address == SITE and deltas[-1].claim is None


def test_the_state_file_keeps_subnet_claims_across_a_restart(tmp_path) -> None:
    """Restart without flaps: our own subnet claims keep their stamps, and one subnet
    must not make the whole file unreadable (the host claims' stamps with it)."""
    from meshroute.agent.incarnation import load_claims, save_claims

    records = [rec(HOST, "c1"), rec(SITE), rec(SITE6)]
    save_claims(tmp_path, "s1", records)
    assert load_claims(tmp_path, "s1") == records
