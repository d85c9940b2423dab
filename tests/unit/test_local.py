"""Local claims: hooks and polls merged, stamps, and the poll race guards."""

from __future__ import annotations

import ipaddress

from meshroute.core.local import LEARN_ADDRESS, LocalClaims, Session
from meshroute.core.model import ClaimRecord, Header, Snapshot
from meshroute.core.table import ClaimTable

A = ipaddress.ip_address("10.100.0.5")
NETS = (ipaddress.ip_network("10.100.0.0/16"),)
HOP = ipaddress.ip_address("10.200.0.9")
WALL = 1_700_000_000_000


def make() -> tuple[ClaimTable, LocalClaims]:
    table = ClaimTable("me", hold_time=10, client_networks=NETS)
    return table, LocalClaims(table)


def test_hook_connect_beats_a_newer_looking_stale_claim():
    table, local = make()
    # A peer's stale claim with a stamp ahead of our wall clock (its clock runs fast).
    stale = ClaimRecord(A, "c1", 1_700_000_100, WALL + 50_000)
    table.apply(Snapshot(Header("x", 1, 1), HOP, None, (stale,)), now=0)
    [(_address, record)] = local.connected(A, "c1", WALL // 1000, now=1, wall_ms=WALL)
    assert record.stamp == WALL + 50_001
    assert table.winner(A).owner == "me"
    assert table.desired_routes() == {}


def test_client_connect_then_learn_address_make_one_claim():
    _table, local = make()
    first = local.connected(A, "c1", 1000, now=1, wall_ms=WALL)
    assert len(first) == 1
    assert local.connected(A, "c1", None, now=1.01, wall_ms=WALL + 10, source=LEARN_ADDRESS) == []


def test_a_new_client_connect_is_a_new_session_even_within_the_same_second():
    _table, local = make()
    [(_, first)] = local.connected(A, "c1", 1000, now=1, wall_ms=WALL)
    [(_, again)] = local.connected(A, "c1", 1000, now=1.05, wall_ms=WALL + 50)
    assert again.stamp > first.stamp


def test_learn_address_alone_is_a_new_session():
    _table, local = make()
    [(_, guessed)] = local.connected(A, "c1", None, now=1, wall_ms=WALL, source=LEARN_ADDRESS)
    assert guessed.connected_since == WALL // 1000
    [(_, later)] = local.connected(A, "c1", None, now=9, wall_ms=WALL + 8000, source=LEARN_ADDRESS)
    assert later.stamp > guessed.stamp


def test_poll_fills_in_connected_since_of_a_learn_address_session():
    _table, local = make()
    [(_, guessed)] = local.connected(A, "c1", None, now=1, wall_ms=WALL, source=LEARN_ADDRESS)
    [(_, polled)] = local.poll([Session(A, "c1", 999)], fetched_at=5)
    assert polled.connected_since == 999 and polled.stamp == guessed.stamp


def test_a_session_that_started_after_the_guess_is_a_later_one():
    """learn-address's guess is when the hook came: the session started no later.
    A polled session of the same client that started after it is a new session
    (the client left and came back unseen by the hooks), not the guessed one."""
    _table, local = make()
    [(_, guessed)] = local.connected(A, "c1", None, now=1, wall_ms=WALL, source=LEARN_ADDRESS)
    since = WALL // 1000 + 4
    [(_, polled)] = local.poll([Session(A, "c1", since)], fetched_at=6)
    assert polled.connected_since == since
    assert polled.stamp >= since * 1000 > guessed.stamp


def test_first_poll_stamps_are_reproducible_later_polls_are_new():
    table, local = make()
    [(_, first)] = local.poll([Session(A, "c1", 1000)], fetched_at=1)
    assert first.stamp == 1_000_000
    _, local2 = make()
    [(_, again)] = local2.poll([Session(A, "c1", 1000)], fetched_at=1)
    assert again == first  # a restarted agent publishes the same record
    b = ipaddress.ip_address("10.100.0.6")
    table.apply(
        Snapshot(Header("x", 1, 1), HOP, None, (ClaimRecord(b, "c2", 1, 2_000_000),)), now=2
    )
    [(_, missed)] = local.poll([Session(A, "c1", 1000), Session(b, "c2", 1500)], fetched_at=3)
    assert missed.stamp == 2_000_001  # the hooks missed a session newer than the peer's


def test_poll_removes_gone_clients_but_not_ones_newer_than_the_poll():
    table, local = make()
    local.poll([Session(A, "c1", 1000)], fetched_at=1)
    b = ipaddress.ip_address("10.100.0.6")
    local.connected(b, "c2", 1010, now=5, wall_ms=WALL)  # after the next poll was fetched
    changes = local.poll([], fetched_at=4)
    assert changes == [(A, None)]
    assert b in table.local.records


def test_poll_does_not_resurrect_a_client_a_hook_removed_after_the_fetch():
    table, local = make()
    local.connected(A, "c1", 1000, now=1, wall_ms=WALL)
    local.disconnected(A, "c1", now=5)
    assert local.poll([Session(A, "c1", 1000)], fetched_at=4) == []
    assert A not in table.local.records
    # a later poll that still lists it is believed
    assert len(local.poll([Session(A, "c1", 1000)], fetched_at=6)) == 1


def test_disconnect_of_another_client_keeps_the_claim():
    _table, local = make()
    local.connected(A, "c1", 1000, now=1, wall_ms=WALL)
    assert local.disconnected(A, "someone-else", now=2) == []
    assert local.disconnected(A, None, now=3) == [(A, None)]  # learn-address delete


def test_late_disconnect_of_an_older_session_keeps_the_new_one():
    table, local = make()
    local.connected(A, "c1", 1000, now=1, wall_ms=WALL)
    local.connected(A, "c1", 1010, now=11, wall_ms=WALL + 10_000)  # reconnected here
    assert local.disconnected(A, "c1", now=12, connected_since=1000) == []
    assert table.local.records[A].connected_since == 1010
    assert local.disconnected(A, "c1", now=13, connected_since=1010) == [(A, None)]
