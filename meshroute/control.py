"""The agent's control socket (unix stream): the CLI's window into a running agent.

Protocol: the client sends one JSON line ``{"cmd": "table"|"peers"|"health"}``; the
agent answers one JSON line ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": "..."}`` and closes. Queries are answered on the agent's
own thread, so an answer is one consistent moment; a query never blocks the loop
for longer than it takes to build the answer.
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
COMMANDS = ("table", "peers", "health")
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
        from meshroute.config import load_config

        return str(load_config(config_path).config.control_socket)
    return os.environ.get("MESHROUTE_CONTROL_SOCKET", DEFAULT_SOCKET)


def query_command(
    what: str, socket_path: str | None, config_path: str | None, as_json: bool
) -> int:
    """`meshroute table|peers|health`: 0 ok, 1 no agent answered, 3 agent unhealthy."""
    from meshroute.config import ConfigError

    try:
        result = request(resolve_socket(socket_path, config_path), what)
    except (ControlError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(render(what, result))
    if what == "health" and not result.get("ok"):
        return 3
    return 0


TABLE_COLUMNS = ("address", "common_name", "owner", "next_hop", "connected_for", "local",
                 "installed")  # fmt: skip
PEER_COLUMNS = ("name", "next_hop", "next_hop6", "epoch", "last_seen", "claims", "state")


def render(what: str, result: dict) -> str:
    if what == "table":
        head = f"agent {result['agent']}: {len(result['claims'])} address(es)"
        return head + "\n" + format_rows(result["claims"], TABLE_COLUMNS)
    if what == "peers":
        head = f"agent {result['agent']}: {len(result['peers'])} peer(s)"
        if result.get("frozen"):
            head += " (frozen: broker connection down, nobody expires)"
        return head + "\n" + format_rows(result["peers"], PEER_COLUMNS)
    lines = [f"{key}: {value}" for key, value in result.items() if key != "counters"]
    lines += [f"  {key}: {value}" for key, value in result.get("counters", {}).items()]
    return "\n".join(lines)


def format_rows(rows: list[dict], columns: tuple[str, ...]) -> str:
    """An aligned text table; None shows as '-', booleans as yes/no."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)
