"""A simulated world for property tests: N servers with their own clocks, one faulty bus.

Everything is deterministic given the random seed. The parts:

- **Time.** One true time (:class:`TrueTime`) moves only when the simulation says so.
  Each server has its own wall clock (:class:`ServerClock`): an offset and a drift
  from the true time. The server's clock gives its agent's epoch, its hooks'
  ``wall_ms``, its sessions' ``connected_since`` and ``Last Ref``. Monotonic time is
  the true time on every server (liveness is measured locally, so an offset would
  change nothing).
- **The bus** is :class:`meshroute.bus.memory.MemoryBroker` with one
  :class:`~meshroute.bus.memory.MemoryBus` per agent: fanout and direct queues that
  outlive agents, partitions that hold an agent's outbox, and the one fault model
  of the bus seam, :class:`~meshroute.bus.memory.RandomFaults` (drop, duplicate,
  delay on the true clock, hence reorder). Messages cross the real codec.
- **Agents** are the real :class:`~meshroute.core.engine.AgentCore` (with its
  :class:`~meshroute.core.table.ClaimTable`), a real
  :class:`~meshroute.core.reconcile.KernelMirror`,
  and a :class:`~meshroute.dataplane.fake.FakeDataplane` as the server's kernel (the
  kernel outlives the agent: a restarted agent adopts it). :func:`reconcile` mirrors
  ``meshroute.agent.loop.Agent._reconcile``.
- **OpenVPN servers** are session lists. A session has its server's
  ``connected_since`` and ``Last Ref`` (time_t on the server's clock: the last packet
  from the client). A client's live session (its latest) gets traffic at least every
  keepalive; a stale one (the client moved on) never again. Hooks can be lost.

The ground truth (:meth:`World.expected_owners`) comes from the servers' session lists
and the true start times alone, never from agent state: among the sessions listed by
servers whose agents are running, the one that started last in true time wins.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from meshroute.agent.loop import KEEP_INTERVAL
from meshroute.bus.base import Envelope
from meshroute.bus.memory import MemoryBroker, MemoryBus, RandomFaults
from meshroute.core import codec
from meshroute.core.engine import AgentCore, CoreSettings
from meshroute.core.local import CLIENT_CONNECT, LEARN_ADDRESS, Session
from meshroute.core.model import (
    Address,
    ClaimRecord,
    Message,
    Network,
    RouteKey,
    is_subnet,
    route_key,
    route_prefix,
)
from meshroute.core.reconcile import Reconciler
from meshroute.dataplane.fake import FakeDataplane

CLIENT_NETS = (ipaddress.ip_network("10.100.0.0/16"), ipaddress.ip_network("fd10::/64"))
# Subnets behind clients (iroute) are routed only inside these (docs/subnets.md).
ROUTED_NETS = (ipaddress.ip_network("192.168.0.0/16"), ipaddress.ip_network("fd50::/16"))


def routable(key: RouteKey) -> bool:
    """Whether a claim for ``key`` may ever become a route (the truth's trust rule)."""
    if is_subnet(key):
        return any(key.version == n.version and key.subnet_of(n) for n in ROUTED_NETS)  # type: ignore[union-attr,arg-type]
    return any(key in net for net in CLIENT_NETS)


TRUE_WALL_START_MS = 1_700_000_000_000


def next_hops_of(index: int) -> tuple[Address, Address]:
    """The backbone next hops of the ``index``-th server (1-based)."""
    return ipaddress.ip_address(f"10.200.0.{index}"), ipaddress.ip_address(f"fd20::{index}")


# --- time ---------------------------------------------------------------------------


class TrueTime:
    """The one real time of the simulated world (seconds; it never goes back)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.start = start
        self.now = start

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def wall_ms(self) -> float:
        return TRUE_WALL_START_MS + (self.now - self.start) * 1000


@dataclass
class ServerClock:
    """A server's clock (implements :class:`meshroute.core.clock.Clock`).

    ``wall_ms`` = true wall time + ``offset_ms`` + ``drift_ppm`` * elapsed true time.
    """

    true: TrueTime
    offset_ms: int = 0
    drift_ppm: int = 0

    def monotonic(self) -> float:
        return self.true.now

    def wall_ms(self) -> int:
        elapsed_ms = (self.true.now - self.true.start) * 1000
        return int(self.true.wall_ms() + self.offset_ms + elapsed_ms * self.drift_ppm / 1e6)

    def time_t(self) -> int:
        return self.wall_ms() // 1000


# --- settings and OpenVPN sessions ----------------------------------------------------


@dataclass
class Settings:
    hold_time: float = 6.0
    announce_interval: float = 1.0
    sync_timeout: float = 1.0
    poll_interval: float = 2.0
    resync_interval: float = 10.0
    keepalive: float = 10.0  # a connected client sends at least this often
    last_ref_window: float = 30.0  # quiescence lets clients talk for 2 x this
    step: float = 0.1  # simulation tick (the agent loop's tick)
    settle_step: float = 0.5  # the tick while a calm world settles (no faults left)
    calm_step: float = 2.0  # the tick once it has settled (heartbeats and client traffic)


@dataclass
class ServerSession:
    common_name: str
    since: int  # Connected Since (time_t, server clock)
    started: float  # true time: the truth orders sessions by it
    last_ref: int  # Last Ref (time_t, server clock)


# --- one agent ----------------------------------------------------------------------


@dataclass
class SimAgent:
    """The real core and route mirror of one agent, fed like ``meshroute.agent.loop.Agent``."""

    name: str
    core: AgentCore
    clock: ServerClock
    kernel: FakeDataplane
    bus: MemoryBus | None = None
    reconciler: Reconciler = field(default_factory=lambda: Reconciler(10.0))
    next_poll: float = 0.0
    poll_requested_for: float | None = None  # the core's early poll, once per due time
    own_hops: tuple[Address, ...] = ()
    frozen_deletes: list[Network] = field(default_factory=list)  # the invariant's evidence
    cut_off: bool = False  # silently: the agent is not told, it must notice by itself
    hop_owners: dict[Address, str] = field(default_factory=dict)  # next hop -> agent

    decoded: dict[tuple[bytes, str | None], Message] = field(default_factory=dict)

    # The bus handler (called on the simulation's thread by MemoryBus.drain).
    def on_message(self, envelope: Envelope) -> None:
        # A fanout body reaches every agent: decode (and validate) it once. The
        # World shares one cache among its agents; messages are immutable.
        key = (envelope.body, envelope.user_id)
        message = self.decoded.get(key)
        if message is None:
            if len(self.decoded) > 4096:
                self.decoded.clear()
            message = self.decoded[key] = codec.decode(envelope.body, user_id=envelope.user_id)
        self.core.on_message(message, self.clock.monotonic())

    def on_connection(self, up: bool) -> None:
        if up:
            self.core.on_bus_up(self.clock.monotonic())
            self.next_poll = self.clock.monotonic()  # the agent polls at once, too
        else:
            self.core.on_bus_down()

    def publish(self) -> None:
        assert self.bus is not None
        for out in self.core.take_outbox():
            header = out.message.header
            self.bus.publish(
                codec.encode(out.message),
                msg_type=out.message.type,
                message_id=f"{header.origin}-{header.epoch}-{header.seq}",
                to=out.to,
            )


def reconcile(agent: SimAgent, now: float, resync_interval: float) -> None:
    """One reconcile step, by the agent's own :class:`~meshroute.core.reconcile.Reconciler`
    (the same plan as ``meshroute.agent.loop.Agent._reconcile``), into the fake kernel.

    Records every delete made while the table is frozen (or the agent is silently
    cut off from the broker): an agent that cannot hear the bus must delete no
    route because it cannot tell who is dead, but for one to its own client (a
    hook), one toward a peer whose goodbye it heard before the cut (held back by the
    sync window), and one toward a peer it still knows, whose own state (received
    before the cut) no longer claims the address.
    """
    table, reconciler = agent.core.table, agent.reconciler
    reconciler.resync_interval = resync_interval
    plan = reconciler.plan(agent.core, now, agent.kernel.dump, agent.own_hops)
    if not plan:
        return
    before = len(agent.kernel.applied_deletes)
    hops = dict(agent.kernel.owned)
    result = agent.kernel.apply(plan.routes(), plan.deletes())
    reconciler.record(plan, result.failed)
    if table.frozen or agent.cut_off:
        for prefix in agent.kernel.applied_deletes[before:]:
            winner = table.winner(route_key(prefix))
            if winner is not None and winner.owner == agent.name:
                continue  # its own client now (a hook while cut off)
            owner = agent.hop_owners.get(hops[prefix])
            if owner in table.departed:
                continue  # toward a peer that said goodbye before the cut
            if owner in table.peers and table.peers[owner].synced:
                continue  # that peer, still known, said so itself (its snapshot or delta)
            agent.frozen_deletes.append(prefix)


# --- the world ----------------------------------------------------------------------


class World:
    def __init__(
        self,
        names: list[str],
        seed: int,
        settings: Settings | None = None,
        *,
        offsets_ms: list[int] | None = None,
        drifts_ppm: list[int] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.true = TrueTime()
        self.settings = settings or Settings()
        self.names = names
        offsets = offsets_ms or [0] * len(names)
        drifts = drifts_ppm or [0] * len(names)
        self.clocks = {
            n: ServerClock(self.true, offsets[i], drifts[i]) for i, n in enumerate(names)
        }
        self.faults = RandomFaults(random.Random(self.rng.random()))
        self.broker = MemoryBroker(fault=self.faults, clock=lambda: self.true.now)
        self.kernels = {n: FakeDataplane() for n in names}
        self.sessions: dict[str, dict[Address, ServerSession]] = {n: {} for n in names}
        self.live: dict[Address, str] = {}  # client -> server of its live session
        self._next_traffic: dict[Address, float] = {}
        self.agents: dict[str, SimAgent | None] = {n: None for n in names}
        self._decoded: dict[tuple[bytes, str | None], Message] = {}
        self._epochs: dict[str, int] = {}
        self.kept: dict[str, tuple[ClaimRecord, ...]] = {}  # each server's state file
        self._kept_at: dict[str, float] = {}
        self._hops = {n: next_hops_of(i + 1) for i, n in enumerate(names)}
        self.all_hops = frozenset(h for pair in self._hops.values() for h in pair)
        self._hop_owners = {h: n for n, pair in self._hops.items() for h in pair}
        self.hook_loss = 0.0
        # The documented limit (docs/design.md): once a hook was lost or an agent lost
        # its memory, sessions of one address are ordered only to the second.
        self.forgetful = False
        self.on_tick: Callable[[], None] | None = None  # per-tick checks of a test
        for name in names:
            self.start_agent(name)

    # --- agents -------------------------------------------------------------------

    def hops(self, name: str) -> tuple[Address, Address]:
        return self._hops[name]

    def start_agent(self, name: str) -> None:
        assert self.agents[name] is None, f"{name} is running"
        s, clock = self.settings, self.clocks[name]
        hop4, hop6 = self.hops(name)
        core_settings = CoreSettings(
            name=name,
            hold_time=s.hold_time,
            announce_interval=s.announce_interval,
            sync_timeout=s.sync_timeout,
            client_networks=CLIENT_NETS,
            routed_networks=ROUTED_NETS,
            next_hop=hop4,
            next_hop6=hop6,
        )
        # The epoch is a persisted incarnation (meshroute.agent.incarnation): above the last.
        epoch = max(clock.wall_ms(), self._epochs.get(name, -1) + 1)
        self._epochs[name] = epoch
        core = AgentCore(core_settings, epoch=epoch, wall_clock=clock.wall_ms)
        now = clock.monotonic()
        agent = SimAgent(
            name, core, clock, self.kernels[name], own_hops=(hop4, hop6), decoded=self._decoded
        )
        agent.hop_owners = self._hop_owners
        agent.next_poll = now + self.rng.uniform(0, 0.5)
        agent.cut_off = name in self.broker._partitioned
        self.agents[name] = agent
        core.remember(self.kept.get(name, ()))  # the state file (meshroute.agent.incarnation)
        core.start(now)
        agent.bus = MemoryBus(self.broker, name)
        agent.bus.start(agent)
        self._iterate(agent)

    def crash_agent(self, name: str) -> None:
        """kill -9: no goodbye; what is in the bus's outbox is lost. Its state file
        keeps the own claims of its last write (``_keep``, every 2 s as the agent)."""
        agent = self.agents[name]
        if agent is not None:
            self.forgetful = True
            assert agent.bus is not None
            agent.bus.stop()
            self.agents[name] = None

    def stop_agent(self, name: str) -> None:
        """A clean stop: goodbye (lost if the agent is cut off from the broker)."""
        agent = self.agents[name]
        if agent is not None:
            agent.core.stop()
            agent.publish()
            self.crash_agent(name)

    def partition(self, name: str, *, silent: bool = False) -> None:
        """Cut ``name`` off the broker; ``silent``: without it being told (no FIN, no RST)."""
        self.broker.partition(name, silent=silent)
        agent = self.agents[name]
        if agent is not None:
            agent.cut_off = True
        self._drain(name)

    def heal(self, name: str) -> None:
        self.broker.heal(name)
        agent = self.agents[name]
        if agent is not None:
            agent.cut_off = False
        self._drain(name)

    def partitioned(self) -> list[str]:
        return [n for n in self.names if n in self.broker._partitioned]

    def _drain(self, name: str) -> None:
        agent = self.agents[name]
        if agent is not None:
            assert agent.bus is not None
            agent.bus.drain()
            self._after_input(agent)

    # --- OpenVPN servers ------------------------------------------------------------

    def connect(self, server: str, address: Address, common_name: str) -> None:
        """A client session starts on ``server``; its session elsewhere goes stale."""
        clock = self.clocks[server]
        since = clock.time_t()
        self.sessions[server][address] = ServerSession(common_name, since, self.true.now, since)
        self.live[address] = server
        self._next_traffic[address] = self.true.now + self.rng.uniform(0.1, 1.0)
        agent = self.agents[server]
        if agent is None or not agent.core.table.admits(address):  # as the agent filters
            return
        now, wall = clock.monotonic(), clock.wall_ms()
        # OpenVPN runs client-connect, then learn-address add, for one session.
        for source in (CLIENT_CONNECT, LEARN_ADDRESS):
            if self._hook_lost():
                continue
            cn_since = since if source == CLIENT_CONNECT else None
            agent.core.on_connect(
                address, common_name, cn_since, now=now, wall_ms=wall, source=source
            )
        self._after_input(agent)

    def disconnect(self, server: str, address: Address) -> None:
        """A session ends on ``server`` (the client left, or a stale session was reaped)."""
        session = self.sessions[server].pop(address, None)
        if session is None:
            return
        if self.live.get(address) == server:
            del self.live[address]
        agent = self.agents[server]
        if agent is not None and not self._hook_lost():
            agent.core.on_disconnect(
                address,
                session.common_name,
                now=agent.clock.monotonic(),
                connected_since=session.since,
            )
            self._after_input(agent)

    def _hook_lost(self) -> bool:
        lost = self.hook_loss > 0 and self.rng.random() < self.hook_loss
        self.forgetful |= lost
        return lost

    def status(self, server: str) -> list[Session]:
        """``status 3`` of one server (Connected Since and Last Ref on its clock)."""
        return [
            Session(a, s.common_name, s.since, last_ref=s.last_ref)
            for a, s in self.sessions[server].items()
            if routable(a)  # the agent announces nothing its own policy refuses
        ]

    def _traffic(self) -> None:
        """Live clients send packets: their session's Last Ref moves (server clock)."""
        now = self.true.now
        for address, server in self.live.items():
            if now >= self._next_traffic[address]:
                session = self.sessions[server][address]
                session.last_ref = self.clocks[server].time_t()
                self._next_traffic[address] = now + self.rng.uniform(0.5, self.settings.keepalive)

    # --- time -----------------------------------------------------------------------

    def run(self, seconds: float, step: float | None = None) -> None:
        step = step or self.settings.step
        end = self.true.now + seconds - 1e-9
        while self.true.now < end:
            self.true.advance(min(step, max(end - self.true.now, 1e-3)))
            self.broker.release_due()
            self._traffic()
            for agent in self.running_agents():
                self._iterate(agent)
            if self.on_tick is not None:
                self.on_tick()

    def _iterate(self, agent: SimAgent) -> None:
        """One pass of the agent loop: inputs, poll, timers, publish, reconcile."""
        assert agent.bus is not None
        agent.bus.drain()
        now = agent.clock.monotonic()
        if now >= agent.next_poll:
            agent.next_poll = now + self.settings.poll_interval
            agent.core.on_poll(self.status(agent.name), fetched_at=now)
        agent.core.tick(now)
        self._keep(agent, now)
        due = agent.core.poll_due  # the core wants an early poll: the poller runs next
        if due is not None and now >= due and agent.poll_requested_for != due:
            agent.poll_requested_for = due
            agent.next_poll = now
        self._after_input(agent)

    def _keep(self, agent: SimAgent, now: float) -> None:
        """The agent's state file: its own claims, written every KEEP_INTERVAL s."""
        if agent.core.local_known and now >= self._kept_at.get(agent.name, float("-inf")):
            self.kept[agent.name] = tuple(agent.core.table.local.records.values())
            self._kept_at[agent.name] = now + KEEP_INTERVAL

    def _after_input(self, agent: SimAgent) -> None:
        agent.publish()
        reconcile(agent, agent.clock.monotonic(), self.settings.resync_interval)

    def calm(self) -> None:
        """No faults, no lost hooks, nobody cut off (agents that are down stay down)."""
        self.faults.calm()
        self.hook_loss = 0.0
        for name in self.partitioned():
            self.heal(name)

    def quiesce(self) -> None:
        """Calm, then let time run: hold time, a few announces and polls; then two
        Last Ref windows of client traffic and a full resync. Coarser ticks than
        under faults (a tick only delays what happens next by up to its length)."""
        self.calm()
        s = self.settings
        self.run(s.hold_time + 3 * s.announce_interval + 2 * s.poll_interval, step=s.settle_step)
        self.run(2 * s.last_ref_window + s.resync_interval, step=s.calm_step)

    # --- views and truth --------------------------------------------------------------

    def running(self) -> list[str]:
        return [n for n, a in self.agents.items() if a is not None]

    def running_agents(self) -> list[SimAgent]:
        return [a for a in self.agents.values() if a is not None]

    def agent(self, name: str) -> SimAgent:
        agent = self.agents[name]
        assert agent is not None, f"{name} is not running"
        return agent

    def routes(self, name: str) -> dict[Network, Address]:
        """What ``name``'s kernel holds (meshroute's own routes)."""
        return dict(self.kernels[name].owned)

    def max_skew_s(self) -> float:
        walls = [c.wall_ms() for c in self.clocks.values()]
        return (max(walls) - min(walls)) / 1000

    def expected_owners(self) -> dict[Address, set[str]]:
        """The servers that may own each address once everything has settled.

        The latest session in true time among the servers whose agents run. When
        that session is not live (its client left it, so no traffic tells it from
        the others), any session that started within the clock skew of the latest
        is accepted (mesh time cannot correct an agent that never heard its peers);
        in the documented limit (``forgetful``), within one second more.
        """
        owners: dict[Address, set[str]] = {}
        candidates: dict[Address, list[tuple[float, str]]] = {}
        for server in self.running():
            for address, session in self.sessions[server].items():
                if not routable(address):
                    continue  # never a route, whoever claims it
                candidates.setdefault(address, []).append((session.started, server))
        for address, found in candidates.items():
            latest, server = max(found)
            owners[address] = {server}
            if self.live.get(address) == server:
                continue
            # Nobody's traffic can tell the sessions apart any more (the client left):
            # they are ordered by stamps in mesh time, which an agent that never heard
            # its peers (cut off since its start) cannot correct: within the skew, any
            # of them (docs/design.md, "Limits"). Forgetful: within a second too.
            window = self.max_skew_s() + (1.0 if self.forgetful else 0.0)
            owners[address] |= {s for started, s in found if latest - started < window}
        return owners

    def truth_violations(self) -> list[str]:
        """Where a running agent's kernel routes differ from the truth."""
        problems = []
        owners = self.expected_owners()
        for name in self.running():
            routes = self.routes(name)
            for address in set(owners) | {route_key(p) for p in routes}:
                allowed = owners.get(address, set())
                prefix = route_prefix(address)
                have = routes.get(prefix)
                ok_hops = {self._hop(s, address) for s in allowed if s != name}
                if (have is None and (name in allowed or not allowed)) or have in ok_hops:
                    continue
                problems.append(
                    f"{name}: {address} via {have}, expected one of "
                    f"{sorted(allowed)} (via {sorted(map(str, ok_hops)) or 'no route'})"
                )
        return problems

    def _hop(self, server: str, address: Address) -> Address:
        hop4, hop6 = self.hops(server)
        return hop4 if address.version == 4 else hop6
