"""The three clock-skew scenarios of issue 7, spelled out (tests/sim.py, real cores).

Each ends in quiescence (faults healed, time run past the hold time and two Last
Ref windows of client traffic) and asks every agent's kernel for the truth: the
client's live session, on the server it connected to last.
"""

from __future__ import annotations

import ipaddress

from meshroute.bus.memory import Arrivals
from tests.sim import World

CLIENT = ipaddress.ip_address("10.100.0.1")
NET = ipaddress.ip_network(CLIENT)


def _fixed_delay(world: World, seconds: float) -> None:
    """Every delivery takes exactly ``seconds`` (a slow broker, no randomness)."""
    world.broker.fault = lambda delivery: Arrivals((seconds,))


def _settle(world: World) -> None:
    world.broker.fault = world.faults
    world.quiesce()
    problems = world.truth_violations()
    assert not problems, "\n".join(problems)


def test_101_ms_behind_and_half_a_second_of_bus_delay():
    """s2's clock 101 ms behind s1; a connect on s1, then on s2 before s1's news
    arrives: the live session on s2 must win everywhere."""
    world = World(["s1", "s2", "s3"], seed=1, offsets_ms=[0, -101, 0])
    world.run(3)
    _fixed_delay(world, 0.5)
    world.connect("s1", CLIENT, "c1")
    world.run(0.05)
    world.connect("s2", CLIENT, "c1")
    _settle(world)
    assert world.routes("s1")[NET] == ipaddress.ip_address("10.200.0.2")
    assert NET not in world.routes("s2")


def test_two_seconds_of_skew_three_of_delay_move_after_one_and_a_half():
    """s1 2 s ahead, the broker 3 s slow, the client moves s1 -> s2 1.5 s later:
    s2 must not route its own client to s1."""
    world = World(["s1", "s2", "s3"], seed=2, offsets_ms=[2000, 0, 0])
    world.run(3)
    _fixed_delay(world, 3.0)
    world.connect("s1", CLIENT, "c1")
    world.run(1.5)
    world.connect("s2", CLIENT, "c1")
    _settle(world)
    assert NET not in world.routes("s2")
    assert world.routes("s3")[NET] == ipaddress.ip_address("10.200.0.2")


def test_sixty_seconds_ahead_while_the_new_server_is_cut_off():
    """A's clock 60 s ahead; B cut off from the broker; the client connects on A,
    then moves to B; after the heal B's live session must win."""
    world = World(["a", "b", "c"], seed=3, offsets_ms=[60_000, 0, 0])
    world.run(3)
    world.partition("b")
    world.connect("a", CLIENT, "c1")
    world.run(2)
    world.connect("b", CLIENT, "c1")
    world.run(2)
    world.heal("b")
    _settle(world)
    assert NET not in world.routes("b")
    assert world.routes("a")[NET] == ipaddress.ip_address("10.200.0.2")
