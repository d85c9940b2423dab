"""A simulated world for property tests: N agents, their OpenVPN servers, a faulty bus.

Everything is deterministic given the random seed: one fake clock, a bus that can
drop, duplicate, delay (and so reorder) messages, OpenVPN servers modelled as
session lists, and hooks that can be lost. Messages cross the real codec, so every
message the core produces must also survive strict validation.

The ground truth (:meth:`World.truth`) is computed from the servers' session lists
alone, never from agent state: among the sessions listed by servers whose agents
are running, the one that started last wins an address; every other running agent
should route the address to the winner's next hop.
"""

from __future__ import annotations

import ipaddress
import json
import random
from dataclasses import dataclass, field

from meshroute import codec
from meshroute.clock import FakeClock
from meshroute.core import AgentCore, CoreSettings
from meshroute.local import LEARN_ADDRESS, Session
from meshroute.model import Address, Network

CLIENT_NETS = (ipaddress.ip_network("10.100.0.0/16"), ipaddress.ip_network("fd10::/64"))


def next_hop_of(index: int) -> tuple[Address, Address]:
    return ipaddress.ip_address(f"10.200.0.{index}"), ipaddress.ip_address(f"fd20::{index}")


@dataclass
class ServerSession:
    common_name: str
    since: int
    order: int  # global start order: the latest started session wins in the truth


@dataclass
class Faults:
    drop: float = 0.0
    duplicate: float = 0.0
    max_delay: float = 0.0


@dataclass
class Settings:
    hold_time: float = 6.0
    announce_interval: float = 1.0
    sync_timeout: float = 1.0
    poll_interval: float = 2.0


@dataclass(order=True)
class _InFlight:
    at: float
    n: int
    dest: str = field(compare=False)
    body: bytes = field(compare=False)


class World:
    def __init__(self, names: list[str], seed: int, settings: Settings | None = None) -> None:
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.settings = settings or Settings()
        self.names = names
        self.sessions: dict[str, dict[Address, ServerSession]] = {n: {} for n in names}
        self.agents: dict[str, AgentCore | None] = {n: None for n in names}
        self.partitioned: set[str] = set()
        self.faults = Faults()
        self.flight: list[_InFlight] = []
        self._n = 0
        self._order = 0
        self._next_poll: dict[str, float] = {}
        self.hook_loss = 0.0
        self.forgetful = False  # an agent has crashed, stopped or restarted
        for name in names:
            self.start_agent(name)

    # --- agents -----------------------------------------------------------------

    def start_agent(self, name: str) -> None:
        hop4, hop6 = next_hop_of(self.names.index(name) + 1)
        settings = CoreSettings(
            name=name,
            hold_time=self.settings.hold_time,
            announce_interval=self.settings.announce_interval,
            sync_timeout=self.settings.sync_timeout,
            client_networks=CLIENT_NETS,
            next_hop=hop4,
            next_hop6=hop6,
        )
        core = AgentCore(settings, epoch=self.clock.wall_ms(), wall_clock=self.clock.wall_ms)
        self.agents[name] = core
        now = self.clock.monotonic()
        core.start(now)
        if name not in self.partitioned:
            core.on_bus_up(now)
        self._next_poll[name] = now + self.rng.uniform(0, 0.5)
        self._flush(name)

    def crash_agent(self, name: str) -> None:
        self.agents[name] = None

    def stop_agent(self, name: str) -> None:
        core = self.agents[name]
        if core is not None:
            core.stop()
            self._flush(name)
            self.agents[name] = None

    def partition(self, name: str) -> None:
        self.partitioned.add(name)
        core = self.agents[name]
        if core is not None:
            core.on_bus_down()

    def heal(self, name: str) -> None:
        self.partitioned.discard(name)
        core = self.agents[name]
        if core is not None:
            core.on_bus_up(self.clock.monotonic())
            self._flush(name)

    # --- OpenVPN servers --------------------------------------------------------

    def connect(self, server: str, address: Address, common_name: str) -> None:
        """A client session starts on ``server`` (its old sessions elsewhere go stale)."""
        self._order += 1
        since = self.clock.wall_ms() // 1000
        self.sessions[server][address] = ServerSession(common_name, since, self._order)
        core = self.agents[server]
        if core is not None and self.rng.random() >= self.hook_loss:
            # OpenVPN runs client-connect, then learn-address add, for one session.
            now, wall = self.clock.monotonic(), self.clock.wall_ms()
            core.on_connect(address, common_name, since, now=now, wall_ms=wall)
            if self.rng.random() >= self.hook_loss:
                core.on_connect(
                    address, common_name, None, now=now, wall_ms=wall, source=LEARN_ADDRESS
                )
            self._flush(server)

    def disconnect(self, server: str, address: Address) -> None:
        session = self.sessions[server].pop(address, None)
        core = self.agents[server]
        if session and core is not None and self.rng.random() >= self.hook_loss:
            core.on_disconnect(address, session.common_name, now=self.clock.monotonic())
            self._flush(server)

    # --- time and delivery ------------------------------------------------------

    def run(self, seconds: float, step: float = 0.1) -> None:
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end:
            self.clock.advance(step)
            self._deliver_due()
            for name, core in self.agents.items():
                if core is None:
                    continue
                now = self.clock.monotonic()
                if now >= self._next_poll[name]:
                    self._next_poll[name] = now + self.settings.poll_interval
                    core.on_poll(self._status(name), fetched_at=now)
                core.tick(now)
                self._flush(name)

    def quiesce(self) -> None:
        self.faults = Faults()
        self.hook_loss = 0.0
        for name in list(self.partitioned):
            self.heal(name)
        s = self.settings
        self.run(s.hold_time + 3 * s.announce_interval + 2 * s.poll_interval + 2.0)

    def _status(self, server: str) -> list[Session]:
        return [
            Session(address, s.common_name, s.since) for address, s in self.sessions[server].items()
        ]

    def _flush(self, name: str) -> None:
        core = self.agents[name]
        if core is None:
            return
        for out in core.take_outbox():
            if name in self.partitioned:
                continue  # lost with the connection
            body = codec.encode(out.message)
            dests = [out.to] if out.to is not None else list(self.names)
            for dest in dests:
                self._send(dest, body)

    def _send(self, dest: str, body: bytes) -> None:
        f = self.faults
        if self.rng.random() < f.drop:
            return
        copies = 2 if self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            self._n += 1
            delay = self.rng.uniform(0, f.max_delay)
            self.flight.append(_InFlight(self.clock.monotonic() + delay, self._n, dest, body))

    def _deliver_due(self) -> None:
        now = self.clock.monotonic()
        due = sorted(m for m in self.flight if m.at <= now)
        self.flight = [m for m in self.flight if m.at > now]
        for item in due:
            core = self.agents.get(item.dest)
            if core is None or item.dest in self.partitioned:
                continue
            origin = codec.decode(item.body, user_id=_origin_of(item.body))
            core.on_message(origin, now)
            self._flush(item.dest)

    # --- truth ------------------------------------------------------------------

    def running(self) -> list[str]:
        return [n for n, core in self.agents.items() if core is not None]

    def truth(self, agent: str) -> dict[Network, Address]:
        best: dict[Address, tuple[int, str]] = {}
        for server in self.running():
            for address, session in self.sessions[server].items():
                if address not in best or session.order > best[address][0]:
                    best[address] = (session.order, server)
        routes: dict[Network, Address] = {}
        for address, (_, server) in best.items():
            if server != agent:
                hop4, hop6 = next_hop_of(self.names.index(server) + 1)
                routes[ipaddress.ip_network(address)] = hop4 if address.version == 4 else hop6
        return routes

    def desired(self, agent: str) -> dict[Network, Address]:
        core = self.agents[agent]
        assert core is not None
        return core.table.desired_routes(own_next_hops=next_hop_of(self.names.index(agent) + 1))


def _origin_of(body: bytes) -> str:
    """The sim's stand-in for the broker-checked user_id: each agent is its own user."""
    return json.loads(body)["origin"]
