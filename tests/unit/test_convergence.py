"""Property: after any history, once the system quiesces every agent wants the truth.

Random scenarios of 2-6 agents: connects, disconnects, moves (the old server keeps a
stale session), reaped stale sessions, lost hooks, agent crashes, clean stops and
restarts, broker partitions, and a bus that drops, duplicates and reorders. The
ground truth comes from the servers' session lists alone (tests/sim.py).
"""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sim import World

# Few clients, so that sessions of one address often compete.
CLIENTS = [ipaddress.ip_address(f"10.100.0.{i}") for i in range(1, 4)] + [
    ipaddress.ip_address("fd10::1")
]


def op_strategy(n_agents: int):
    server = st.integers(0, n_agents - 1)
    client = st.integers(0, len(CLIENTS) - 1)
    return st.one_of(
        st.tuples(st.just("connect"), client, server),
        st.tuples(st.just("connect"), client, server),
        st.tuples(st.just("connect"), client, server),
        st.tuples(st.just("connect"), client, server),
        st.tuples(st.just("disconnect"), client, server),
        st.tuples(st.just("reap"), client, server),
        st.tuples(st.just("crash"), server),
        st.tuples(st.just("stop"), server),
        st.tuples(st.just("restart"), server),
        st.tuples(st.just("partition"), server),
        st.tuples(st.just("heal"), server),
        st.tuples(
            st.just("faults"),
            st.sampled_from([0.0, 0.1, 0.3]),
            st.sampled_from([0.0, 0.2]),
            st.sampled_from([0.0, 0.5, 3.0]),
        ),
        st.tuples(st.just("hooks"), st.sampled_from([0.0, 0.5, 1.0])),
        st.tuples(st.just("wait"), st.sampled_from([0.05, 0.3, 1.5, 4.0, 12.0])),
    )


scenarios = st.integers(2, 6).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(op_strategy(n), max_size=40), st.integers(0, 2**32))
)


def play(world: World, op: tuple) -> None:
    kind, *args = op
    names = world.names
    if kind == "connect":
        address, server = CLIENTS[args[0]], names[args[1]]
        if world.hook_loss > 0 or world.forgetful:
            # The limit in docs/design.md: once hooks may be lost or an agent has
            # lost its memory, a session may be known only to the second (its
            # connected_since), so sessions of one address start in different seconds.
            world.run(1.0 - (world.clock.wall_ms() % 1000) / 1000 + 0.02)
        world.connect(server, address, f"client-{address}")
    elif kind in ("disconnect", "reap"):
        world.disconnect(names[args[1]], CLIENTS[args[0]])
    elif kind == "crash":
        world.crash_agent(names[args[0]])
    elif kind == "stop":
        world.stop_agent(names[args[0]])
    elif kind == "restart":
        name = names[args[0]]
        world.crash_agent(name)
        world.run(0.1)
        world.start_agent(name)
    elif kind == "partition":
        world.partition(names[args[0]])
    elif kind == "heal":
        world.heal(names[args[0]])
    elif kind == "faults":
        world.faults.drop, world.faults.duplicate, world.faults.max_delay = args
    elif kind == "hooks":
        world.hook_loss = args[0]
    elif kind == "wait":
        world.run(args[0])
    # Sessions of one address start at least 20 ms apart (the stamps' clock is in ms).
    world.run(0.02)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios)
def test_every_agent_converges_to_the_truth(scenario):
    n, ops, seed = scenario
    world = World([f"s{i}" for i in range(1, n + 1)], seed=seed)
    world.forgetful = any(op[0] in ("crash", "stop", "restart") for op in ops)
    for op in ops:
        play(world, op)
    world.quiesce()
    for name in world.running():
        assert world.desired(name) == world.truth(name), name


def test_move_with_stale_session_and_late_replay():
    """The issue's scenario, spelled out: A connects, moves to C, A stays stale."""
    world = World(["a", "b", "c"], seed=1)
    client = CLIENTS[0]
    world.connect("a", client, "c1")
    world.run(3)
    net = ipaddress.ip_network(client)
    assert world.desired("b")[net] == ipaddress.ip_address("10.200.0.1")
    world.faults.max_delay = 5.0  # what follows may arrive late and out of order
    world.connect("c", client, "c1")  # a still lists its stale session
    world.quiesce()
    for name in ("a", "b"):
        assert world.desired(name)[net] == ipaddress.ip_address("10.200.0.3")
    assert net not in world.desired("c")


def test_quick_move_away_and_back_within_one_second():
    """Found by the property test: a->b->a inside one second must end on a."""
    world = World(["a", "b"], seed=0)
    for server in ("a", "b", "a"):
        play(world, ("connect", 0, world.names.index(server)))
    world.quiesce()
    net = ipaddress.ip_network(CLIENTS[0])
    assert world.desired("b") == {net: ipaddress.ip_address("10.200.0.1")}
    assert world.desired("a") == {}


def test_steady_state_sends_only_heartbeats():
    """No snapshot ping-pong: once synced, an idle mesh exchanges heartbeats only."""
    world = World(["a", "b", "c"], seed=3)
    world.connect("a", CLIENTS[0], "c1")
    world.quiesce()
    sent: list[str] = []
    for core in world.agents.values():
        original = core._send

        def spy(message, to=None, original=original):
            sent.append(message.type)
            original(message, to)

        core._send = spy
    world.run(10)
    assert sent and set(sent) == {"heartbeat"}


def test_sync_window_opens_with_the_broker_not_the_start():
    world = World(["a", "b"], seed=4)
    world.connect("b", CLIENTS[0], "c1")
    world.run(3)
    world.partition("a")
    world.crash_agent("a")
    world.start_agent("a")  # starts cut off from the broker
    world.run(5)  # longer than the sync window
    assert not world.agents["a"].synced and not world.agents["a"].local_known
    world.heal("a")
    world.run(3)
    assert world.agents["a"].synced
    assert world.desired("a") == world.truth("a")
