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
