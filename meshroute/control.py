"""The agent's control socket (unix stream): the CLI's window into a running agent.

Protocol: the client sends one JSON line ``{"cmd": "table"|"peers"|"health"|"leave"}``;
the agent answers one JSON line ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": "..."}`` and closes. ``leave`` makes the agent say goodbye
and stop (see :mod:`meshroute.agent.daemon`); the socket's mode (0660, the agent's group)
is what allows it. Queries are answered on the agent's
own thread, so an answer is one consistent moment; a query never blocks the loop
for longer than it takes to build the answer.

Size (above 300 lines): the socket's both ends and their rendering stay together,
because the JSON lines, the commands and the column names are one protocol: a change
to one side is checked against the other in one file. The human rendering (render,
format_rows) is the part to split off first if it grows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/meshroute/meshroute.sock"
COMMANDS = ("table", "peers", "health", "leave")
MAX_REQUEST = 4096


class ControlError(RuntimeError):
    """No usable answer from the agent (not running, wrong socket, bad reply)."""


class ControlServer:
    """Serves queries on ``path`` from a thread; ``answer(cmd)`` builds the result."""

    def __init__(self, path: str | os.PathLike[str], answer: Callable[[str], dict]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_socket():
            self.path.unlink()  # stale, from an agent that died
        handler = _handler_for(answer)
        self._server = socketserver.ThreadingUnixStreamServer(str(self.path), handler)
        self._server.daemon_threads = True
        os.chmod(self.path, 0o660)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="control-socket", daemon=True
        )
        self._thread.start()
        log.info("control socket listening on %s", self.path)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _handler_for(answer: Callable[[str], dict]) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        timeout = 10

        def handle(self) -> None:
            reply: dict[str, Any]
            try:
                request = json.loads(self.rfile.readline(MAX_REQUEST))
                cmd = request.get("cmd") if isinstance(request, dict) else None
                if cmd not in COMMANDS:
                    raise ValueError(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")
                reply = {"ok": True, "result": answer(cmd)}
            except Exception as exc:  # every failure becomes an answer, never a crash
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.wfile.write(json.dumps(reply).encode() + b"\n")

    return Handler


def request(path: str | os.PathLike[str], cmd: str, timeout: float = 10.0) -> dict:
    """Ask the agent on ``path``; raise ControlError naming the socket on any failure."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(os.fspath(path))
            sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(
            f"no agent answers on {path} (is `meshroute agent` running? see --socket)"
        ) from None
    except OSError as exc:
        raise ControlError(f"control socket {path}: {exc}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"control socket {path}: the agent sent no valid answer") from None
    if not reply.get("ok"):
        raise ControlError(f"the agent refused {cmd!r}: {reply.get('error')}")
    return reply["result"]


def resolve_socket(socket_path: str | None, config_path: str | None) -> str:
    if socket_path:
        return socket_path
    if config_path:
        from meshroute.config.schema import load_config

        return str(load_config(config_path).config.control_socket)
    return os.environ.get("MESHROUTE_CONTROL_SOCKET", DEFAULT_SOCKET)


def query_command(
    what: str,
    socket_path: str | None,
    config_path: str | None,
    as_json: bool,
    select: str | None = None,
) -> int:
    """`meshroute table|peers|health`: 0 ok, 1 no agent answered (or nothing matched
    ``select``), 3 agent unhealthy."""
    from meshroute.config.schema import ConfigError

    try:
        result = request(resolve_socket(socket_path, config_path), what)
    except (ControlError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if what == "table" and select is not None:
        result = dict(result, claims=select_claims(result.get("claims", []), select))
        if not result["claims"]:
            print(
                f"error: agent {result.get('agent')} knows no address or client {select!r}",
                file=sys.stderr,
            )
            return 1
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(render(what, result, detail=select is not None))
    if what == "health" and not result.get("ok"):
        return 3
    return 0


def select_claims(rows: list[dict], select: str) -> list[dict]:
    """Rows for one address (exact) or one client (common name, exact)."""
    return [
        row
        for row in rows
        if row.get("address") == select
        or row.get("common_name") == select
        or any(c.get("common_name") == select for c in row.get("all_claims", ()))
    ]


def leave_command(socket_path: str | None, config_path: str | None, wait: float) -> int:
    """`meshroute leave`: goodbye and stop; waits for the agent to be gone."""
    import time

    from meshroute.config.schema import ConfigError

    try:
        path = resolve_socket(socket_path, config_path)
        result = request(path, "leave")
    except (ControlError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + wait
    while Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(path).exists():
        print(f"agent {result.get('agent')}: goodbye asked, still stopping after {wait:g}s")
        return 1
    print(f"agent {result.get('agent')} said goodbye and stopped: peers withdraw its routes")
    return 0


TABLE_COLUMNS = (
    "address",
    "common_name",
    "owner",
    "next_hop",
    "connected_for",
    "local",
    "installed",
)
PEER_COLUMNS = (
    "name",
    "next_hop",
    "next_hop6",
    "epoch",
    "last_seen",
    "claims",
    "clock_offset_ms",
    "state",
)
DURATIONS = {
    "connected_for",
    "last_seen",
    "expires_in",
    "uptime",
    "last_poll_age",
    "last_apply_age",
    "peers_silent_for",
}


def render(what: str, result: dict, detail: bool = False) -> str:
    if what == "table":
        head = f"agent {result['agent']}: {len(result['claims'])} address(es)"
        text = head + "\n" + format_rows(result["claims"], TABLE_COLUMNS)
        if detail:
            text += "\n" + "\n".join(_claimants(row) for row in result["claims"])
        return text
    if what == "peers":
        gone = sum(1 for p in result["peers"] if str(p.get("state", "")).startswith("down"))
        head = f"agent {result['agent']}: {len(result['peers']) - gone} peer(s)"
        if gone:
            head += f", {gone} gone"
        if result.get("frozen"):
            head += " (frozen: broker connection down, nobody expires)"
        return head + "\n" + format_rows(result["peers"], PEER_COLUMNS)
    return render_health(result)


def _claimants(row: dict) -> str:
    lines = [f"\n{row['address']}: {row.get('why', '')}"]
    for c in row.get("all_claims", ()):
        mark = "winner" if c.get("winner") else "      "
        lines.append(
            f"  {mark}  owner {c['owner']}  client {c['common_name']}  "
            f"connected {human_time(c['connected_since'])}  stamp {c['stamp']}"
        )
    return "\n".join(lines)


def render_health(result: dict) -> str:
    verdict = (
        "healthy"
        if result.get("ok")
        else "UNHEALTHY: " + "; ".join(result.get("problems") or ["see below"])
    )
    lines = [f"agent {result.get('agent')}: {verdict}"]
    for key, value in result.items():
        if key in ("agent", "ok", "problems", "counters", "hooks", "schema"):
            continue
        lines.append(f"{key}: {cell(value, key)}")
    for group in ("counters", "hooks"):
        if isinstance(result.get(group), dict):
            lines.append(f"{group}:")
            lines += [f"  {k}: {cell(v, k)}" for k, v in result[group].items()]
    return "\n".join(lines)


def human_duration(seconds: float) -> str:
    """3.2s, 4m05s, 2h03m, 3d04h: short, and exact enough to read."""
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def human_time(unix: float | None) -> str:
    """A unix time as local ISO time to the second."""
    import datetime

    if unix is None:
        return "-"
    return datetime.datetime.fromtimestamp(unix).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def cell(value: Any, key: str = "") -> str:
    """One value for people: None '-', booleans yes/no, durations human, dicts k=v."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in DURATIONS and isinstance(value, int | float):
        return human_duration(value)
    if key in ("connected_since", "last_seen_at") and isinstance(value, int | float):
        return human_time(value)
    if key == "epoch" and isinstance(value, int) and value > 10**12:  # a start time in ms
        return "started " + human_time(value / 1000)
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value) or "none"
    return str(value)


def format_rows(rows: list[dict], columns: tuple[str, ...]) -> str:
    """An aligned text table; None shows as '-', booleans as yes/no, durations human."""
    cells = [[cell(row.get(c), c) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)
