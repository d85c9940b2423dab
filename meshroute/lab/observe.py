"""Looking at a running lab: agents' views, kernel routes, the ping matrix.

Read-only: nothing here changes the lab. Every look-up goes to the real thing —
agents through their control sockets, each server's kernel through
``ip -n NS -j route show proto N``, the data path through real pings from every
client namespace — so the tests and ``lab status`` see what a user would.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meshroute.control import ControlError, request
from meshroute.lab import sites
from meshroute.lab.state import LabState
from meshroute.lab.topology import ClientPlan, LabPlan

ROUTE_PROTOCOL = 201
Route = tuple[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    ipaddress.IPv4Address | ipaddress.IPv6Address | None,
]


def ask(socket_path: Path, what: str, timeout: float = 3.0) -> dict[str, Any] | str:
    """The agent's answer to ``what``, or the error text when it does not answer."""
    try:
        return request(socket_path, what, timeout=timeout)
    except ControlError as exc:
        return str(exc)


def kernel_routes(netns: str, protocol: int = ROUTE_PROTOCOL) -> set[Route]:
    """(prefix, gateway) of every route with ``protocol`` in ``netns``, both families."""
    found: set[Route] = set()
    for family in ("-4", "-6"):
        argv = ["ip", "-n", netns, "-j", family, "route", "show", "proto", str(protocol)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        for route in json.loads(done.stdout or "[]"):
            gateway = route.get("gateway")
            found.add(
                (
                    ipaddress.ip_network(route["dst"]),
                    ipaddress.ip_address(gateway) if gateway else None,
                )
            )
    return found


def expected_routes(plan: LabPlan, client_server: Mapping[str, str]) -> dict[str, set[Route]]:
    """Per server: a host route via the owner's backbone address for every client
    connected elsewhere; none for its own clients (OpenVPN's subnet route serves them).
    """
    wanted: dict[str, set[Route]] = {s.name: set() for s in plan.servers}
    for name, routes in sites.expected_site_routes(plan, client_server).items():
        wanted[name] |= routes
    for client in plan.clients:
        owner = plan.server(client_server[client.name])
        for server in plan.servers:
            if server.name == owner.name:
                continue
            wanted[server.name].add((ipaddress.ip_network(client.address), owner.backbone))
            wanted[server.name].add((ipaddress.ip_network(client.address6), owner.backbone6))
    return wanted


def route_problems(plan: LabPlan, client_server: Mapping[str, str]) -> list[str]:
    """Differences between every server's kernel and :func:`expected_routes`."""
    problems = []
    for name, wanted in expected_routes(plan, client_server).items():
        actual = kernel_routes(plan.server(name).netns)
        for dst, via in sorted(actual - wanted, key=str):
            problems.append(f"{name}: unexpected route {dst} via {via}")
        for dst, via in sorted(wanted - actual, key=str):
            problems.append(f"{name}: missing route {dst} via {via}")
    return problems


def convergence_problems(
    plan: LabPlan, state: LabState, control_socket: Callable[[str], Path]
) -> list[str]:
    """What keeps the agents from agreeing with where the clients are (empty: none).

    Converged: every agent healthy and synced, and for every client address the
    winner is the client's current server with a session no older than the client's
    current OpenVPN process (a stale session on the same server does not count), and
    the route installed everywhere else.
    """
    problems = []
    for server in plan.servers:
        sock = control_socket(server.name)
        health, table = ask(sock, "health"), ask(sock, "table")
        if isinstance(health, str) or isinstance(table, str):
            why = health if isinstance(health, str) else table
            problems.append(f"{server.name}: agent not answering ({why})")
            continue
        if not (health.get("ok") and health.get("synced")):
            problems.append(f"{server.name}: agent not healthy/synced")
        rows = {row["address"]: row for row in table["claims"]}
        for client in plan.clients:
            owner = state.client_server[client.name]
            since = int(state.client_since.get(client.name, 0))
            for address in (client.address, client.address6):
                row = rows.get(str(address))
                if row is None or row["owner"] != owner or row["connected_since"] < since:
                    seen = "nothing" if row is None else f"owner {row['owner']}"
                    problems.append(
                        f"{server.name}: {client.name} {address}: {seen}, want a session on "
                        f"{owner} since {since}"
                    )
                elif owner != server.name and not row["installed"]:
                    problems.append(f"{server.name}: {client.name} {address}: route not installed")
        problems += sites.site_problems(plan, server.name, rows, state.client_server)
    return problems


def wait_until(check: Callable[[], list[str]], timeout: float, step: float = 0.2) -> list[str]:
    """Poll ``check`` until it reports no problem; the last problems on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        problems = check()
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(step)


@dataclass(frozen=True)
class Ping:
    source: str
    target: str
    family: int
    address: str
    ok: bool
    rtt_ms: float | None


def ping_once(netns: str, address: str, timeout_s: int = 1) -> tuple[bool, float | None]:
    argv = ["ip", "netns", "exec", netns, "ping", "-n", "-c1", f"-W{timeout_s}", address]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return False, None
    for word in done.stdout.split():
        if word.startswith("time="):
            return True, float(word[5:])
    return True, None


def ping_matrix(plan: LabPlan, families: Iterable[int] = (4, 6), workers: int = 24) -> list[Ping]:
    """Every client and site host pings every other one's address (in parallel)."""
    nodes: list[ClientPlan | sites.SitePlan] = [*plan.clients, *sites.site_plans(plan)]
    jobs = [
        (src, dst, family, str(dst.address if family == 4 else dst.address6))
        for family in families
        for src in nodes
        for dst in nodes
        if src.name != dst.name
    ]

    def one(job) -> Ping:
        src, dst, family, address = job
        ok, rtt = ping_once(src.netns, address)
        return Ping(src.name, dst.name, family, address, ok, rtt)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        return list(pool.map(one, jobs))


def render_matrix(plan: LabPlan, results: list[Ping]) -> str:
    """One grid per family: rows are sources, columns targets; ok '.', failure 'X'."""
    names = [c.name for c in plan.clients] + [s.name for s in sites.site_plans(plan)]
    width = max([len(n) for n in names] + [3])
    by_pair = {(p.source, p.target, p.family): p.ok for p in results}
    lines = []
    for family in sorted({p.family for p in results}):
        fails = sum(1 for p in results if p.family == family and not p.ok)
        total = sum(1 for p in results if p.family == family)
        lines.append(f"IPv{family}: {total - fails}/{total} pairs ok")
        lines.append(" " * width + " " + " ".join(n.rjust(width) for n in names))
        for src in names:
            marks = [
                "-" if src == dst else ("." if by_pair.get((src, dst, family)) else "X")
                for dst in names
            ]
            lines.append(src.rjust(width) + " " + " ".join(m.rjust(width) for m in marks))
    for p in results:
        if not p.ok:
            lines.append(f"FAIL {p.source} -> {p.target} ({p.address})")
    return "\n".join(lines)


def pings_as_json(results: list[Ping]) -> list[dict[str, Any]]:
    return [asdict(p) for p in results]
