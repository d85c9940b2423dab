"""Examples the convergence property test found, kept as plain tests.

Each is the shrunk example hypothesis printed, replayed on the state machine
(``tests/unit/test_convergence.py``), so it checks the same invariants after every
simulated tick.
"""

from __future__ import annotations

from tests.unit.test_convergence import Convergence


def _machine(n: int, seed: int = 0, max_delay: float = 0.0) -> Convergence:
    machine = Convergence()
    machine.setup(n=n, offsets=[0] * 5, drifts=[0] * 5, seed=seed, max_delay=max_delay)
    return machine


def test_no_route_to_own_client_while_a_restarted_peer_resyncs():
    """s1 restarts; the client connects on s2 while s1 has not sent its first
    snapshot: s2 must not keep its route toward s1 for its own client (the
    route is "kept" for an unsynced peer, but the address is s2's now)."""
    machine = _machine(2)
    machine.move(client=0, first=0, gap=0.05, second=0)
    machine.restart(downtime=1.0, servers={0})
    machine.move(client=0, first=1, gap=0.05, second=0)
    machine.teardown()


def test_a_frozen_agent_keeps_routes_toward_a_peer_it_never_heard():
    """s2 restarts while s1 is cut off, so s2 never hears s1 (its route toward s1,
    adopted from the kernel, is kept for a hold time); then s2 loses the broker
    too. Frozen, s2 cannot tell who is dead: the route must stay, also once that
    hold time has passed. (Shrunk by hand from the example the long run found.)"""
    machine = _machine(2)
    machine.connect(client=0, server=0)
    machine.wait(seconds=3.0)
    assert machine.w.routes("s2")
    machine.partition(server=0)
    machine.restart(downtime=0.1, servers={1})
    machine.wait(seconds=3.0)
    machine.partition(server=1)
    machine.wait(seconds=8.0)
    machine.teardown()


def test_a_quiet_restart_changes_no_route_on_the_restarted_agent_either():
    """The client moved s1 -> s2 (s1 keeps a stale session). s2 restarts without
    goodbye: during its sync window it hears s1's stale claim before its own
    first poll, and must not route its own client to s1 meanwhile."""
    machine = _machine(3)
    machine.move(client=0, first=0, gap=1.5, second=1)
    machine.quiesce()
    machine.restart_quietly(downtime=0.1, servers={1})
    machine.teardown()


def test_a_contest_of_an_earlier_session_does_not_make_a_new_one_reassert():
    """Found by the CI profile: a client's session on s5 lost a contest, the client
    came back to s5 later (a new session), moved on again and left. s5 kept the
    moment of the *old* contest, so its new session's first Last Ref (its start)
    looked like traffic after the contest: the stale session re-asserted and won
    everywhere after the client had gone. (The example as hypothesis printed it.)"""
    machine = _machine(5, seed=693568)
    machine.move(client=0, first=0, gap=0.05, second=0)
    machine.connect(client=0, server=0)
    machine.connect(client=1, server=4)
    machine.leave(client=0)
    machine.leave(client=0)
    machine.move(client=1, first=0, gap=0.05, second=0)
    machine.move(client=0, first=0, gap=1.5, second=0)
    machine.leave(client=0)
    machine.leave(client=0)
    machine.move(client=1, first=0, gap=0.05, second=4)
    machine.move(client=1, first=0, gap=0.05, second=0)
    machine.leave(client=0)
    machine.connect(client=1, server=1)
    machine.leave(client=0)
    machine.leave(client=1)
    machine.teardown()


def test_every_agent_restarted_at_once_after_a_move_within_one_second():
    """Found by the CI profile: the client moved s2 -> s1 within one second, then
    both agents restarted together. Nobody could echo the millisecond stamps back,
    so both sessions fell back to connected_since * 1000, tied, and the stale one
    won by name until Last Ref corrected it: s1 routed its own client to s2 for a
    few seconds. Each agent now keeps its own claims' stamps in its state dir."""
    machine = _machine(2)
    machine.quiesce()
    machine.move(client=0, first=1, gap=0.05, second=0)
    machine.quiesce()
    machine.restart_quietly(downtime=0.1, servers={0, 1})
    machine.teardown()


def test_a_quiet_restart_of_the_stale_server_keeps_its_route_to_the_live_one():
    """The client moved s2 -> s4 within 50 ms (s2 keeps a stale session). s2
    restarts without goodbye: the first answer that echoes s2's own (losing)
    claim arrives before s4's snapshot, and s2 must not delete its route toward
    s4 meanwhile (found by the long run on main after the provisional claims)."""
    machine = _machine(4)
    machine.quiesce()
    machine.move(client=0, first=1, gap=0.05, second=3)
    machine.quiesce()
    machine.restart_quietly(downtime=0.1, servers={1})
    machine.teardown()


def test_three_agents_restarted_together_move_no_route_on_a_restarted_peer():
    """Found by the CI profile: a move s1 -> s3 within 50 ms, then s1, s2 and s3
    restarted together. s2's adopted route toward s3 was moved to s1 when s1's
    snapshot (with its stale session) arrived before s3's: a kept route is now
    neither deleted nor moved while its peer's state is missing."""
    machine = _machine(5, seed=216611345)
    machine.quiesce()
    machine.restart_quietly(downtime=0.1, servers={0})
    machine.move(client=0, first=0, gap=0.05, second=2)
    machine.quiesce()
    machine.restart_quietly(downtime=0.1, servers={0, 1, 2})
    machine.teardown()


def test_a_delete_a_known_peer_asked_for_is_not_a_frozen_delete():
    """Found by the long run: every agent restarted, then s5 was cut off silently
    before it knew; its sync window ended and it deleted a stale route toward s2,
    whose own snapshot (received before the cut) no longer claimed the address.
    That is knowledge, not a guess about who is dead: the frozen-delete invariant
    (tests/sim.py) now allows it, and the agent behaves as before."""
    machine = _machine(5, max_delay=3.0)
    machine.move(client=3, first=0, gap=0.5, second=1)
    machine.restart(downtime=3.0, servers={0})
    machine.move(client=0, first=1, gap=0.5, second=0)
    machine.leave(client=3)
    machine.restart(downtime=0.1, servers={0, 1, 2, 3})
    machine.restart(downtime=3.0, servers={0})
    machine.restart(downtime=1.0, servers={0, 1, 2, 3, 4})
    machine.cut_silently(server=4)
    machine.move(client=0, first=0, gap=0.5, second=0)
    machine.move(client=0, first=0, gap=0.5, second=0)
    machine.teardown()


def test_a_later_session_is_not_taken_for_the_one_learn_address_guessed():
    """Found by the CI profile: learn-address (no Connected Since: the time is
    guessed) told s1 of a session; it lost a contest. The client left and came back
    to s1 (a new session, hooks lost) before s1 polled, then moved to s2 and s3 and
    left. s1's poll took the new session for the guessed one (same client) and kept
    its stamp and its contest, so the new session re-asserted over s2's newer one."""
    machine = _machine(3)
    machine.hooks(loss=0.5)
    machine.move(client=1, first=0, gap=0.05, second=2)
    machine.hooks(loss=1.0)
    machine.move(client=0, first=0, gap=4.0, second=0)
    machine.move(client=1, first=0, gap=1.5, second=1)
    machine.move(client=1, first=1, gap=0.05, second=2)
    machine.hooks(loss=0.0)
    machine.leave(client=1)
    machine.teardown()
