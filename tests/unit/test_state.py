"""The claim table: winners, versions, epochs, liveness, trust."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from meshroute.core.claimset import ClaimSet
from meshroute.core.model import (
    ClaimRecord,
    Delta,
    Goodbye,
    Header,
    Heartbeat,
    Snapshot,
    SyncRequest,
)
from meshroute.core.table import ClaimTable

A = ipaddress.ip_address("10.100.0.5")
B = ipaddress.ip_address("10.100.0.6")
V6 = ipaddress.ip_address("fd10::5")
HOP_X = ipaddress.ip_address("10.200.0.2")
HOP_Y = ipaddress.ip_address("10.200.0.3")
HOP_X6 = ipaddress.ip_address("fd20::2")
NETS = (ipaddress.ip_network("10.100.0.0/16"), ipaddress.ip_network("fd10::/64"))


def rec(address=A, cn="c1", since=100, stamp=100_000) -> ClaimRecord:
    return ClaimRecord(address, cn, since, stamp)


def snap(origin, epoch, seq, *claims, hop=HOP_X, hop6=HOP_X6) -> Snapshot:
    return Snapshot(Header(origin, epoch, seq), hop, hop6, tuple(claims))


def delta(origin, epoch, seq, record=None, address=A) -> Delta:
    return Delta(Header(origin, epoch, seq), address, record)


def table(**kw) -> ClaimTable:
    return ClaimTable("me", hold_time=10.0, client_networks=NETS, **kw)


def test_peer_claim_gives_route_via_its_next_hop():
    t = table()
    t.apply(snap("x", 1, 1, rec(), rec(V6, stamp=1)), now=0)
    assert t.desired_routes() == {
        ipaddress.ip_network("10.100.0.5/32"): HOP_X,
        ipaddress.ip_network("fd10::5/128"): HOP_X6,
    }


def test_highest_stamp_wins_whatever_the_arrival_order():
    old, new = rec(stamp=100), rec(stamp=200)
    t1, t2 = table(), table()
    t1.apply(snap("x", 1, 1, old), now=0)
    t1.apply(snap("y", 1, 1, new, hop=HOP_Y), now=0)
    t2.apply(snap("y", 1, 1, new, hop=HOP_Y), now=0)
    t2.apply(snap("x", 1, 1, old), now=0)
    assert t1.winner(A).owner == t2.winner(A).owner == "y"
    assert t1.desired_routes() == t2.desired_routes() == {ipaddress.ip_network(A): HOP_Y}


def test_equal_stamps_break_ties_by_owner_name():
    t = table()
    t.apply(snap("x", 1, 1, rec(stamp=5)), now=0)
    t.apply(snap("y", 1, 1, rec(stamp=5), hop=HOP_Y), now=0)
    assert t.winner(A).owner == "y"


def test_local_winner_means_no_route():
    t = table()
    t.apply(snap("x", 1, 1, rec(stamp=100)), now=0)
    t.set_local(rec(stamp=200))
    assert t.desired_routes() == {}
    t.remove_local(A)
    assert t.desired_routes() == {ipaddress.ip_network(A): HOP_X}


def test_late_replay_of_an_old_delta_changes_nothing():
    t = table()
    t.apply(snap("x", 1, 1), now=0)
    t.apply(delta("x", 1, 2, rec()), now=0)
    t.apply(delta("x", 1, 3, None), now=0)
    t.take_dirty()
    t.apply(delta("x", 1, 2, rec()), now=0)  # late duplicate of the connect
    assert t.desired_routes() == {}
    assert t.take_dirty() == set()
    assert t.counters.stale == 1


def test_out_of_order_deltas_for_different_addresses_both_apply():
    t = table()
    t.apply(snap("x", 1, 1), now=0)
    t.apply(delta("x", 1, 3, rec(B), address=B), now=0)
    t.apply(delta("x", 1, 2, rec(A)), now=0)
    assert set(t.desired_routes()) == {ipaddress.ip_network(A), ipaddress.ip_network(B)}


def test_snapshot_older_than_a_delta_keeps_the_delta():
    t = table()
    t.apply(delta("x", 1, 5, rec()), now=0)
    t.apply(snap("x", 1, 4), now=0)  # sent before the delta, arrived after it
    assert t.winner(A).owner == "x"


def test_snapshot_is_authoritative_for_older_seqs():
    t = table()
    t.apply(snap("x", 1, 10, rec()), now=0)
    t.apply(delta("x", 1, 9, None), now=0)  # older than the snapshot: ignored
    assert t.winner(A).owner == "x"
    t.apply(snap("x", 1, 11), now=0)
    assert t.winner(A) is None


def test_new_epoch_keeps_claims_until_its_snapshot():
    t = table()
    t.apply(snap("x", 1, 7, rec()), now=0)
    t.take_dirty()
    t.apply(SyncRequest(Header("x", 2, 1), target=None), now=1)
    assert t.winner(A).owner == "x"  # restart: nothing withdrawn yet
    t.apply(snap("x", 2, 2, rec()), now=1)
    assert t.take_dirty() == set()  # same record re-sent: nothing changed
    t.apply(delta("x", 1, 8, None), now=1)  # old epoch, late: ignored
    assert t.winner(A).owner == "x"


def test_hold_time_expiry_and_freeze():
    t = table()
    t.apply(snap("x", 1, 1, rec()), now=0)
    t.freeze("test")
    assert t.expire(now=100) == []
    assert t.winner(A) is not None
    t.thaw(now=100)
    assert t.expire(now=105) == []
    assert t.expire(now=110.5) == ["x"]
    assert t.desired_routes() == {}


def test_expired_peer_is_relearned_when_it_speaks_again():
    t = table()
    t.apply(snap("x", 1, 1, rec()), now=0)
    t.expire(now=20)
    t.apply(snap("x", 1, 5, rec()), now=21)
    assert t.winner(A).owner == "x"


def test_goodbye_drops_at_once_and_old_epoch_stays_gone():
    t = table()
    t.apply(snap("x", 1, 1, rec()), now=0)
    t.apply(Goodbye(Header("x", 1, 2)), now=0)
    assert t.winner(A) is None and "x" not in t.peers
    t.apply(delta("x", 1, 3, rec()), now=0)  # a straggler from the same epoch
    assert t.winner(A) is None
    t.apply(snap("x", 2, 1, rec()), now=1)  # restarted: heard again
    assert t.winner(A).owner == "x"


def test_claims_outside_client_networks_are_refused():
    t = table()
    outside = ipaddress.ip_address("192.0.2.9")
    t.apply(snap("x", 1, 1, rec(outside), rec()), now=0)
    assert set(t.desired_routes()) == {ipaddress.ip_network(A)}
    assert t.counters.refused_claims == 1


def test_per_peer_cap():
    t = table(max_claims_per_peer=1)
    t.apply(snap("x", 1, 1, rec(A), rec(B)), now=0)
    assert len(t.desired_routes()) == 1
    t.apply(delta("x", 1, 2, rec(ipaddress.ip_address("10.100.0.7")), address=B), now=0)
    assert len(t.desired_routes()) == 1
    assert t.counters.refused_claims == 2


def test_next_hops_are_never_route_destinations():
    t = table()
    t.apply(snap("x", 1, 1, rec(HOP_Y), rec(A)), now=0)  # a client at our own next hop
    assert t.desired_routes(own_next_hops=[A]) == {}


def test_a_client_address_announced_as_next_hop_is_refused_and_moves_no_route():
    """Issue 12.4: a peer announcing another server's client address as its next hop
    used to make that client's route vanish; now the hop is refused instead."""
    t = table()
    client = ipaddress.ip_address("10.100.9.9")
    t.apply(snap("x", 1, 1, rec(client)), now=0)
    t.apply(snap("y", 1, 1, rec(B), hop=client, hop6=None), now=0)
    assert t.desired_routes() == {ipaddress.ip_network(client): HOP_X}
    assert t.peers["y"].next_hop is None and "client_networks" in t.peers["y"].hop_problem
    assert t.counters.refusals == {"next_hop": 1}


def test_next_hops_outside_the_backbone_or_reserved_or_taken_are_refused():
    broker = ipaddress.ip_address("10.200.0.254")
    t = table(backbone_networks=[ipaddress.ip_network("10.200.0.0/24")], reserved_hops=[broker])
    t.apply(snap("x", 1, 1, rec(A), hop=HOP_X, hop6=None), now=0)
    t.apply(snap("y", 1, 1, rec(B), hop=HOP_X, hop6=None), now=0)  # x's hop: taken
    t.apply(snap("z", 1, 1, hop=broker, hop6=None), now=0)
    t.apply(snap("w", 1, 1, hop=ipaddress.ip_address("192.0.2.1"), hop6=None), now=0)
    assert [t.peers[n].next_hop for n in "xyzw"] == [HOP_X, None, None, None]
    assert t.desired_routes() == {ipaddress.ip_network(A): HOP_X}
    assert "already peer x's" in t.peers["y"].hop_problem
    assert "broker" in t.peers["z"].hop_problem
    assert "backbone" in t.peers["w"].hop_problem


def test_a_new_next_hop_marks_the_peers_addresses_dirty_at_once():
    """Issue 12.8: the kernel used to keep the old hop until the periodic resync."""
    t = table()
    t.apply(snap("x", 1, 1, rec(A), rec(B)), now=0)
    t.take_dirty()
    beat = Heartbeat(Header("x", 1, 2), HOP_Y, HOP_X6, state_seq=1, count=2, digest="0" * 16)
    t.apply(beat, now=1)
    assert t.take_dirty() == {A, B}
    assert t.desired_for([A, B]) == {ipaddress.ip_network(A): HOP_Y, ipaddress.ip_network(B): HOP_Y}


def test_heartbeat_digest_mismatch_asks_for_snapshot():
    t = table()
    t.apply(snap("x", 1, 1, rec()), now=0)
    good = ClaimSet()
    good.set(rec())
    beat = Heartbeat(Header("x", 1, 2), HOP_X, None, state_seq=1, count=1, digest=good.digest)
    assert t.apply(beat, now=1).request_sync_from is None
    lost = Heartbeat(Header("x", 1, 3), HOP_X, None, state_seq=2, count=2, digest="0" * 16)
    assert t.apply(lost, now=2).request_sync_from == "x"


def test_sync_request_is_answered_to_the_requester():
    t = table()
    assert t.apply(SyncRequest(Header("x", 1, 1), None), now=0).send_snapshot_to == "x"
    assert t.apply(SyncRequest(Header("x", 1, 2), "me"), now=0).send_snapshot_to == "x"
    assert t.apply(SyncRequest(Header("x", 1, 3), "zz"), now=0).send_snapshot_to is None


def test_digest_is_order_independent():
    a, b = ClaimSet(), ClaimSet()
    for r in (rec(A), rec(B, stamp=3)):
        a.set(r)
    for r in (rec(B, stamp=3), rec(A)):
        b.set(r)
    assert a.digest == b.digest
    b.remove(A)
    assert a.digest != b.digest


def test_digest_changes_with_any_field():
    base = rec()
    variants = [rec(B), rec(cn="c9"), rec(since=101), rec(stamp=100_001)]
    digests = set()
    for r in [base, *variants]:
        one = ClaimSet()
        one.set(r)
        digests.add(one.digest)
    assert len(digests) == 5
    assert ClaimSet().digest == "0" * 16


# --- the address index: one holder compact, contested as a dict -----------------------


def test_index_goes_compact_contested_and_back():
    t = table()
    t.apply(snap("x", 1, 1, rec(stamp=100)), now=0)
    assert t._by_address[A] == "x"  # one holder: the owner's name, no object
    t.apply(snap("y", 1, 1, rec(cn="c2", stamp=200), hop=HOP_Y), now=0)
    assert t.claims_for(A) == {"x": rec(stamp=100), "y": rec(cn="c2", stamp=200)}
    assert t.winner(A).owner == "y" and t.max_stamp(A) == 200
    t.set_local(rec(cn="c3", stamp=150))
    assert set(t._by_address[A]) == {"x", "y", "me"}
    t.apply(Goodbye(Header("y", 1, 2)), now=0)
    assert t.winner(A).owner == "me" and t.desired_hops() == {}
    t.remove_local(A)
    assert t._by_address[A] == "x"  # back to the compact form
    assert t.winner(A).record == rec(stamp=100) and t.max_stamp(A) == 100
    assert t.desired_hops() == {A: HOP_X}
    t.apply(delta("x", 1, 2, None), now=0)
    assert A not in t._by_address and t.winner(A) is None and t.claims_for(A) == {}
    assert t.max_stamp(A) == -1


def test_desired_hops_are_keyed_by_the_claims_own_addresses():
    t = table()
    record = rec(ipaddress.ip_address("10.100.0.5"))
    t.apply(snap("x", 1, 1, record, rec(V6, stamp=1)), now=0)
    hops = t.desired_hops()
    (key4,) = [a for a in hops if a.version == 4]
    assert key4 is record.address  # the record's own object: the mirror adds no copy
    assert t.desired_routes() == {ipaddress.ip_network(a): h for a, h in hops.items()}
    assert t.desired_hops_for([V6, B]) == {V6: HOP_X6}
    assert t.desired_for([V6, B]) == {ipaddress.ip_network(V6): HOP_X6}


def test_a_peer_without_a_next_hop_of_the_family_gets_no_route():
    t = table()
    t.apply(snap("x", 1, 1, rec(), rec(V6, stamp=1), hop6=None), now=0)
    assert t.desired_hops() == {A: HOP_X}
    t.apply(snap("y", 1, 1, rec(B), hop=HOP_X6), now=0)  # a v6 hop given as the v4 one
    assert B not in t.desired_hops()


OWNERS = ("me", "p1", "p2", "p3")
ADDRESSES = (*(ipaddress.ip_address(f"10.100.0.{i}") for i in range(1, 5)), V6)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(OWNERS),
            st.sampled_from(ADDRESSES),
            st.one_of(st.none(), st.integers(min_value=0, max_value=5)),
        ),
        max_size=60,
    )
)
def test_index_agrees_with_a_plain_model(ops):
    """Whatever order claims come and go in, the compact index answers like the
    obvious model: owner -> record per address, the highest (stamp, owner) wins."""
    t = table()
    model: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, dict[str, ClaimRecord]] = {}
    seqs = dict.fromkeys(OWNERS, 1)
    for i, owner in enumerate(OWNERS[1:]):  # each peer its own next hops
        hop, hop6 = ipaddress.ip_address(f"10.200.1.{i}"), ipaddress.ip_address(f"fd20::1:{i}")
        t.apply(snap(owner, 1, 1, hop=hop, hop6=hop6), now=0)
    for owner, address, stamp in ops:
        record = None if stamp is None else rec(address, cn=owner, stamp=stamp)
        if owner == "me":
            t.set_local(record) if record is not None else t.remove_local(address)
        else:
            seqs[owner] += 1
            t.apply(delta(owner, 1, seqs[owner], record, address=address), now=0)
        holders = model.setdefault(address, {})
        if record is None:
            holders.pop(owner, None)
        else:
            holders[owner] = record
    for address in ADDRESSES:
        holders = model.get(address, {})
        assert dict(t.claims_for(address)) == holders
        best = max(holders.items(), key=lambda i: (i[1].stamp, i[0]), default=None)
        claim = t.winner(address)
        assert (None if claim is None else (claim.owner, claim.record)) == best
        assert t.max_stamp(address) == max((r.stamp for r in holders.values()), default=-1)
        wants_route = best is not None and best[0] != "me"
        assert (address in t.desired_hops()) == wants_route
    assert all(len(h) >= 2 for h in t._by_address.values() if isinstance(h, dict))
