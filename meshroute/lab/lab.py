"""The lab's life: ``up``, ``down`` and the operations on a running lab.

One :class:`Lab` per prefix. Its state lives in ``lab.json`` (see
:mod:`meshroute.lab.state`), so every ``meshroute lab`` command is a fresh process
that picks up where the previous one left.

Invariants:

- ``up`` writes ``lab.json`` before making anything and records every pid as soon
  as the process exists; it refuses to start over leftovers of the same prefix.
- ``down`` works from ``lab.json`` AND from what exists: it stops recorded pids
  (verified by command line), the broker by its pid files, then every process left
  inside the prefix's namespaces, deletes those namespaces and the lab directory.
  It is idempotent and works after a crash anywhere in ``up``.
- The root namespace is never changed (see :mod:`meshroute.lab.netns`).
- With ``brokers`` > 1 the broker is a RabbitMQ cluster ``b1..bK`` (one node per
  namespace on the backbone, ``pause_minority``), every agent is given every
  node's URL starting with a different node, and ``lab broker ACTION [bK]`` acts
  on one node or on all. Every node serves the management UI on port 15672 and
  every agent its metrics on its backbone address, port 9100.

Size (above 300 lines): the lab's life (up, down) and every operation on a running lab
act on one lab.json; the pieces (netns, files, pki, rabbitmq, procs, observe) are
their own modules already.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meshroute.lab import backbone as backbones
from meshroute.lab import netns, observe, procs
from meshroute.lab.files import (
    DEFAULT_ROOT,
    AgentTimings,
    LabPaths,
    write_agent,
    write_client,
    write_secret,
    write_server,
)
from meshroute.lab.openvpn_conf import choose_hook
from meshroute.lab.pki import CertKey, Pki, make_pki
from meshroute.lab.rabbitmq import ClusterSpec, RabbitNode, join_cluster
from meshroute.lab.sites import agent_lines, build_sites
from meshroute.lab.state import LabState, LabStore
from meshroute.lab.topology import (
    AMQP_PORT,
    BACKBONE_IF,
    BRIDGE_BACKBONE,
    MANAGEMENT_PORT,
    BrokerPlan,
    LabPlan,
    ServerPlan,
    make_plan,
    owns_namespace,
    veth_names,
)

METRICS_PORT = 9100
UI_USER = "admin"
NET_TICKTIME = 10
"""Seconds; a partitioned cluster node notices within 7.5-12.5 s (default 60)."""

log = logging.getLogger(__name__)


class LabError(RuntimeError):
    """A lab operation cannot be done; the message says what to do."""


def agent_command() -> list[str]:
    """How to run this installation's ``meshroute`` (the venv's console script)."""
    script = Path(sys.executable).parent / "meshroute"
    return [str(script)] if script.exists() else [sys.executable, "-m", "meshroute"]


class Lab:
    def __init__(self, prefix: str, root: Path = DEFAULT_ROOT) -> None:
        self.prefix = prefix
        self.paths = LabPaths(Path(root) / prefix)
        self.store = LabStore(self.paths.root)
        self.timings = AgentTimings()

    # --- state ----------------------------------------------------------------------

    def state(self) -> LabState:
        if not self.store.exists():
            raise LabError(
                f"no lab {self.prefix!r} (no {self.paths.state}); start one with "
                f"`meshroute lab up --prefix {self.prefix}`"
            )
        return self.store.load()

    def plan(self, state: LabState | None = None) -> LabPlan:
        state = state or self.state()
        return make_plan(state.prefix, state.servers, state.clients, state.brokers, state.sites)

    def broker(self, plan: LabPlan) -> RabbitNode:
        """The first (or only) broker node."""
        return self.brokers(plan)[0]

    def brokers(self, plan: LabPlan) -> list[RabbitNode]:
        return [self._node(plan, b) for b in plan.brokers]

    def _node(self, plan: LabPlan, broker: BrokerPlan) -> RabbitNode:
        if not plan.clustered:  # the single node keeps its old name and directory
            return RabbitNode(self.paths.broker, node_name=plan.broker_ns, port=AMQP_PORT,
                              netns=plan.broker_ns, bind=str(plan.broker),
                              management_port=MANAGEMENT_PORT)  # fmt: skip
        base = self.paths.broker / broker.name
        spec = ClusterSpec(self._cookie(), net_ticktime=NET_TICKTIME)
        return RabbitNode(base, node_name=broker.name, port=AMQP_PORT, netns=broker.netns,
                          bind=str(broker.address), management_port=MANAGEMENT_PORT,
                          cluster=spec)  # fmt: skip

    @property
    def admin_password_file(self) -> Path:
        """The management UI user's password (user ``admin``; file mode 0600)."""
        return self.paths.broker / "admin.pw"

    def _cookie(self) -> str:
        """The cluster's Erlang cookie: made once, kept in the broker directory."""
        path = self.paths.broker / "cookie"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(20))
            path.chmod(0o600)
        return path.read_text().strip()

    def pki(self, plan: LabPlan) -> Pki:
        """The PKI ``up`` made (file names as :func:`make_pki` writes them)."""
        d = self.paths.pki

        def ck(name: str) -> CertKey:
            return CertKey(name, d / f"{name}.crt", d / f"{name}.key")

        return Pki(
            directory=d,
            ca_cert=d / "ca.crt",
            ca_key=d / "ca.key",
            servers={s.name: ck(s.name) for s in plan.servers},
            clients={c.name: ck(c.name) for c in plan.clients},
            tls_crypt_key=d / "tls-crypt.key",
        )

    def leftovers(self) -> list[str]:
        """Namespaces and the directory of this prefix that exist now."""
        found = [ns for ns in netns.list_netns() if owns_namespace(self.prefix, ns)]
        return found + ([str(self.paths.root)] if self.paths.root.exists() else [])

    # --- up ---------------------------------------------------------------------------

    def up(
        self,
        servers: int,
        clients: int,
        timeout: float = 90.0,
        hooks: str = "auto",
        brokers: int = 1,
        backbone: str = "bridge",
        sites: int = 0,
    ) -> float:
        """Build and start everything; return the seconds it took to converge.
        ``hooks``: how OpenVPN hands events to the agents (plugin, script, auto);
        ``brokers``: RabbitMQ nodes (more than one: a cluster b1..bK);
        ``backbone``: the management net (bridge, openvpn, openvpn-tun, openvpn-p2p;
        see :mod:`meshroute.lab.backbone`)."""
        started = time.monotonic()
        try:
            plan = make_plan(self.prefix, servers, clients, brokers, sites)
        except ValueError as exc:
            raise LabError(str(exc)) from None
        try:  # refuse a missing plugin or an unknown backbone before making anything
            choose_hook(hooks, self.paths.root)
            backbones.check_form(backbone)
        except ValueError as exc:
            raise LabError(str(exc)) from None
        found = self.leftovers()
        if found:
            raise LabError(
                f"lab {self.prefix!r} exists or left things behind ({', '.join(found)}); "
                f"run `meshroute lab down --prefix {self.prefix}` first"
            )
        state = LabState(self.prefix, servers, clients, created=time.time(),
                         client_server={c.name: c.home for c in plan.clients},
                         broker_port=AMQP_PORT, brokers=brokers, sites=sites,
                         backbone=backbone)  # fmt: skip
        self.store.save(state)
        netns.create_namespaces(plan)
        netns.build_network(plan, backbone_bridge=backbone == "bridge")
        build_sites(plan)
        if backbone == "bridge":
            self._wire_more_brokers(plan)
        else:
            backbones.wire_underlay(plan)
        log.info("lab %s: network built in %.1fs", self.prefix, time.monotonic() - started)
        if backbone != "bridge":  # before the broker boots: it binds to its backbone address
            backbones.start(backbone, plan, self.paths.root, self.paths.logs, self._spawn)
            log.info("lab %s: %s backbone up after %.1fs", self.prefix, backbone,
                     time.monotonic() - started)  # fmt: skip
        with ThreadPoolExecutor(max_workers=len(plan.brokers)) as pool:
            nodes = self.brokers(plan)
            booting = [pool.submit(node.start, 90.0) for node in nodes]
            pki = make_pki(self.paths.pki, list(plan.server_names), [c.name for c in plan.clients])
            self._start_openvpn(plan, pki, hooks)
            log.info("lab %s: OpenVPN servers and clients started after %.1fs", self.prefix,
                     time.monotonic() - started)  # fmt: skip
            for boot in booting:
                boot.result()
        join_cluster(nodes)
        log.info("lab %s: %d broker node(s) up after %.1fs", self.prefix, len(nodes),
                 time.monotonic() - started)  # fmt: skip
        self._start_agents(plan, nodes)
        log.info("lab %s: agents started after %.1fs; waiting for them to converge",
                 self.prefix, time.monotonic() - started)  # fmt: skip
        problems = self.wait_converged(timeout - (time.monotonic() - started))
        with self.store.update() as state:
            state.phase = "failed" if problems else "up"
        if problems:
            raise LabError("the agents did not converge:\n  " + "\n  ".join(problems[:20]))
        return time.monotonic() - started

    def _wire_more_brokers(self, plan: LabPlan) -> None:
        """Backbone links and addresses of cluster nodes 2..K (netns wires the first)."""
        for broker in plan.brokers[1:]:
            outer = veth_names(broker.name)[1]
            netns.batch(plan.net_ns, [
                f"link add {outer} type veth peer name {BACKBONE_IF} netns {broker.netns}",
                f"link set {outer} master {BRIDGE_BACKBONE}",
                f"link set {outer} up",
            ])  # fmt: skip
            netns.batch(broker.netns, [
                f"addr add {broker.address}/24 dev {BACKBONE_IF}",
                f"addr add {broker.address6}/64 dev {BACKBONE_IF} nodad",
                f"link set {BACKBONE_IF} up",
            ])  # fmt: skip

    def _start_openvpn(self, plan: LabPlan, pki: Pki, hooks: str = "auto") -> None:
        for server in plan.servers:
            write_server(self.paths, plan, server, pki, secrets.token_urlsafe(18), hooks)
            self._spawn(server.netns, f"{server.name}.openvpn", self._openvpn_argv(server.name),
                        self.paths.log(server.name, "openvpn"))  # fmt: skip
        for server in plan.servers:
            self._await_management(server.name)
        for client in plan.clients:
            self._start_client(plan, client.name, client.home, pki)

    def _await_management(self, server: str) -> None:
        """Wait for the server's management socket; fail at once if OpenVPN exited."""
        sock, role = self.paths.mgmt_socket(server), f"{server}.openvpn"
        pid, conf = self.state().pids[role], str(self.paths.openvpn_conf(server))

        def ready() -> bool:
            if not procs.alive(pid, conf):
                raise LabError(f"{role} exited; see {self.paths.log(server, 'openvpn')}")
            return sock.exists()

        _wait(ready, 20.0, f"{server}'s management socket {sock}")

    def _openvpn_argv(self, node: str) -> list[str]:
        return ["openvpn", "--config", str(self.paths.openvpn_conf(node))]

    def _spawn(self, ns: str, role: str, argv: list[str], log_file: Path) -> int:
        pid = procs.spawn(ns, argv, log_file)
        self.store.set_pid(role, pid)
        return pid

    def _start_client(self, plan: LabPlan, client: str, server: str, pki: Pki) -> None:
        write_client(self.paths, plan, plan.client(client), server, pki)
        since = time.time()  # before the process exists: its session cannot be older
        self._spawn(plan.client(client).netns, f"{client}.openvpn", self._openvpn_argv(client),
                    self.paths.log(client, "openvpn"))  # fmt: skip
        with self.store.update() as state:
            state.client_server[client] = server
            state.client_since[client] = since

    def _start_agents(self, plan: LabPlan, nodes: list[RabbitNode]) -> None:
        passwords = {s.name: secrets.token_urlsafe(18) for s in plan.servers}
        nodes[0].add_agents(passwords)  # users are cluster-wide
        admin_pw = secrets.token_urlsafe(12)
        nodes[0].add_user(UI_USER, admin_pw, ".*", ".*", ".*", tags=("administrator",))
        write_secret(self.admin_password_file, admin_pw + "\n")
        by_name = dict(zip((b.name for b in plan.brokers), nodes, strict=True))
        ifname = None if self.state().backbone == "openvpn-p2p" else BACKBONE_IF
        for server in plan.servers:
            urls = [by_name[b.name].url_for(server.name, passwords[server.name])
                    for b in plan.broker_order(server)]  # fmt: skip
            write_agent(self.paths, server, ", ".join(urls), self.timings,
                        metrics_listen=metrics_listen(server), mgmt_interface=ifname,
                        extra=agent_lines(plan))  # fmt: skip
            self.start_agent(server.name)

    def wait_converged(self, timeout: float) -> list[str]:
        """Poll until every agent agrees with where the clients are (empty: converged)."""
        state = self.state()
        plan = self.plan(state)
        return observe.wait_until(
            lambda: observe.convergence_problems(plan, self.state(), self.paths.control_socket),
            max(1.0, timeout),
        )

    # --- agents, broker, clients ------------------------------------------------------

    def agent_pid(self, server: str) -> int | None:
        pid = self.state().pids.get(f"{server}.agent")
        return pid if procs.alive(pid, str(self.paths.agent_conf(server))) else None

    def start_agent(self, server: str) -> int:
        plan = self.plan()
        node = plan.server(server)
        if self.agent_pid(server) is not None:
            raise LabError(f"agent {server} is already running (pid {self.agent_pid(server)})")
        argv = [*agent_command(), "agent", str(self.paths.agent_conf(server))]
        return self._spawn(node.netns, f"{server}.agent", argv, self.paths.log(server, "agent"))

    def signal_agent(self, server: str, sig: int) -> int:
        """Stop agent ``server`` with ``sig`` (TERM, USR1: no goodbye; KILL)."""
        self.plan().server(server)
        pid = self.agent_pid(server)
        if pid is None:
            raise LabError(f"agent {server} is not running")
        procs.stop(pid, str(self.paths.agent_conf(server)), sig, grace=10.0)
        return pid

    def leave_agent(self, server: str, timeout: float = 10.0) -> int:
        """``meshroute leave`` for agent ``server``: goodbye (peers withdraw at once)."""
        from meshroute.control import ControlError, request

        pid = self.agent_pid(server)
        if pid is None:
            raise LabError(f"agent {server} is not running")
        try:
            request(self.paths.control_socket(server), "leave")
        except ControlError as exc:
            raise LabError(f"agent {server}: {exc}") from None
        _wait(lambda: self.agent_pid(server) is None, timeout, f"agent {server} to leave")
        return pid

    def broker_nodes(self, name: str | None) -> list[tuple[str, RabbitNode]]:
        """(name, node) of broker ``name``, or of every broker when ``name`` is None."""
        plan = self.plan()
        chosen = plan.brokers if name is None else (plan.broker_node(name),)
        return [(b.name, self._node(plan, b)) for b in chosen]

    def broker_stop(self, name: str | None = None) -> None:
        """Stop the broker application (a single broker) or the node (a cluster's).

        Stopping a single broker's application keeps its data and users; a cluster
        node is stopped as ``systemctl stop`` would, and its peers carry on.
        """
        clustered = self.plan().clustered
        for _, node in self.broker_nodes(name):
            node.stop(30.0) if clustered else node.stop_app()

    def broker_kill(self, name: str | None = None) -> None:
        """SIGKILL the node(s): no goodbye to clients or cluster peers."""
        for _, node in self.broker_nodes(name):
            node.kill()

    def broker_start(self, name: str | None = None) -> None:
        nodes = [node for _, node in self.broker_nodes(name)]
        # A cluster node waits at boot for its peers: start them all at once.
        threads = [threading.Thread(target=_start_node, args=(n,)) for n in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        down = [n.node for n in nodes if not n.is_running()]
        if down:
            raise LabError(
                f"broker node(s) {', '.join(down)} did not start; see {self.paths.broker}"
            )

    def move(self, client: str, server: str, wait: float | None = 30.0) -> float:
        """Restart ``client``'s OpenVPN with ``server`` first in its list.

        The old process gets SIGKILL: no exit notification, so its old server keeps
        a stale session (until ping-restart) — the hard case for meshroute. Returns
        the seconds until every agent routes the client to ``server`` (0 if not waited).
        """
        plan = self.plan()
        plan.server(server)
        conf = str(self.paths.openvpn_conf(client))
        started = time.monotonic()
        procs.stop(self.state().pids.get(f"{client}.openvpn"), conf, signal.SIGKILL)
        self._start_client(plan, client, server, self.pki(plan))
        if wait is None:
            return 0.0
        problems = self.wait_converged(wait)
        if problems:
            raise LabError(f"{client} on {server}: not converged:\n  " + "\n  ".join(problems[:10]))
        return time.monotonic() - started

    # --- down -------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything this prefix made; return what was removed. Idempotent."""
        removed: list[str] = []
        if self.store.exists():
            # The broker's clean stop (~1.5 s) overlaps the clients' exit notifications.
            plan = self.plan()
            with ThreadPoolExecutor(max_workers=len(plan.brokers)) as pool:
                stopping = []
                if self.paths.broker.exists():
                    stopping = [pool.submit(node.stop, 15.0) for node in self.brokers(plan)]
                removed += self._stop_recorded()
                for stop in stopping:
                    stop.result()
                if stopping:
                    removed.append("broker" if len(stopping) == 1 else f"{len(stopping)} brokers")
        for ns in [ns for ns in netns.list_netns() if owns_namespace(self.prefix, ns)]:
            procs.stop_many(netns.netns_pids(ns))
            netns.delete_netns(ns)
            removed.append(f"netns {ns}")
        if self.paths.root.exists():
            shutil.rmtree(self.paths.root)
            removed.append(str(self.paths.root))
        parent = self.paths.root.parent
        if parent.exists() and not any(parent.iterdir()):
            parent.rmdir()
        return removed

    def _stop_recorded(self) -> list[str]:
        state = self.store.load()
        mine = []
        for role, pid in state.pids.items():
            node, program = role.split(".", 1)
            marker = backbones.marker(self.paths.root, node, program) or (
                self.paths.agent_conf(node) if program == "agent"
                else self.paths.openvpn_conf(node))  # fmt: skip
            if procs.alive(pid, str(marker)):
                mine.append((role, pid))
        # The OpenVPN backbone last: agents close their broker connection over it.
        last = [pid for role, pid in mine if backbones.marker(self.paths.root, *role.split(".", 1))]
        procs.stop_many([pid for _, pid in mine if pid not in last])
        procs.stop_many(last)
        return [f"{role} (pid {pid})" for role, pid in mine]


def metrics_listen(server: ServerPlan) -> str:
    """Where agent ``server`` serves its metrics (its backbone address)."""
    return f"{server.backbone}:{METRICS_PORT}"


def _start_node(node: RabbitNode) -> None:
    try:
        if node.is_running():
            node.start_app()
        else:
            node.start(90.0)
    except Exception as exc:  # reported by the caller, which checks every node
        log.warning("%s: %s", node.node, exc)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
