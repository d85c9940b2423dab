"""The agent loop, wired to an in-memory bus and fake dataplanes, on a fake clock.

Three agents run in threads exactly as the daemon runs them; only the broker, the
kernel, OpenVPN and time are stand-ins. Time is one shared
:class:`~meshroute.core.clock.FakeClock`: it moves only in :meth:`Cluster.advance`,
which after each step waits until every agent has run a whole loop iteration and
nothing is left in flight. So a hold time of 1 s costs no real second, and a
busy machine cannot expire a peer (the clock waits for the slowest agent).
What is asserted is what each fake kernel holds.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable

import pytest

from meshroute.agent.loop import Agent, LoopSettings
from meshroute.bus.base import Envelope
from meshroute.bus.memory import MemoryBroker, MemoryBus
from meshroute.core.clock import FakeClock
from meshroute.core.engine import AgentCore, CoreSettings
from meshroute.core.local import Session
from meshroute.core.model import Address
from meshroute.dataplane.fake import FakeDataplane
from meshroute.openvpn.events import HookEvent

NETS = (ipaddress.ip_network("10.100.0.0/16"), ipaddress.ip_network("fd10::/64"))
CLIENT = ipaddress.ip_address("10.100.1.7")
PREFIX = ipaddress.ip_network(CLIENT)
HOLD = 1.0


def hop(i: int) -> Address:
    return ipaddress.ip_address(f"10.200.0.{i}")


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Real time, for a condition that needs no time to pass (only threads to run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {condition.__doc__ or condition}")


class Node:
    """One agent with its fake OpenVPN status, fake kernel and thread."""

    def __init__(
        self,
        cluster: Cluster,
        name: str,
        index: int,
        dataplane: FakeDataplane | None = None,
        routed_networks: tuple = (),
    ) -> None:
        self.name = name
        self.cluster = cluster
        self.sessions: list[Session] = []
        self.dataplane = dataplane or FakeDataplane()
        settings = CoreSettings(
            name=name, hold_time=HOLD, announce_interval=0.2, sync_timeout=0.3,
            client_networks=NETS, next_hop=hop(index), routed_networks=routed_networks,
        )  # fmt: skip
        self.bus = MemoryBus(cluster.broker, name)
        self.iterations = 0
        self.agent = Agent(
            AgentCore(settings, epoch=cluster.clock.wall_ms() + index),
            bus=self.bus,
            dataplane=self.dataplane,
            status_source=lambda: list(self.sessions),
            clock=cluster.clock,
            settings=LoopSettings(status_poll_interval=0.05, resync_interval=0.5, tick=0.005),
        )
        self.agent.on_iteration = self._count
        self.thread = threading.Thread(target=self.agent.run, name=f"agent-{name}", daemon=True)

    def _count(self, _agent: Agent) -> None:
        self.iterations += 1

    def start(self) -> Node:
        self.thread.start()
        wait_for(lambda: self.iterations > 0)
        self.cluster.until(lambda: self.agent.core.local_known, within=1)  # the sync window
        return self

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self, goodbye: bool = False) -> None:
        self.agent.request_stop(goodbye)
        self.thread.join(5)

    def connect(self, address: Address, cn: str) -> None:
        since = self.cluster.clock.wall_ms() // 1000
        self.sessions.append(Session(address, cn, since))
        now_ms = self.cluster.clock.wall_ms()
        self.agent.on_hook(
            HookEvent("client-connect", "connect", address, None, cn, since, now_ms, now_ms)
        )

    def route(self, address: Address = CLIENT) -> Address | None:
        return self.dataplane.owned.get(ipaddress.ip_network(address))


class Cluster:
    def __init__(self) -> None:
        self.broker = MemoryBroker(threaded=True)
        self.clock = FakeClock()
        self.nodes: list[Node] = []
        self.index: dict[str, int] = {}

    def add(self, name: str, **kw) -> Node:
        node = Node(self, name, self.index.setdefault(name, len(self.index) + 1), **kw)
        self.nodes.append(node)
        return node

    def settle(self) -> None:
        """Every running agent ran two whole iterations and nothing is in flight."""
        running = [n for n in self.nodes if n.running]
        for _ in range(3):
            marks = {n.name: n.iterations for n in running}

            def moved(marks: dict[str, int] = marks) -> bool:
                return all(n.iterations >= marks[n.name] + 2 or not n.running for n in running)

            wait_for(moved)
            if all(n.agent.inbox.empty() and not self.broker.queued(n.name) for n in running):
                return

    def advance(self, seconds: float, step: float = 0.05) -> None:
        """Move the fake clock by ``seconds``, letting every agent keep up at each step."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.settle()

    def until(self, condition: Callable[[], bool], within: float, step: float = 0.05) -> float:
        """Advance until ``condition``; the fake seconds it took (fails after ``within``)."""
        waited = 0.0
        self.settle()
        while not condition():
            assert waited < within, f"not within {within} fake seconds"
            self.clock.advance(step)
            waited += step
            self.settle()
        return waited


@pytest.fixture
def cluster():
    c = Cluster()
    yield c
    for node in c.nodes:
        node.stop()


def test_client_on_a_is_routed_on_b_and_c_and_follows_a_move(cluster):
    a, b, c = (cluster.add(n).start() for n in "abc")
    a.connect(CLIENT, "host2")
    cluster.until(lambda: b.route() == hop(1) and c.route() == hop(1), within=1)
    assert a.route() is None
    cluster.clock.advance(1)  # the next session starts a second later
    c.connect(CLIENT, "host2")  # a keeps listing its stale session
    cluster.until(lambda: a.route() == hop(3) and b.route() == hop(3), within=1)
    assert c.route() is None
    # c saw the hook and then removed its own route toward a: one hook-to-route sample
    assert c.agent.stats.hook_to_route_seconds.count == 1
    assert b.agent.stats.apply_seconds.count >= 2 and b.agent.stats.hook_to_route_seconds.count == 0
    changes = [n.dataplane.changes for n in (a, b, c)]
    cluster.advance(3 * HOLD)  # many polls, heartbeats and resyncs later: no flap back
    assert (a.route(), b.route(), c.route()) == (hop(3), hop(3), None)
    assert [n.dataplane.changes for n in (a, b, c)] == changes


def test_leave_withdraws_at_once_and_kill_after_hold_time(cluster):
    a, b, c = (cluster.add(n).start() for n in "abc")
    a.connect(CLIENT, "h")
    other = ipaddress.ip_address("10.100.1.8")
    c.connect(other, "h8")
    cluster.until(lambda: b.route() == hop(1) and b.route(other) == hop(3), within=1)
    a.agent.leave()  # `meshroute leave`: goodbye
    a.thread.join(5)
    cluster.settle()
    assert b.route() is None  # at once: no fake time passed
    cluster.broker.partition("c")  # c falls silent (as if killed)
    c.stop()
    took = cluster.until(lambda: b.route(other) is None, within=HOLD + 0.5)
    assert took >= HOLD - 0.2  # not before the hold time


def test_a_plain_stop_is_not_a_goodbye_peers_keep_the_routes(cluster):
    """SIGTERM (`systemctl stop`/`restart`): the agent stopping is not its clients leaving."""
    a, b = cluster.add("a").start(), cluster.add("b").start()
    a.connect(CLIENT, "h")
    cluster.until(lambda: b.route() == hop(1), within=1)
    b.dataplane.reset_counters()
    a.stop()  # the default stop: no goodbye
    assert not a.agent.left
    cluster.advance(HOLD * 0.8)
    assert b.route() == hop(1) and b.dataplane.changes == 0
    cluster.until(lambda: b.route() is None, within=HOLD)  # gone for good: expired


def test_restart_adopts_routes_and_changes_nothing_anywhere(cluster):
    a, b = cluster.add("a").start(), cluster.add("b").start()
    a.connect(CLIENT, "h")
    mine = ipaddress.ip_address("10.100.2.9")
    b.connect(mine, "hb")
    cluster.until(lambda: b.route() == hop(1) and a.route(mine) == hop(2), within=1)
    kernel = dict(a.dataplane.owned)  # what a leaves in its kernel when it stops
    b.dataplane.reset_counters()
    a.stop()  # SIGTERM, SIGUSR1 or kill -9: no goodbye
    cluster.advance(0.3)
    # The same server starts again within the hold time: same sessions, new epoch,
    # and a kernel that still holds the routes it owned.
    again = cluster.add("a", dataplane=FakeDataplane(owned=kernel))
    again.sessions = list(a.sessions)
    again.start()
    cluster.advance(2 * HOLD)  # past the old epoch's hold time
    assert b.route() == hop(1) and again.route(mine) == hop(2)
    assert b.dataplane.changes == 0  # nothing on the peer
    assert again.dataplane.changes == 0  # nothing on the restarted agent: adopted


def test_bad_bus_message_is_counted_and_changes_nothing(cluster):
    a, b = cluster.add("a").start(), cluster.add("b").start()
    a.connect(CLIENT, "h")
    cluster.until(lambda: b.route() == hop(1), within=1)
    changes = b.dataplane.changes
    cluster.broker.inject(Envelope(b"{not json", user_id="a"), to="b")
    forged = b'{"v":1,"type":"goodbye","origin":"a","epoch":1,"seq":1}'
    cluster.broker.inject(Envelope(forged, user_id="mallory"), to="b")
    wait_for(lambda: b.agent.stats.decode_errors == 2)
    cluster.advance(0.2)
    assert b.route() == hop(1) and b.dataplane.changes == changes


def test_failed_route_is_retried_and_hand_deleted_route_comes_back(cluster):
    bad = FakeDataplane()
    bad.fail_prefix(PREFIX, "ENETUNREACH: no route to 10.200.0.1")
    a, b = cluster.add("a").start(), cluster.add("b", dataplane=bad).start()
    a.connect(CLIENT, "h")
    cluster.until(lambda: b.agent.stats.apply_failures > 0, within=1)
    health = b.agent.query("health")
    assert not health["ok"] and str(PREFIX) in health["route_errors"]
    bad.clear_failures()
    cluster.until(lambda: b.route() == hop(1), within=2)
    bad.delete_by_hand(PREFIX)
    cluster.until(lambda: b.route() == hop(1), within=1)  # the periodic resync repairs drift


def test_a_failing_netlink_socket_does_not_stop_the_agent(cluster):
    flaky = FakeDataplane()
    a, b = cluster.add("a").start(), cluster.add("b", dataplane=flaky).start()
    flaky.fail_next_apply(OSError(105, "No buffer space available"))
    a.connect(CLIENT, "h")
    cluster.until(lambda: b.route() == hop(1), within=2)  # retried after the failure
    assert b.agent.stats.apply_failures == 1 and b.thread.is_alive()


def test_an_internal_error_drops_one_input_not_the_agent(cluster):
    a, b = cluster.add("a").start(), cluster.add("b").start()

    def bug() -> None:
        raise KeyError("a bug")

    b.agent.call_soon(bug)
    a.connect(CLIENT, "h")
    cluster.until(lambda: b.route() == hop(1), within=1)
    assert b.agent.query("health")["counters"]["internal_errors"] == 1


def test_views_describe_table_and_peers(cluster):
    a, b = cluster.add("a").start(), cluster.add("b").start()
    a.connect(CLIENT, "host2")
    cluster.until(lambda: b.route() == hop(1), within=1)
    [row] = b.agent.query("table")["claims"]
    assert row["address"] == str(CLIENT) and row["owner"] == "a"
    assert row["next_hop"] == str(hop(1)) and row["installed"] and not row["local"]
    assert row["why"] == "the only claimant"
    [own] = a.agent.query("table")["claims"]
    assert own["local"] and own["next_hop"] is None and not own["installed"]
    [peer] = b.agent.query("peers")["peers"]
    assert peer["name"] == "a" and peer["claims"] == 1 and peer["state"] == "up"
    assert b.agent.query("table")["schema"] == 1


def test_the_table_says_why_the_winner_won(cluster):
    a, b, c = (cluster.add(n).start() for n in "abc")
    a.connect(CLIENT, "host2")
    cluster.until(lambda: c.route() == hop(1), within=1)
    cluster.clock.advance(1)
    b.connect(CLIENT, "host2")  # a still lists its stale session
    cluster.until(lambda: c.route() == hop(2), within=1)
    [row] = c.agent.query("table")["claims"]
    assert [x["owner"] for x in row["all_claims"]] == ["b", "a"]
    assert row["all_claims"][0]["winner"] and not row["all_claims"][1]["winner"]
    assert row["why"].startswith("latest session: stamp ") and row["why"].endswith(" of a")


def test_route_changes_are_named_and_a_burst_is_summarised(cluster, caplog):
    a, b = cluster.add("a").start(), cluster.add("b").start()
    with caplog.at_level(logging.INFO, logger="meshroute.agent.loop"):
        a.connect(CLIENT, "host2")
        line = f"route {CLIENT}: via {hop(1)} (client host2, owner a)"
        # The agent thread logs after it applied the route: wait for the line itself.
        cluster.until(lambda: b.route() == hop(1) and line in caplog.text, within=1)
        for i in range(100):
            a.connect(ipaddress.ip_address(f"10.100.3.{i}"), f"bulk{i}")
        cluster.until(
            lambda: len(b.dataplane.owned) == 101 and "not listed (rate limit" in caplog.text,
            within=2,
        )
    named = [r for r in caplog.records if r.getMessage().startswith("route 10.100.3.")]
    assert len(named) < 100


def test_broker_outage_removes_no_route(cluster):
    a, b = cluster.add("a").start(), cluster.add("b").start()
    a.connect(CLIENT, "h")
    cluster.until(lambda: b.route() == hop(1), within=1)
    cluster.broker.partition("b")
    cluster.until(lambda: b.agent.query("health")["frozen"], within=1)
    cluster.advance(2 * HOLD)  # b hears nobody, but it is frozen
    assert b.route() == hop(1)
    cluster.broker.heal("b")
    cluster.until(lambda: not b.agent.query("health")["frozen"], within=1)
    cluster.advance(1.2 * HOLD)
    assert b.route() == hop(1)


def test_health_is_bad_when_every_known_peer_fell_silent(cluster):
    a, b = cluster.add("a").start(), cluster.add("b").start()
    cluster.until(lambda: "a" in b.agent.core.table.peers, within=1)
    assert b.agent.query("health")["peers_silent_for"] is not None
    a.stop()
    cluster.until(lambda: "a" not in b.agent.core.table.peers, within=2 * HOLD)
    health = b.agent.query("health")
    assert not health["ok"] and "no peer heard" in " ".join(health["problems"])


def test_every_json_field_is_in_the_documented_schema(cluster):
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    a, b = cluster.add("a").start(), cluster.add("b").start()
    a.connect(CLIENT, "h")
    cluster.until(lambda: b.route() == hop(1), within=1)

    def keys(value: object) -> set[str]:
        if isinstance(value, dict):
            inner = {k for v in value.values() for k in keys(v)}
            return set(value) | inner if "bad_by_reason" not in value else set(value)
        if isinstance(value, list):
            return {k for v in value for k in keys(v)}
        return set()

    for view in ("table", "peers", "health"):
        answer = b.agent.query(view)
        assert answer["schema"] == 1
        for key in keys(answer) - set(answer.get("route_errors", {})):
            assert f'"{key}"' in docs, f"{view}: field {key!r} not in docs/cli.md"
