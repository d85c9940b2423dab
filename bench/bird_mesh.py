"""OpenVPN + BIRD 2, the usual way, in a lab's server namespaces: the peer to beat.

One BIRD 2 per server namespace (Debian's ``bird2``; ``apt-get install bird2``),
iBGP full mesh over the backbone (AS 65000, every server peers with every other on
``bb0``), and the classic wiring:

- OpenVPN's learn-address script (:data:`LEARN_SCRIPT`: ``/bin/sh`` that ``exec``s
  ``ip route replace ADDR/32 dev tun0 table 100``; ``delete`` deletes it) puts the
  client's host route into kernel table 100 (:data:`LEARN_TABLE`);
- BIRD's ``kernel`` protocol ``learned`` (``learn``, table 100, import only, into
  BIRD table ``learn4``: one kernel syncer per BIRD table) picks it up from the
  kernel's route notifications, a pipe hands it to ``master4``, and the BGP sessions
  export it (``source = RTS_INHERIT``: learned from the kernel), ``next hop self``;
- on the other servers BGP imports it (``gateway direct``) and the ``kernel``
  protocol ``installed`` writes it into table 101 (:data:`INSTALL_TABLE`), protocol
  ``bird`` (12): the route a packet would follow.

Nothing here touches the main table, meshroute's protocol 201 or the root namespace.
Every BIRD is started with ``ip netns exec`` (which execs it: the pid is BIRD's),
in the foreground, and stopped by its pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

LEARN_TABLE, INSTALL_TABLE = 100, 101
RTPROT_BIRD = 12
AS_NUMBER = 65000
LEARN_SCRIPT = """#!/bin/sh
# OpenVPN learn-address for BIRD: OP ADDR [CN]; the host route into table {table}.
case "$2" in *:*) len=128 ;; *) len=32 ;; esac
case "$1" in
    add|update) exec ip route replace "$2/$len" dev {dev} table {table} ;;
    delete) exec ip route del "$2/$len" dev {dev} table {table} ;;
esac
exit 0
"""


@dataclass(frozen=True)
class BirdNode:
    name: str
    netns: str
    router_id: str
    peers: tuple[str, ...]


def render_config(node: BirdNode, dev: str) -> str:
    """One server's bird.conf (BIRD 2.0)."""
    neighbors = "".join(
        f"protocol bgp peer{i} from mesh {{ neighbor {peer} as {AS_NUMBER}; }}\n"
        for i, peer in enumerate(node.peers, 1)
    )
    return f"""# OpenVPN + BIRD 2 reference for meshroute's convergence bench: {node.name}
router id {node.router_id};
log stderr all;
protocol device {{ scan time 10; }}
# One kernel syncer per BIRD table: the learned routes get their own, piped on.
ipv4 table learn4;
protocol kernel learned {{
    kernel table {LEARN_TABLE};
    learn;
    scan time 10;
    ipv4 {{ table learn4; import all; export none; }};
}}
protocol pipe learned_to_master {{
    table learn4;
    peer table master4;
    export all;
    import none;
}}
protocol kernel installed {{
    kernel table {INSTALL_TABLE};
    scan time 10;
    ipv4 {{ import none; export where source = RTS_BGP; }};
}}
template bgp mesh {{
    local as {AS_NUMBER};
    direct;
    interface "{dev}";
    connect retry time 1;
    ipv4 {{
        import all;
        export where source = RTS_INHERIT;
        next hop self;
        gateway direct;
    }};
}}
{neighbors}"""


@dataclass
class BirdMesh:
    """BIRD in each node's namespace; files under ``directory``."""

    directory: Path
    nodes: list[BirdNode]
    backbone_dev: str = "bb0"
    tun_dev: str = "tun0"
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def script(self) -> Path:
        return self.directory / "learn-address.sh"

    def control(self, name: str) -> Path:
        return self.directory / f"{name}.ctl"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.script.write_text(LEARN_SCRIPT.format(dev=self.tun_dev, table=LEARN_TABLE))
        self.script.chmod(0o755)
        for node in self.nodes:
            conf = self.directory / f"{node.name}.conf"
            conf.write_text(render_config(node, self.backbone_dev))
            log = (self.directory / f"{node.name}.log").open("wb")
            argv = ["ip", "netns", "exec", node.netns, "bird", "-f", "-c", str(conf),
                    "-s", str(self.control(node.name))]  # fmt: skip
            self.procs[node.name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            log.close()

    def established(self, name: str) -> int:
        """How many of ``name``'s BGP sessions are Established."""
        done = subprocess.run(["birdc", "-s", str(self.control(name)), "show", "protocols"],
                              capture_output=True, text=True, check=False)  # fmt: skip
        return sum("Established" in line for line in done.stdout.splitlines())

    def wait_established(self, timeout: float = 60.0) -> float:
        started = time.monotonic()
        want = len(self.nodes) - 1
        while any(self.established(n.name) < want for n in self.nodes):
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"bird {name} exited: {self.log_tail(name)}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"BGP mesh not established after {timeout:.0f}s")
            time.sleep(0.2)
        return time.monotonic() - started

    def log_tail(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
