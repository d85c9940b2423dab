"""``meshroute lab status``: where everything is and what every agent has learned.

Built from the plan, ``lab.json``, live pids and each agent's control socket; the
JSON form is for scripts and tests (add fields, never rename them), the text form
for people. Read-only.
"""

from __future__ import annotations

from typing import Any

from meshroute.control import TABLE_COLUMNS, format_rows
from meshroute.lab import procs
from meshroute.lab.lab import UI_USER, Lab, metrics_listen
from meshroute.lab.observe import ask
from meshroute.lab.topology import MANAGEMENT_PORT


def lab_status(lab: Lab) -> dict[str, Any]:
    state = lab.state()
    plan = lab.plan(state)
    paths = lab.paths
    broker = lab.broker(plan)
    nodes = [
        {
            "name": b.name,
            "netns": b.netns,
            "address": f"{b.address}:{state.broker_port}",
            "running": node.is_running(),
            "management_ui": f"http://{b.address}:{MANAGEMENT_PORT}/",
            "log_dir": str(node.base_dir / "log"),
        }
        for b, node in zip(plan.brokers, lab.brokers(plan), strict=True)
    ]
    servers = []
    for s in plan.servers:
        openvpn_pid = state.pids.get(f"{s.name}.openvpn")
        sock = paths.control_socket(s.name)
        health, table = ask(sock, "health"), ask(sock, "table")
        servers.append(
            {
                "name": s.name,
                "netns": s.netns,
                "underlay": str(s.underlay),
                "backbone": str(s.backbone),
                "backbone6": str(s.backbone6),
                "tun": str(s.tun),
                "tun6": str(s.tun6),
                "pool": f"{s.pool.pool_start}-{s.pool.pool_end}",
                "openvpn_pid": openvpn_pid,
                "openvpn_running": procs.alive(openvpn_pid, str(paths.openvpn_conf(s.name))),
                "agent_pid": lab.agent_pid(s.name),
                "agent_running": lab.agent_pid(s.name) is not None,
                "agent_config": str(paths.agent_conf(s.name)),
                "control_socket": str(sock),
                "openvpn_log": str(paths.log(s.name, "openvpn")),
                "agent_log": str(paths.log(s.name, "agent")),
                "metrics_url": f"http://{metrics_listen(s)}/metrics",
                "health": health if isinstance(health, dict) else {"error": health},
                "table": table["claims"] if isinstance(table, dict) else None,
            }
        )
    owners = _owners(servers)
    clients = []
    for c in plan.clients:
        pid = state.pids.get(f"{c.name}.openvpn")
        clients.append(
            {
                "name": c.name,
                "netns": c.netns,
                "server": state.client_server.get(c.name),
                "routed_to": owners.get(str(c.address)),
                "address": str(c.address),
                "address6": str(c.address6),
                "underlay": str(c.underlay),
                "openvpn_pid": pid,
                "openvpn_running": procs.alive(pid, str(paths.openvpn_conf(c.name))),
                "openvpn_log": str(paths.log(c.name, "openvpn")),
            }
        )
    return {
        "prefix": lab.prefix,
        "backbone": state.backbone,
        "phase": state.phase,
        "dir": str(paths.root),
        "logs": str(paths.logs),
        "broker": {
            "netns": plan.broker_ns,
            "address": f"{plan.broker}:{state.broker_port}",
            "address6": str(plan.broker6),
            "running": broker.is_running(),
            "url": f"amqp://<server>:***@{plan.broker}:{state.broker_port}/%2F",
            "log_dir": str(paths.broker / "log"),
            "management_ui": f"http://{plan.broker}:{MANAGEMENT_PORT}/",
            "management_user": UI_USER,
            "management_password_file": str(lab.admin_password_file),
            "nodes": nodes,
        },
        "servers": servers,
        "clients": clients,
    }


def _owners(servers: list[dict[str, Any]]) -> dict[str, str]:
    """address -> owner, as the majority of answering agents see it."""
    votes: dict[str, dict[str, int]] = {}
    for server in servers:
        for row in server["table"] or []:
            count = votes.setdefault(row["address"], {})
            count[row["owner"]] = count.get(row["owner"], 0) + 1
    return {addr: max(count, key=lambda o: count[o]) for addr, count in votes.items()}


def render_status(status: dict[str, Any]) -> str:
    b = status["broker"]
    lines = [
        f"lab {status['prefix']} ({status['phase']}): {status['dir']}",
        f"logs: {status['logs']}",
        *_broker_lines(b),
        "",
        "servers:",
    ]
    for s in status["servers"]:
        health = s["health"]
        agent = "ok" if health.get("ok") else f"unhealthy {health.get('error', '')}".strip()
        if not s["agent_running"]:
            agent = "down"
        lines.append(
            f"  {s['name']}  netns {s['netns']}  underlay {s['underlay']}  backbone "
            f"{s['backbone']} {s['backbone6']}  tun {s['tun']} {s['tun6']}  pool {s['pool']}"
        )
        lines.append(
            f"      openvpn {'pid ' + str(s['openvpn_pid']) if s['openvpn_running'] else 'DOWN'}"
            f"  agent {'pid ' + str(s['agent_pid']) if s['agent_running'] else ''} {agent}"
            f"  control {s['control_socket']}"
        )
        lines.append(f"      metrics {s['metrics_url']}")
    lines += ["", "clients:"]
    for c in status["clients"]:
        state = "up" if c["openvpn_running"] else "DOWN"
        lines.append(
            f"  {c['name']}  {c['address']:<15} {c['address6']:<16} server {c['server']}"
            f"  routed to {c['routed_to'] or '-'}  openvpn {state}"
        )
    for s in status["servers"]:
        lines += [
            "",
            f"table of agent {s['name']}  (meshroute table --socket {s['control_socket']})",
        ]
        if s["table"] is None:
            lines.append(f"  (no answer: {s['health'].get('error', 'agent down')})")
        else:
            lines += ["  " + row for row in format_rows(s["table"], TABLE_COLUMNS).splitlines()]
    return "\n".join(lines)


def _broker_lines(b: dict[str, Any]) -> list[str]:
    """One line per broker node: address, state, management UI, logs."""
    lines = []
    for node in b["nodes"]:
        lines.append(
            f"broker {node['name']}: {node['address']} in netns {node['netns']} "
            f"({'running' if node['running'] else 'NOT running'}), "
            f"UI {node['management_ui']}, log dir {node['log_dir']}"
        )
    lines.append(f"management UI user {b['management_user']}, password in "
                 f"{b['management_password_file']}")  # fmt: skip
    return lines


def render_where(status: dict[str, Any]) -> str:
    """What ``lab up`` prints: where everything is and what to try next."""
    p, b = status["prefix"], status["broker"]
    flag = "" if p == "mr" else f" --prefix {p}"
    lines = [
        f"lab {p}: {len(status['servers'])} servers, {len(status['clients'])} clients, "
        f"backbone {status.get('backbone', 'bridge')}",
        f"  directory  {status['dir']}   (state in lab.json)",
        f"  logs       {status['logs']}",
        f"  broker     {b['url']} in netns {b['netns']} (per-agent users)",
        *(f"  UI         {n['management_ui']} ({n['name']})" for n in b["nodes"]),
    ]
    for s in status["servers"]:
        lines.append(
            f"  {s['name']}  netns {s['netns']}  backbone {s['backbone']}  tun {s['tun']}"
            f"  pool {s['pool']}  control {s['control_socket']}"
        )
    for c in status["clients"]:
        lines.append(
            f"  {c['name']}  netns {c['netns']}  {c['address']} {c['address6']}  on {c['server']}"
        )
    first = status["servers"][0]
    lines += [
        "try:",
        f"  meshroute lab ping{flag}",
        f"  meshroute lab status{flag}",
        f"  meshroute table --socket {first['control_socket']}",
        f"  meshroute lab exec{flag} {first['name']} -- ip route show proto 201",
        f"  meshroute lab down{flag}",
    ]
    return "\n".join(lines)
