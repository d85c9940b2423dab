"""The winner rule under skewed clocks, and the bounds on time from the bus (issues 7, 12).

Each server here has its own wall clock (one clock per server, as in the real
world); messages cross the real codec. Each test names the defect it pins: it
failed before the change that fixed it.
"""

from __future__ import annotations

import ipaddress
import json

from meshroute.core import codec
from meshroute.core.engine import AgentCore, CoreSettings
from meshroute.core.hlc import HybridClock, OffsetEstimate
from meshroute.core.local import Session
from meshroute.core.model import ClaimRecord, Delta, Goodbye, Header, Snapshot

NETS = (ipaddress.ip_network("10.100.0.0/16"), ipaddress.ip_network("fd10::/64"))
CLIENT = ipaddress.ip_address("10.100.0.7")
OTHER = ipaddress.ip_address("10.100.0.8")
T0 = 1_800_000_000_000  # true time, ms


class World:
    """Agents with one clock each (offset from a true time), joined by a perfect bus."""

    def __init__(self, offsets_ms: dict[str, int], *, mesh_time: bool = True) -> None:
        self.true_ms = T0
        self.offsets = dict(offsets_ms)
        self.cores: dict[str, AgentCore] = {}
        self.cut: set[str] = set()  # silently cut off: nothing in or out, bus still "up"
        for i, name in enumerate(offsets_ms, start=1):
            self.cores[name] = self._start(name, i)
            if not mesh_time:  # each signal tested alone: stamps on the raw wall clocks
                self.cores[name]._correct_clock = lambda: None  # type: ignore[method-assign]

    def wall(self, name: str) -> int:
        return self.true_ms + self.offsets[name]

    @property
    def now(self) -> float:
        return (self.true_ms - T0) / 1000

    def _start(self, name: str, i: int) -> AgentCore:
        settings = CoreSettings(
            name=name,
            hold_time=6.0,
            announce_interval=1.0,
            sync_timeout=0.5,
            client_networks=NETS,
            next_hop=ipaddress.ip_address(f"10.200.0.{i}"),
            max_clock_skew=60.0,
        )
        core = AgentCore(settings, epoch=self.wall(name), wall_clock=lambda: self.wall(name))
        core.start(self.now)
        core.on_bus_up(self.now)
        return core

    def hop(self, name: str) -> ipaddress.IPv4Address:
        return self.cores[name].settings.next_hop  # type: ignore[return-value]

    def flush(self) -> None:
        """Deliver everything sent so far (and what that triggers), in order."""
        moved = True
        while moved:
            moved = False
            for name, core in self.cores.items():
                for out in core.take_outbox():
                    moved = True
                    if name in self.cut:
                        continue
                    body = codec.encode(out.message)
                    for dest in [out.to] if out.to else list(self.cores):
                        if dest not in self.cut:
                            self.deliver(dest, body)

    def deliver(self, dest: str, body: bytes) -> None:
        origin = json.loads(body)["origin"]
        self.cores[dest].on_message(codec.decode(body, user_id=origin), self.now)

    def listed(self, name: str) -> list[Session]:
        """A server whose status lists what its agent knows, every client talking."""
        core, last_ref = self.cores[name], self.wall(name) // 1000
        records = core.table.local.records.values()
        return [Session(r.address, r.common_name, r.connected_since, last_ref) for r in records]

    def run(self, seconds: float, step: float = 0.1, sessions=None) -> None:
        """Let time pass: every agent polls every second (or when it asks) and ticks."""
        sessions = sessions or self.listed
        end = self.true_ms + int(seconds * 1000)
        while self.true_ms < end:
            self.true_ms += int(step * 1000)
            for name, core in self.cores.items():
                due = core.poll_due
                if (due is not None and due <= self.now) or (self.true_ms - T0) % 1000 == 0:
                    core.on_poll(sessions(name), fetched_at=self.now)
                core.tick(self.now)
            self.flush()

    def winner(self, name: str):
        claim = self.cores[name].table.winner(CLIENT)
        return None if claim is None else claim.owner

    def connect(self, name: str, address=CLIENT, cn: str = "c1") -> None:
        wall = self.wall(name)
        self.cores[name].on_connect(address, cn, wall // 1000, now=self.now, wall_ms=wall)


def test_hlc_orders_a_session_after_one_heard_of_whatever_the_wall_clocks():
    """s1's clock is 2 s ahead and its delta for the client is lost, but s2 hears a
    later heartbeat of s1's: a move to s2 after that is stamped above s1's session
    (the hybrid clock merged from the heartbeat), before any poll could tell. (Mesh
    time off: it alone would also order these two.)"""
    w = World({"s1": 2000, "s2": 0, "s3": 0}, mesh_time=False)
    w.run(1.0)
    w.connect("s1")
    w.cores["s1"].take_outbox()  # the delta is lost
    w.true_ms += 100
    w.cores["s1"]._send_heartbeat()
    [beat] = w.cores["s1"].take_outbox()
    w.deliver("s2", codec.encode(beat.message))  # s2's snapshot request is in flight
    w.cores["s2"].take_outbox()
    w.connect("s2")
    assert w.cores["s2"].table.local.records[CLIENT].stamp > w.wall("s1") - 100
    w.flush()
    assert {w.winner(n) for n in w.cores} == {"s2"}


def test_a_live_session_reasserts_over_a_stale_one_stamped_ahead():
    """Issue 7, first scenario: s2's clock 101 ms behind s1, the bus slower than that;
    a connect on s1 then on s2 before s2 heard of it: s1's stale session used to win
    everywhere until s1's ping-restart. Now s2's status shows the client still
    talking to s2 after the contest, and s2's session re-asserts. (Mesh time off, as
    before any offset is known: it alone would order these two.)"""
    w = World({"s1": 101, "s2": 0, "s3": 0}, mesh_time=False)
    w.run(1.0)
    w.true_ms += 500  # nothing from s1 in flight for a while
    w.connect("s1")
    w.true_ms += 50  # the move, before anything was delivered
    w.connect("s2")
    w.flush()
    assert w.winner("s3") == "s1"  # the skew hands it to the stale session at first
    since1 = w.cores["s1"].table.local.records[CLIENT].connected_since
    since2 = w.cores["s2"].table.local.records[CLIENT].connected_since

    def sessions(name: str) -> list[Session]:
        wall_s = w.wall(name) // 1000
        if name == "s1":  # stale: the client last spoke to s1 before it moved
            return [Session(CLIENT, "c1", since1, last_ref=since1)]
        if name == "s2":  # live: the client keeps talking to s2
            return [Session(CLIENT, "c1", since2, last_ref=wall_s)]
        return []

    w.run(4.0, sessions=sessions)
    assert {w.winner(n) for n in w.cores} == {"s2"}
    assert w.cores["s3"].table.desired_hops() == {CLIENT: w.hop("s2")}
    assert w.cores["s1"].table.desired_hops() == {CLIENT: w.hop("s2")}
    w.run(10.0, sessions=sessions)  # and it stays there: the stale side never re-asserts
    assert {w.winner(n) for n in w.cores} == {"s2"}


def test_a_clock_far_ahead_during_a_cut_loses_to_the_live_session_after_the_heal():
    """Issue 7, third scenario: A's clock 60 s ahead while B is cut off; the client
    moves to B; after the heal A's stale session used to win."""
    w = World({"a": 59_000, "b": 0, "c": 0})
    w.run(1.0)
    w.cut.add("b")
    w.connect("a")
    w.flush()
    w.run(2.0)
    w.connect("b")
    since_a = w.cores["a"].table.local.records[CLIENT].connected_since
    since_b = w.cores["b"].table.local.records[CLIENT].connected_since

    def sessions(name: str) -> list[Session]:
        if name == "a":
            return [Session(CLIENT, "c1", since_a, last_ref=since_a)]
        if name == "b":
            return [Session(CLIENT, "c1", since_b, last_ref=w.wall("b") // 1000)]
        return []

    w.run(2.0, sessions=sessions)
    w.cut.clear()
    w.cores["b"].on_bus_up(w.now)  # reconnects: snapshots both ways
    w.flush()
    w.run(5.0, sessions=sessions)
    assert {w.winner(n) for n in w.cores} == {"b"}


def test_mesh_time_orders_two_silent_sessions_when_nothing_linked_them():
    """Found by the long property run: s1's clock 4 s ahead, cut off; the client
    connects there, then on s4 (a later session, which heard nothing of s1's),
    then leaves: two silent sessions, no Last Ref evidence, no causal link. With
    stamps on raw wall clocks s1's (earlier) session won everywhere; in mesh time
    (each agent's wall less how far it runs ahead of its peers' median) s4's does."""
    w = World({"s1": 4000, "s2": 0, "s3": 0, "s4": 170})
    w.run(3.0)  # offsets known
    assert 3800 < w.cores["s1"].clock.correction_ms <= 4000  # the median of its peers
    w.cut.add("s1")
    w.connect("s1")
    w.true_ms += 300
    w.connect("s4")
    since1 = w.cores["s1"].table.local.records[CLIENT].connected_since
    since4 = w.cores["s4"].table.local.records[CLIENT].connected_since

    def sessions(name: str) -> list[Session]:  # both silent: the client has left
        if name == "s1":
            return [Session(CLIENT, "c1", since1, last_ref=since1)]
        if name == "s4":
            return [Session(CLIENT, "c1", since4, last_ref=since4)]
        return []

    w.run(1.0, sessions=sessions)
    w.cut.clear()
    w.cores["s1"].on_bus_up(w.now)
    w.flush()
    w.run(5.0, sessions=sessions)
    assert {w.winner(n) for n in w.cores} == {"s4"}


def test_offsets_are_estimated_per_peer():
    w = World({"s1": 0, "s2": 1500, "s3": -700})
    w.run(3.0)
    peers = w.cores["s1"].table.peers
    assert peers["s2"].offset.offset_ms == 1500
    assert peers["s3"].offset.offset_ms == -700


def test_an_absurd_stamp_from_one_peer_cannot_get_another_peer_refused():
    """Issue 12.5: a claim stamped 2**63-1 for s2's client made s2's next stamp
    2**63, which every codec refuses: s2 fell silent for everyone."""
    w = World({"s1": 0, "s2": 0, "evil": 0})
    w.run(1.0)
    forged = ClaimRecord(CLIENT, "c1", w.wall("evil") // 1000, 2**63 - 1)
    core = w.cores["evil"]
    core._send(Delta(core._header(), CLIENT, forged))
    w.flush()
    assert w.cores["s2"].table.claims_for(CLIENT) == {}  # refused, counted
    assert w.cores["s2"].table.counters.refusals["stamp_ahead"] == 1
    w.connect("s2")
    w.flush()
    stamp = w.cores["s2"].table.local.records[CLIENT].stamp
    assert stamp <= w.wall("s2") + 60_000
    assert w.winner("s1") == "s2"  # s1 accepted s2's delta: nothing refused


def test_a_clock_far_ahead_is_not_merged():
    w = World({"s1": 0, "s2": 0})
    w.run(1.0)
    bogus = Header("s2", w.cores["s2"].epoch, 999, clock=w.wall("s1") + 10**9)
    # a message whose clock is 11 days ahead
    w.cores["s1"].table.apply(Snapshot(bogus, w.hop("s2"), None, ()), w.now)
    assert w.cores["s1"].clock.value < w.wall("s1") + 60_000
    assert w.cores["s1"].table.counters.refusals["clock_ahead"] == 1


def test_a_goodbye_with_an_absurd_epoch_locks_nobody_out():
    """Issue 12.5: a goodbye with epoch 2**63-1 locked the named agent out for good."""
    w = World({"s1": 0, "s2": 0})
    w.run(1.0)
    w.connect("s2")
    w.flush()
    w.cores["s1"].table.apply(Goodbye(Header("s2", 2**63 - 1, 1)), w.now)
    w.run(2.0)
    assert w.winner("s1") == "s2"
    assert w.cores["s1"].table.counters.refusals["epoch_ahead"] == 1


def test_a_hook_time_far_in_the_future_is_not_believed():
    """Issue 12.5: the hook socket took time_unix up to 10**30, with the same effect."""
    w = World({"s1": 0, "s2": 0})
    w.run(1.0)
    w.cores["s1"].on_connect(CLIENT, "c1", 10**30, now=w.now, wall_ms=w.wall("s1"))
    record = w.cores["s1"].table.local.records[CLIENT]
    assert record.connected_since == w.wall("s1") // 1000
    assert record.stamp <= w.wall("s1") + 60_000
    w.flush()
    assert w.winner("s2") == "s1"


def test_a_silent_cut_freezes_the_cut_agent_before_it_expires_anyone():
    """Issue 12.2: with the connection still 'up' but nothing getting through, the cut
    agent used to expire every peer after the hold time and delete their routes."""
    w = World({"s1": 0, "s2": 0, "s3": 0})
    w.run(1.0)
    w.connect("s1")
    w.connect("s2", OTHER, "c2")
    w.flush()
    w.run(1.0)
    w.cut.add("s3")
    w.run(30.0)  # far beyond the hold time: s3 hears nothing, not even itself
    cut = w.cores["s3"]
    assert set(cut.table.peers) == {"s1", "s2"}  # nobody expired
    assert cut.table.desired_hops() == {CLIENT: w.hop("s1"), OTHER: w.hop("s2")}
    assert cut.isolated(w.now) is not None
    assert "s3" not in w.cores["s1"].table.peers  # the others did expire s3
    w.cut.clear()
    w.run(3.0)
    assert cut.isolated(w.now) is None
    assert set(cut.table.peers) == {"s1", "s2"}


def test_a_dead_peer_is_expired_within_a_probe_of_its_hold_time():
    w = World({"s1": 0, "s2": 0})
    w.run(1.0)
    del w.cores["s2"]  # kill -9
    started = w.now
    while "s2" in w.cores["s1"].table.peers:
        w.run(0.1)
    assert w.now - started <= 6.0 + 1.0 + 0.2


def test_heartbeat_repair_works_for_a_peer_with_refused_claims():
    """Issue 7.3: one refused claim switched digest repair off for that peer for good."""
    w = World({"s1": 0, "s2": 0})
    w.run(1.0)
    outside = ipaddress.ip_address("192.0.2.9")
    core = w.cores["s2"]
    core.table.client_networks = (*NETS, ipaddress.ip_network("192.0.2.0/24"))
    w.connect("s2", outside, "far")
    w.flush()
    assert w.cores["s1"].table.peers["s2"].refused.records
    w.cores["s2"].on_connect(OTHER, "c2", w.wall("s2") // 1000, now=w.now, wall_ms=w.wall("s2"))
    w.cores["s2"].take_outbox()  # the delta is lost on the way
    w.run(3.0)  # heartbeats: the digest differs, s1 asks, s2 answers
    assert w.cores["s1"].table.winner(OTHER).owner == "s2"


def test_narrowing_client_networks_withdraws_and_widening_readmits():
    """Issue 7.3: a SIGHUP that narrowed client_networks withdrew nothing, and
    widening never re-admitted refused claims."""
    w = World({"s1": 0, "s2": 0})
    w.run(1.0)
    w.connect("s2")
    w.flush()
    s1 = w.cores["s1"]
    assert s1.table.desired_hops() == {CLIENT: w.hop("s2")}
    narrow = ipaddress.ip_network("10.100.1.0/24")
    s1.reconfigure(_with_networks(s1.settings, (narrow,)), w.now)
    assert s1.table.desired_hops() == {}
    s1.reconfigure(_with_networks(s1.settings, NETS), w.now)
    assert s1.table.desired_hops() == {CLIENT: w.hop("s2")}


def test_narrowing_withdraws_our_own_claims_outside():
    w = World({"s1": 0, "s2": 0})
    w.run(1.0)
    w.connect("s1")
    w.flush()
    s1 = w.cores["s1"]
    s1.reconfigure(_with_networks(s1.settings, (ipaddress.ip_network("10.100.1.0/24"),)), w.now)
    w.flush()
    assert w.winner("s2") is None


def test_departed_peers_are_forgotten_after_a_while():
    w = World({"s1": 0, "s2": 0})
    w.run(1.0)
    w.cores["s2"].stop()
    w.flush()
    assert "s2" in w.cores["s1"].table.departed
    del w.cores["s2"]
    w.run(6.0 * 21)
    assert "s2" not in w.cores["s1"].table.departed


def test_routes_toward_an_unsynced_peer_are_kept():
    """Issue 12.3: two agents restarted together; each answers snapshot requests only
    after its own first poll, so the other's sync window ended without them and its
    full resync deleted those peers' routes."""
    w = World({"s1": 0, "s2": 0})
    w.run(1.0)
    s1 = w.cores["s1"]
    keep = s1.keeps_route(w.now)
    assert keep(CLIENT, w.hop("s2")) is False  # synced: its routes may go when unwanted
    assert keep(CLIENT, ipaddress.ip_address("10.200.0.99")) is True  # unknown, early on
    s1.table.peers["s2"].synced = False  # restarted, its snapshot not here yet
    assert s1.keeps_route(w.now)(CLIENT, w.hop("s2")) is True
    w.connect("s1")  # unless the address is our own client now
    assert s1.keeps_route(w.now)(CLIENT, w.hop("s2")) is False
    w.run(7.0)
    assert s1.keeps_route(w.now)(OTHER, ipaddress.ip_address("10.200.0.99")) is False


def test_offset_estimate_takes_the_fastest_message_and_follows_a_step():
    est = OffsetEstimate(window_ms=1000)
    for delay in (30, 5, 12):
        est.add(sent_ms=10_000 + 200, received_ms=10_000 + delay)
    assert est.offset_ms == 195
    for t in (11_100, 12_200, 13_300):  # the peer's clock was stepped back 1 s
        est.add(sent_ms=t - 800, received_ms=t)
    assert est.offset_ms == -800


def test_hybrid_clock_bounds():
    wall = [1_000_000]
    clock = HybridClock(lambda: wall[0], max_skew_ms=5000)
    assert clock.merge(1_004_000) and clock.value == 1_004_000
    assert not clock.merge(1_006_000) and clock.value == 1_004_000
    assert clock.stamp_above(0) == 1_004_001
    assert clock.stamp_above(2**62) == 1_005_000  # never beyond wall + skew
    assert clock.plausible(1_010_000) and not clock.plausible(1_010_001)


def _with_networks(settings: CoreSettings, nets) -> CoreSettings:
    from dataclasses import replace

    return replace(settings, client_networks=tuple(nets))
