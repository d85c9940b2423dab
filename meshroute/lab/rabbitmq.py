"""A private RabbitMQ node for tests and the lab: own ports, epmd, data, cookie.

Invariants:

- Everything the node writes lives in ``base_dir`` (data, logs, config, the Erlang
  cookie in ``base_dir/home``); the system's node, ``/etc/rabbitmq`` and
  ``/var/lib/rabbitmq`` are never used. The Debian ``/usr/sbin`` wrappers ``su`` to
  the ``rabbitmq`` user when run as root, so the scripts in
  ``/usr/lib/rabbitmq/bin`` are run directly (they work as root).
- The node gets its own epmd, started here in the foreground on its own
  ``ERL_EPMD_PORT``; the node and rabbitmqctl run with ``-start_epmd false`` so they
  never daemonise a shared one. Everything is stopped by pid only (``rabbitmqctl
  stop``, then the node's pid, then the launcher's process group, which is its own
  session, then epmd; never by name). Pids live in ``base_dir`` (and are checked
  against the process's environment) so another process (``meshroute lab down``)
  can stop a node this one started.
- Users are created with ``import_definitions`` (one ~0.3 s call for many users,
  no password on a command line).
- With ``tls`` the node also has an AMQPS listener on ``tls.port`` (same bind
  address); with ``verify_peer`` it refuses clients without a certificate signed
  by ``tls.ca``. Without ``tls`` the rendered config is exactly the plain one.
- With ``netns``, epmd, the node and every ``rabbitmqctl`` run inside that network
  namespace (its loopback must be up).
- A cluster (:class:`ClusterSpec`): every node runs in a namespace of its own, is
  named ``NAME@BIND`` (Erlang long names, so each node finds the others by
  address), shares the cluster's cookie, and has its epmd listen on its own
  address too. :func:`join_cluster` joins nodes 2..N to node 1. Partitions are
  handled as the spec says (``pause_minority``: a node that sees less than half of
  the cluster stops serving, so its clients reconnect to the majority) and
  detected within about ``net_ticktime`` seconds.

Size (above 300 lines): one private node's whole life (files, epmd, start, stop by
pid, users, TLS, cluster): each invariant above is about the same processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from meshroute.bus.definitions import Permissions, agent_permissions
from meshroute.bus.definitions import password_hash as _password_hash

log = logging.getLogger(__name__)

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


@dataclass(frozen=True)
class NodeTls:
    """An AMQPS listener: its port and the broker's PEM files."""

    port: int
    ca: Path
    """CA that client certificates must be signed by (and sent with the chain)."""
    cert: Path
    key: Path
    verify_peer: bool = True
    """Require a client certificate signed by ``ca`` (else any client may connect)."""


@dataclass(frozen=True)
class ClusterSpec:
    """What every node of one cluster shares."""

    cookie: str
    """The Erlang cookie (every node of the cluster must have the same one)."""
    partition_handling: str = "pause_minority"
    net_ticktime: int = 60
    """Seconds; a silent peer node is declared down after 0.75-1.25 times this."""


def join_cluster(nodes: list[RabbitNode]) -> None:
    """Join ``nodes[1:]`` to ``nodes[0]``'s cluster (all of them started)."""
    for node in nodes[1:]:
        node.join(nodes[0])


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (in this network namespace)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RabbitNode:
    """One private RabbitMQ node. ``start`` boots it (about 5 s), ``stop`` ends it."""

    def __init__(
        self,
        base_dir: Path,
        *,
        node_name: str,
        port: int,
        dist_port: int | None = None,
        epmd_port: int | None = None,
        netns: str | None = None,
        bind: str = "127.0.0.1",
        management_port: int | None = None,
        tls: NodeTls | None = None,
        cluster: ClusterSpec | None = None,
        node_host: str | None = None,
    ) -> None:
        if cluster is not None and netns is None:
            raise ValueError("a cluster node needs a network namespace of its own")
        self.base_dir = Path(base_dir).resolve()
        self.cluster = cluster
        # A cluster node is named after the address its peers reach it at (the
        # cluster network when that is separate from the clients' one).
        self.node_host = node_host or bind
        self.node = f"{node_name}@{self.node_host if cluster else 'localhost'}"
        self.port = port
        # In a namespace of its own the defaults cannot clash with anybody.
        self.dist_port = dist_port or (25672 if netns else free_port())
        self.epmd_port = epmd_port or (4369 if netns else free_port())
        self.netns = netns
        self.bind = bind
        self.management_port = management_port
        self.tls = tls
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Boot the node and wait until it serves AMQP; raise (and clean up) if not."""
        if self.is_running():
            raise RuntimeError(f"{self.node} is already running (pid file in {self.base_dir})")
        self._write_files()
        started = time.monotonic()
        listen = "127.0.0.1" if self.cluster is None else f"127.0.0.1,{self.node_host}"
        self._spawn("epmd", ["epmd", "-port", str(self.epmd_port), "-address", listen])
        self._spawn("launcher", [str(RABBIT_BIN / "rabbitmq-server")])
        try:
            self._await_startup(started + timeout)
        except BaseException:
            self.stop()
            raise
        log.info(
            "%s up on %s:%d in %.1fs", self.node, self.bind, self.port, time.monotonic() - started
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node (rabbitmqctl, then its pid), then its epmd, by pid."""
        if self._pid("server") is not None:
            try:
                self.ctl("stop", timeout=timeout)
            except (subprocess.SubprocessError, OSError) as exc:
                log.info("%s: rabbitmqctl stop failed: %s", self.node, exc)
        self._end("server", timeout, signal.SIGTERM)
        self._end("launcher", 5.0, signal.SIGTERM)  # the shell exits after the node
        self._end("epmd", 0.0, signal.SIGTERM)  # epmd never exits by itself

    def is_running(self) -> bool:
        return self._pid("server") is not None

    def stop_app(self) -> None:
        """Stop the broker inside the node (every connection drops; data stays)."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup")

    def kill(self) -> None:
        """SIGKILL the node (no goodbye to clients or peers; the kernel closes sockets)."""
        self._end("server", 0.0, signal.SIGKILL)
        self._end("launcher", 5.0, signal.SIGTERM)
        self._end("epmd", 0.0, signal.SIGTERM)

    def join(self, seed: RabbitNode) -> None:
        """Join the cluster of ``seed`` (this node's data is reset)."""
        self.ctl("stop_app")
        self.ctl("reset")
        self.ctl("join_cluster", seed.node)
        self.ctl("start_app")
        self.ctl("await_startup")

    def running_nodes(self) -> list[str]:
        """The cluster's running nodes as this node sees them."""
        out = self.ctl("cluster_status", "--formatter", "json")
        return sorted(json.loads(out).get("running_nodes", []))

    # -- users -------------------------------------------------------------------------

    def add_user(
        self,
        name: str,
        password: str,
        configure: str,
        write: str,
        read: str,
        vhost: str = "/",
        tags: tuple[str, ...] = (),
    ) -> None:
        """Create (or update) a user with permissions on ``vhost`` (``tags``: e.g.
        ``administrator`` for the management UI)."""
        self._import_users(
            {name: password}, lambda _: Permissions(configure, write, read), vhost, tags
        )

    def add_agent(self, name: str, password: str, exchange: str = "meshroute") -> str:
        """A user with :func:`agent_permissions`; returns its URL."""
        return self.add_agents({name: password}, exchange)[name]

    def add_agents(
        self, passwords: Mapping[str, str], exchange: str = "meshroute"
    ) -> dict[str, str]:
        """Many agent users in one broker call; returns each one's URL."""
        self._import_users(passwords, lambda name: agent_permissions(name, exchange), "/")
        return {name: self.url_for(name, pw) for name, pw in passwords.items()}

    def _import_users(
        self,
        passwords: Mapping[str, str],
        perms: Callable[[str], Permissions],
        vhost: str,
        tags: tuple[str, ...] = (),
    ) -> None:
        # One import_definitions call instead of two rabbitmqctl calls per user
        # (each costs ~0.3 s), and no password on any command line.
        users, grants = [], []
        for name, password in passwords.items():
            users.append(
                {
                    "name": name,
                    "password_hash": _password_hash(password),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": list(tags),
                }
            )
            p = perms(name)
            grants.append(
                {
                    "user": name,
                    "vhost": vhost,
                    "configure": p.configure,
                    "write": p.write,
                    "read": p.read,
                }
            )
        path = self.base_dir / f"users-{secrets.token_hex(4)}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"users": users, "permissions": grants}, f)
        try:
            self.ctl("import_definitions", str(path))
        finally:
            path.unlink(missing_ok=True)

    def delete_user(self, name: str) -> None:
        self.ctl("delete_user", name)

    def url_for(
        self, user: str, password: str, host: str | None = None, *, tls: bool = False
    ) -> str:
        """An ``amqp://`` URL (``amqps://`` to the TLS listener with ``tls``)."""
        host = host or (self.bind if self.bind not in ("0.0.0.0", "::") else "127.0.0.1")
        if ":" in host:
            host = f"[{host}]"
        if tls and self.tls is None:
            raise ValueError(f"{self.node} has no TLS listener")
        scheme, port = ("amqps", self.tls.port) if tls and self.tls else ("amqp", self.port)
        return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/%2F"

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` against this node; returns stdout."""
        cmd = self._in_netns([str(RABBIT_BIN / "rabbitmqctl"), "-q", "-n", self.node, *args])
        done = subprocess.run(
            cmd, env=self._env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise subprocess.CalledProcessError(
                done.returncode, shlex.join(cmd[:5]), done.stdout, done.stderr
            )
        return done.stdout

    # -- internals -----------------------------------------------------------------------

    def _write_files(self) -> None:
        home = self.base_dir / "home"
        for d in (home, self.base_dir / "mnesia", self.base_dir / "log"):
            d.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self.cluster.cookie if self.cluster else secrets.token_hex(20))
            cookie.chmod(0o400)
        conf = [f"listeners.tcp.1 = {self.bind}:{self.port}", "loopback_users = none"]
        if self.cluster is not None:
            conf += [
                f"cluster_partition_handling = {self.cluster.partition_handling}",
                f"net_ticktime = {self.cluster.net_ticktime}",
            ]
        plugins = []
        if self.management_port is not None:
            conf += [
                f"management.tcp.port = {self.management_port}",
                f"management.tcp.ip = {self.bind}",
            ]
            plugins.append("rabbitmq_management")
        if self.tls is not None:
            conf += self._tls_conf(self.tls)
        (self.base_dir / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        (self.base_dir / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        (self.base_dir / "rabbitmq-env.conf").write_text("")

    def _tls_conf(self, tls: NodeTls) -> list[str]:
        verify = "verify_peer" if tls.verify_peer else "verify_none"
        return [
            f"listeners.ssl.default = {self.bind}:{tls.port}",
            f"ssl_options.cacertfile = {Path(tls.ca).resolve()}",
            f"ssl_options.certfile = {Path(tls.cert).resolve()}",
            f"ssl_options.keyfile = {Path(tls.key).resolve()}",
            f"ssl_options.verify = {verify}",
            # Only meaningful with verify_peer (Erlang's ssl rejects it otherwise).
            f"ssl_options.fail_if_no_peer_cert = {str(tls.verify_peer).lower()}",
        ]

    def _env(self) -> dict[str, str]:
        b = self.base_dir
        return {
            **os.environ,
            "HOME": str(b / "home"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": self.bind,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(b / "mnesia"),
            "RABBITMQ_LOG_BASE": str(b / "log"),
            "RABBITMQ_CONFIG_FILE": str(b / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(b / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(b / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self._pid_file("server")),
            # Never daemonise a shared epmd: without ours, fail instead.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-start_epmd false",
            "RABBITMQ_CTL_ERL_ARGS": "-start_epmd false",
            "RABBITMQ_CONF_ENV_FILE": str(b / "rabbitmq-env.conf"),
            "RABBITMQ_USE_LONGNAME": "true" if self.cluster else "false",
        }

    def _in_netns(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def _spawn(self, role: str, cmd: list[str]) -> None:
        with open(self.base_dir / "log" / f"{role}.out", "ab") as out:
            # Every process we start carries our RABBITMQ_PID_FILE in its environment:
            # that is how _pid() tells our pids from recycled ones.
            proc = subprocess.Popen(
                self._in_netns(cmd),
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs[role] = proc
        self._pid_file(role).write_text(str(proc.pid))

    def _await_startup(self, deadline: float) -> None:
        while True:
            if self._pid("launcher") is None and self._pid("server") is None:
                raise RuntimeError(f"{self.node} exited while booting; see {self.base_dir}/log")
            try:
                self.ctl("await_startup", timeout=max(1.0, deadline - time.monotonic()))
                return
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pass  # not registered with epmd yet, or still booting at the deadline
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.node} did not start; see {self.base_dir}/log")
            time.sleep(0.2)

    def _pid_file(self, role: str) -> Path:
        # The node writes server.pid itself (RABBITMQ_PID_FILE): the beam's own pid,
        # not the launcher shell's that stays its parent.
        return self.base_dir / f"{role}.pid"

    def _pid(self, role: str) -> int | None:
        """The pid of our ``role`` process if it is alive and really ours."""
        proc = self._procs.get(role)
        if proc is not None:  # our child (its environ may predate its exec)
            return proc.pid if proc.poll() is None else None
        try:  # the pid file, trusted only if the process there is ours
            pid = int(self._pid_file(role).read_text())
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        marker = f"\0RABBITMQ_PID_FILE={self._pid_file('server')}\0".encode()
        return pid if state != "Z" and marker in b"\0" + environ else None

    def _end(self, role: str, grace: float, sig: int) -> None:
        """Wait ``grace`` s for ``role``'s pid to exit; then ``sig``, then SIGKILL."""
        pid = self._pid(role)
        for signum in (None, sig, signal.SIGKILL):
            if pid is None:
                break
            if signum is not None:
                log.info("%s: sending signal %d to %s pid %d", self.node, signum, role, pid)
                with contextlib.suppress(ProcessLookupError):
                    if role == "launcher" and os.getpgid(pid) == pid:
                        os.killpg(pid, signum)  # its own session: the node too, if booting
                    else:
                        os.kill(pid, signum)
            deadline = time.monotonic() + (grace if signum is None else 5.0)
            while self._pid(role) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            pid = self._pid(role)
        self._procs.pop(role, None)
        self._pid_file(role).unlink(missing_ok=True)
