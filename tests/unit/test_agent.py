"""The agent loop, wired to an in-memory bus and fake dataplanes (threads, real time).

Three agents run in threads exactly as the daemon runs them; only the broker, the
kernel and OpenVPN are stand-ins. What is asserted is what each fake kernel holds.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable

import pytest

from meshroute.agent import Agent, LoopSettings
from meshroute.bus.base import Envelope
from meshroute.bus.memory import MemoryBroker, MemoryBus
from meshroute.clock import SystemClock
from meshroute.core import AgentCore, CoreSettings
from meshroute.dataplane.fake import FakeDataplane
from meshroute.local import Session
from meshroute.model import Address
from meshroute.openvpn.events import HookEvent

NETS = (ipaddress.ip_network("10.100.0.0/16"), ipaddress.ip_network("fd10::/64"))
CLIENT = ipaddress.ip_address("10.100.1.7")
PREFIX = ipaddress.ip_network(CLIENT)


def hop(i: int) -> Address:
    return ipaddress.ip_address(f"10.200.0.{i}")


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {condition.__doc__ or condition}")


class Node:
    """One agent with its fake OpenVPN status, fake kernel and thread."""

    def __init__(self, broker: MemoryBroker, name: str, index: int, dataplane=None) -> None:
        self.name = name
        self.sessions: list[Session] = []
        self.dataplane = dataplane or FakeDataplane()
        settings = CoreSettings(
            name=name, hold_time=1.0, announce_interval=0.2, sync_timeout=0.3,
            client_networks=NETS, next_hop=hop(index),
        )  # fmt: skip
        self.bus = MemoryBus(broker, name)
        self.agent = Agent(
            AgentCore(settings, epoch=time.time_ns() // 1_000_000),
            bus=self.bus,
            dataplane=self.dataplane,
            status_source=lambda: list(self.sessions),
            clock=SystemClock(),
            settings=LoopSettings(status_poll_interval=0.3, resync_interval=0.5, tick=0.02),
        )
        self.thread = threading.Thread(target=self.agent.run, name=f"agent-{name}", daemon=True)

    def start(self) -> Node:
        self.thread.start()
        wait_for(lambda: self.agent.core.local_known)
        return self

    def stop(self, goodbye: bool = True) -> None:
        self.agent.request_stop(goodbye)
        self.thread.join(5)

    def connect(self, address: Address, cn: str) -> None:
        since = int(time.time())
        self.sessions.append(Session(address, cn, since))
        self.agent.on_hook(
            HookEvent("client-connect", "connect", address, None, cn, since, since * 1000)
        )

    def route(self, address: Address = CLIENT) -> Address | None:
        return self.dataplane.owned.get(ipaddress.ip_network(address))


@pytest.fixture
def cluster():
    broker = MemoryBroker(threaded=True)
    nodes: dict[str, Node] = {}

    def add(name: str, **kw) -> Node:
        node = Node(broker, name, len(nodes) + 1, **kw)
        nodes[name] = node
        return node

    yield broker, add, nodes
    for node in nodes.values():
        node.stop()


def test_client_on_a_is_routed_on_b_and_c_and_follows_a_move(cluster):
    _, add, _ = cluster
    a, b, c = (add(n).start() for n in "abc")
    a.connect(CLIENT, "host2")
    wait_for(lambda: b.route() == hop(1) and c.route() == hop(1))
    assert a.route() is None
    c.connect(CLIENT, "host2")  # a keeps listing its stale session
    wait_for(lambda: a.route() == hop(3) and b.route() == hop(3))
    assert c.route() is None
    time.sleep(0.8)  # several polls and heartbeats later, nothing flapped back
    assert (a.route(), b.route(), c.route()) == (hop(3), hop(3), None)


def test_goodbye_withdraws_at_once_and_kill_after_hold_time(cluster):
    _, add, _ = cluster
    a, b, c = (add(n).start() for n in "abc")
    a.connect(CLIENT, "h")
    other = ipaddress.ip_address("10.100.1.8")
    c.connect(other, "h8")
    wait_for(lambda: b.route() == hop(1) and b.route(other) == hop(3))
    a.stop()  # clean: goodbye
    wait_for(lambda: b.route() is None, timeout=0.5)
    c.bus.broker.partition("c")  # c falls silent (as if killed)
    c.agent.request_stop()
    wait_for(lambda: b.route(other) is None, timeout=3.0)


def test_restart_adopts_routes_and_changes_nothing_on_peers(cluster):
    _, add, nodes = cluster
    a, b = add("a").start(), add("b").start()
    a.connect(CLIENT, "h")
    wait_for(lambda: b.route() == hop(1))
    b.dataplane.reset_counters()
    a.stop(goodbye=False)  # SIGUSR1 (or kill -9): no goodbye
    # restart within the hold time, same sessions, new epoch (same name, same queue)
    nodes["a2"] = again = Node(b.bus.broker, "a", 1)
    again.sessions = list(a.sessions)
    again.start()
    time.sleep(1.5)  # past the old epoch's hold time
    assert b.route() == hop(1)
    assert b.dataplane.applied_deletes == []


def test_bad_bus_message_is_counted_and_changes_nothing(cluster):
    broker, add, _ = cluster
    a, b = add("a").start(), add("b").start()
    a.connect(CLIENT, "h")
    wait_for(lambda: b.route() == hop(1))
    changes = b.dataplane.changes
    broker.inject(Envelope(b"{not json", user_id="a"), to="b")
    forged = b'{"v":1,"type":"goodbye","origin":"a","epoch":1,"seq":1}'
    broker.inject(Envelope(forged, user_id="mallory"), to="b")
    wait_for(lambda: b.agent.stats.decode_errors == 2)
    assert b.route() == hop(1) and b.dataplane.changes == changes


def test_failed_route_is_retried_and_hand_deleted_route_comes_back(cluster):
    _, add, _ = cluster
    bad = FakeDataplane()
    bad.fail_prefix(PREFIX, "ENETUNREACH: no route to 10.200.0.1")
    a, b = add("a").start(), add("b", dataplane=bad).start()
    a.connect(CLIENT, "h")
    wait_for(lambda: b.agent.stats.apply_failures > 0)
    health = b.agent.query("health")
    assert not health["ok"] and str(PREFIX) in health["route_errors"]
    bad.clear_failures()
    wait_for(lambda: b.route() == hop(1))
    bad.delete_by_hand(PREFIX)
    wait_for(lambda: b.route() == hop(1))  # the periodic full resync repairs drift


def test_a_failing_netlink_socket_does_not_stop_the_agent(cluster):
    _, add, _ = cluster
    flaky = FakeDataplane()
    a, b = add("a").start(), add("b", dataplane=flaky).start()
    flaky.fail_next_apply(OSError(105, "No buffer space available"))
    a.connect(CLIENT, "h")
    wait_for(lambda: b.route() == hop(1))  # retried after the failure
    assert b.agent.stats.apply_failures == 1 and b.thread.is_alive()


def test_an_internal_error_drops_one_input_not_the_agent(cluster):
    _, add, _ = cluster
    a, b = add("a").start(), add("b").start()

    def bug() -> None:
        raise KeyError("a bug")

    b.agent.call_soon(bug)
    a.connect(CLIENT, "h")
    wait_for(lambda: b.route() == hop(1))
    assert b.agent.query("health")["counters"]["internal_errors"] == 1


def test_views_describe_table_and_peers(cluster):
    _, add, _ = cluster
    a, b = add("a").start(), add("b").start()
    a.connect(CLIENT, "host2")
    wait_for(lambda: b.route() == hop(1))
    [row] = b.agent.query("table")["claims"]
    assert row["address"] == str(CLIENT) and row["owner"] == "a"
    assert row["next_hop"] == str(hop(1)) and row["installed"] and not row["local"]
    [own] = a.agent.query("table")["claims"]
    assert own["local"] and own["next_hop"] is None and not own["installed"]
    [peer] = b.agent.query("peers")["peers"]
    assert peer["name"] == "a" and peer["claims"] == 1 and peer["state"] == "up"


def test_broker_outage_removes_no_route(cluster):
    broker, add, _ = cluster
    a, b = add("a").start(), add("b").start()
    a.connect(CLIENT, "h")
    wait_for(lambda: b.route() == hop(1))
    broker.partition("b")
    time.sleep(2.0)  # twice the hold time: b hears nobody, but is frozen
    assert b.route() == hop(1)
    assert b.agent.query("health")["frozen"]
    broker.heal("b")
    wait_for(lambda: not b.agent.query("health")["frozen"])
    time.sleep(1.2)
    assert b.route() == hop(1)
