"""Faults the agent core must survive, on real agents, RabbitMQ and kernels.

- concurrent restarts: agents stopped for a restart together change no route;
- a peer restarted with a new next hop: every kernel follows within a second.

(The silent cut and the cluster faults are in test_cluster_agents.py: they need the
agents' broker traffic inside namespaces.) Every assertion reads the kernels with
iproute2. Routes are sampled every 50 ms.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fakes import poll
from tests.integration.conftest import Broker
from tests.integration.mesh import Mesh, backbone

pytestmark = pytest.mark.integration

SETTINGS = {
    "announce_interval": "0.5",
    "hold_time": "4",
    "status_poll_interval": "1",
    "sync_timeout": "1.5",
    "resync_interval": "60",  # a change must not wait for the periodic resync
}
EXIT_RESTART = 75


@pytest.fixture
def mesh4(rabbit: Broker, tmp_path) -> Iterator[Mesh]:
    rabbit.require_node()
    exchange = rabbit.unique("faults")
    m = Mesh(rabbit, tmp_path, exchange, SETTINGS)
    try:
        for name in ("a", "b", "c", "d"):
            m.add(f"{name}-{exchange}")
        for i, agent in enumerate(m.agents.values()):
            agent.wait_ready()
            agent.connect(f"10.100.100.{50 + i}", f"host{i}")
        poll(lambda: all(len(a.routes()) == 3 for a in m.agents.values()), 10,
             "every agent routes the 3 other clients")  # fmt: skip
        yield m
    finally:
        m.close()
        print(m.logs())


class Sampler:
    """Reads every agent's kernel routes every 50 ms; keeps every change seen."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.changes: list[tuple[float, str, dict, dict]] = []
        self._stop = threading.Event()
        self._last = {a.name: a.routes() for a in mesh.agents.values()}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for agent in self.mesh.agents.values():
                now = agent.routes()
                if now != self._last[agent.name]:
                    self.changes.append((time.monotonic(), agent.name, self._last[agent.name], now))
                    self._last[agent.name] = now

    def stop(self) -> list[tuple[float, str, dict, dict]]:
        self._stop.set()
        self._thread.join()
        return self.changes


@pytest.mark.parametrize("together", [2, 3])
def test_agents_restarted_together_change_no_route(mesh4: Mesh, together: int):
    agents = list(mesh4.agents.values())
    before = {a.name: a.routes() for a in agents}
    sampler = Sampler(mesh4)
    try:
        restarting = agents[:together]
        for agent in restarting:  # SIGUSR1 to all first: they stop at the same moment
            agent.proc.send_signal(signal.SIGUSR1)
        assert [a.proc.wait(timeout=10) for a in restarting] == [EXIT_RESTART] * together
        for agent in restarting:
            agent.start()
        for agent in restarting:
            agent.wait_ready()
        time.sleep(3 * float(SETTINGS["sync_timeout"]))  # past every sync window
    finally:
        changes = sampler.stop()
    assert changes == [], f"route changes during a restart of {together}: {changes}"
    assert {a.name: a.routes() for a in agents} == before


def test_new_next_hop_reaches_every_kernel_within_a_second(mesh4: Mesh):
    agents = list(mesh4.agents.values())
    b = agents[1]
    client = f"10.100.100.{50 + 1}"
    assert all(a.routes()[client] == backbone(b.index) for a in agents if a is not b)
    new_hop = backbone(b.index + 20)  # on the same backbone subnet, so on-link everywhere
    b.settings = {**b.settings, "next_hop": new_hop}
    assert b.signal(signal.SIGUSR1) == EXIT_RESTART
    b.start()
    b.wait_ready()
    others = [a for a in agents if a is not b]

    def peers_know_new_hop() -> bool:
        views = [a.query("peers") for a in others]
        return all(
            v is not None and any(p["name"] == b.name and p["next_hop"] == new_hop
                                  for p in v["peers"])
            for v in views
        )  # fmt: skip

    poll(peers_know_new_hop, 15, f"every peer's table to show {b.name} via {new_hop}")
    started = time.monotonic()  # the tables know it: the kernels must follow now
    poll(lambda: all(a.routes().get(client) == new_hop for a in others), 15,
         f"{client} via {new_hop} on every peer's kernel")  # fmt: skip
    took = time.monotonic() - started
    print(f"new next hop in every kernel {took:.2f}s after every table had it")
    assert took < 1.0
