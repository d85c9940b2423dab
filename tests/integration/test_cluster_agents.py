"""Real agents on a 3-node RabbitMQ cluster: node loss, partitions, a silent cut.

Each agent is a real process running inside its own namespace (its broker traffic
crosses that namespace's ``eth0``), given every node's URL starting with a
different node; its routes go to that namespace's kernel. Faults are ``tc`` drops
and node stops/kills (see cluster.py). Routes are sampled every 50 ms; every
assertion reads the kernels with iproute2. Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.fakes import poll
from tests.integration.cluster import FAULTED_NODES, Cluster, ClusterMesh
from tests.integration.mesh import Mesh, backbone
from tests.integration.test_faults import Sampler

pytestmark = pytest.mark.integration

HOLD = 10.0  # above partition detection (net_ticktime 4 s: 3-5 s) plus a reconnect
SETTINGS = {
    "announce_interval": "0.5",
    "hold_time": str(HOLD),
    "status_poll_interval": "1",
    "sync_timeout": "1.5",
    "resync_interval": "30",
}
CUT_HOLD = 4.0
CUT_SETTINGS = {**SETTINGS, "hold_time": str(CUT_HOLD)}


def make_mesh(cluster: Cluster, tmp_path, settings, count: int) -> ClusterMesh:
    """Agents a, b, c.. with one client each, every route in place (closed on failure:
    a half-made mesh must not leave agents or namespaces behind)."""
    exchange = f"cl{time.monotonic_ns() % 10**8}"
    m = ClusterMesh(cluster, tmp_path, exchange, settings)
    try:
        for i in range(count):
            m.add(f"{'abcd'[i]}-{exchange}")
        for i, agent in enumerate(m.agents.values()):
            agent.wait_ready(30)
            agent.connect(f"10.100.100.{50 + i}", f"host{i}")
        poll(lambda: all(len(a.routes()) == count - 1 for a in m.agents.values()), 15,
             "every agent routes every other agent's client")  # fmt: skip
    except BaseException:
        m.close()
        print(m.logs())
        raise
    return m


@pytest.fixture
def cmesh(cluster: Cluster, tmp_path) -> Iterator[ClusterMesh]:
    m = None
    try:
        m = make_mesh(cluster, tmp_path, SETTINGS, 3)
        yield m
    finally:
        if m is not None:
            m.close()
            print(m.logs())


@pytest.fixture
def cut_mesh(cluster: Cluster, tmp_path) -> Iterator[ClusterMesh]:
    m = None
    try:
        m = make_mesh(cluster, tmp_path, CUT_SETTINGS, 3)
        yield m
    finally:
        if m is not None:
            m.close()
            print(m.logs())


def removals(changes, allowed: set[tuple[str, str]]) -> list:
    """Routes that disappeared, except (agent, address) pairs the test moved there."""
    gone = []
    for at, agent, old, new in changes:
        for dst in old.keys() - new.keys():
            if (agent, dst.split("/")[0]) not in allowed:
                gone.append((at, agent, dst))
    return gone


def log_count(agent, text: str) -> int:
    return agent.log.read_text(errors="replace").count(text)


CLOSED, CONSUMING = ": connection to ", ": consuming meshroute."


def isolated(health: dict) -> bool:
    """The agent knows it cannot hear the bus: frozen (no broker connection) or
    isolated (its own messages stopped coming back), either way it expires nobody."""
    problems = health.get("problems") or []
    return bool(health["frozen"] or any(p.startswith("isolated") for p in problems))


def routed_everywhere(agents, address: str, target) -> bool:
    return all(a.routes().get(address) == backbone(target.index) for a in agents if a is not target)


def connected(agent) -> bool:
    health = agent.query("health")
    return bool(health and health["broker_connected"])


@pytest.mark.parametrize("action", ["stop", "kill", "partition"])
def test_losing_each_node_in_turn_removes_no_route(cluster: Cluster, cmesh: Mesh, action: str):
    agents = list(cmesh.agents.values())
    figures, allowed = [], set()
    sampler = Sampler(cmesh)
    try:
        for k in FAULTED_NODES:
            on_k = agents[k - 1]  # started on node k (its first URL)
            mover = agents[k % len(agents)]
            target = on_k  # the hard case: its client arrives while its node goes
            address = f"10.100.100.{50 + agents.index(mover)}"
            closed, consumed = log_count(on_k, CLOSED), log_count(on_k, CONSUMING)
            acted = time.monotonic()
            cluster.fault(k, action)
            # A client moves during the failover: from `mover` to the agent on node k.
            time.sleep(0.5)
            # as OpenVPN shows it: the old session goes silent, the new one is live
            mover.went_silent(address)
            target.connect(address, f"host{agents.index(mover)}", live=True)
            allowed.add((target.name, address))
            poll(lambda a=on_k, n=closed: log_count(a, CLOSED) > n, 15,
                 f"{on_k.name} to notice b{k} lost")  # fmt: skip
            lost = time.monotonic()
            noticed = lost - acted
            poll(lambda a=on_k, n=consumed: log_count(a, CONSUMING) > n, 15,
                 f"{on_k.name} to consume again")  # fmt: skip
            poll(lambda: all(connected(a) for a in agents), 15, "every agent connected")
            reconnect = time.monotonic() - lost
            poll(lambda t=target, x=address: routed_everywhere(agents, x, t), 15,
                 f"{address} routed to {target.name} everywhere")  # fmt: skip
            routed = time.monotonic() - acted
            figures.append((k, noticed, reconnect, routed))
            cluster.recover(k, action)
            # the moved client stays where it is now: the next round moves another
    finally:
        changes = sampler.stop()
    for k, noticed, reconnect, routed in figures:
        print(f"{action} b{k}: its agent lost the broker after {noticed:.2f}s, all agents "
              f"connected {reconnect:.2f}s later, the moved client routed everywhere "
              f"{routed:.2f}s after the fault")  # fmt: skip
    print("route changes:", *changes, sep="\n  ")
    assert removals(changes, allowed) == []
    assert all(reconnect < 5 for _, _, reconnect, _ in figures), figures


# 3 s: under the hold time. 8 s: past it, before pika's AMQP heartbeat (10 s) notices.
# 40 s: past the heartbeat timeouts on both ends (pika gives up at ~27 s, the broker
# at 20-30 s), so the cut agent's session is gone and it must reconnect after the heal.
@pytest.mark.parametrize("seconds", [3, 8, 40])
def test_silent_cut_freezes_the_cut_agent_and_peers_withdraw_after_hold_time(
    cluster: Cluster, cut_mesh: Mesh, seconds: int
):
    agents = list(cut_mesh.agents.values())
    a, peers = agents[0], agents[1:]
    address = "10.100.100.50"  # a's client
    before = {x.name: x.routes() for x in agents}
    sampler = Sampler(cut_mesh)
    froze_at = withdrawn_at = None
    started = time.monotonic()
    cluster.cut(a.netns)
    try:
        while time.monotonic() - started < seconds:
            elapsed = time.monotonic() - started
            health = a.query("health")
            if froze_at is None and health and isolated(health):
                froze_at = elapsed
            if withdrawn_at is None and all(address not in p.routes() for p in peers):
                withdrawn_at = elapsed
            time.sleep(0.05)
    finally:
        cluster.heal(a.netns)
    healed = time.monotonic()
    poll(lambda: {x.name: x.routes() for x in agents} == before, 60,
         "every kernel back to its routes before the cut")  # fmt: skip
    converged = time.monotonic() - healed
    changes = sampler.stop()
    print(f"cut {seconds}s: a froze at {froze_at}, peers withdrew a's client at "
          f"{withdrawn_at}, converged {converged:.2f}s after the heal")  # fmt: skip
    a_lost = [c for c in changes if c[1] == a.name and c[2].keys() - c[3].keys()]
    assert a_lost == [], f"the cut agent deleted routes: {a_lost}"
    if seconds > CUT_HOLD + 1:
        assert froze_at is not None and froze_at < CUT_HOLD, (
            "a must freeze before any peer expires it"
        )
        # the hold time counts from a's last heartbeat, up to one interval before the cut
        early = CUT_HOLD - float(CUT_SETTINGS["announce_interval"]) - 0.1
        assert withdrawn_at is not None and withdrawn_at >= early, "peers withdrew too early"
    else:
        assert withdrawn_at is None, "a cut shorter than the hold time withdraws nothing"
