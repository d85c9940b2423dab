"""``meshroute hook``: hand one OpenVPN script call to the local agent, fast.

OpenVPN runs this synchronously for every learn-address, client-connect and
client-disconnect; while it runs the server moves no packets for anyone. So:

- It imports only the stdlib modules below (no click, pika, pyroute2, ipaddress, not
  even :mod:`meshroute.core.model`); ``meshroute.entry`` routes ``hook`` here before click.
- It sends ONE non-blocking ``AF_UNIX``/``SOCK_DGRAM`` datagram (see
  :mod:`meshroute.openvpn.events` for the format) and never waits for an answer.
- It ALWAYS exits 0: when the agent is down, the socket is missing or full, the
  arguments are wrong, or anything else fails. A non-zero exit would make OpenVPN
  reject the address (learn-address add/update) or disconnect the client
  (client-connect); meshroute must never cost a client its connection. A lost event
  is repaired by the agent's next ``status`` poll.

Usage (OpenVPN appends the arguments after OP/CMD itself)::

    meshroute hook [--socket PATH] learn-address OP ADDR [CN]
    meshroute hook [--socket PATH] client-connect [TMPFILE]
    meshroute hook [--socket PATH] client-disconnect

Socket path: ``--socket``, else ``$MESHROUTE_HOOK_SOCKET``, else the default below.

The console script pays for the venv's ``site`` (about 10-15 ms); this file also runs
as a plain script, ``python3 -S .../meshroute/openvpn/hook.py ...``, in about half the
time (see docs/openvpn.md for the numbers).
"""

from __future__ import annotations

# Only builtin or already-loaded modules: ``json`` would pull in re, enum and
# functools, ``socket`` enum and selectors, ``collections.abc`` and ``typing`` more;
# together about 10 ms per hook call when run with -S. ``_socket`` is the C module
# that ``socket`` wraps; the JSON written here is tiny and checked by the receiver.
import _socket
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_HOOK_SOCKET = "/run/meshroute/hook.sock"
SOCKET_ENV = "MESHROUTE_HOOK_SOCKET"
USAGE = (
    "usage: meshroute hook [--socket PATH] learn-address add|update|delete ADDR [CN]\n"
    "       meshroute hook [--socket PATH] client-connect [TMPFILE]\n"
    "       meshroute hook [--socket PATH] client-disconnect\n"
    "(always exits 0 so that OpenVPN never rejects a client because of meshroute)"
)
LEARN_OPS = ("add", "update", "delete")


class UsageError(Exception):
    """Bad arguments; reported on stderr, still exit 0."""


def main(args: list[str], environ: Mapping[str, str]) -> int:
    """Run one hook call. Returns 0, always (see the module docstring for why)."""
    try:
        path, rest = _socket_path(args, environ)
        event = build_event(rest, environ, time.time_ns() // 1_000_000)
    except UsageError as exc:
        _say(f"meshroute hook: {exc}\n{USAGE}")
        return 0
    try:
        send_datagram(path, encode_json(event))
    except OSError as exc:
        _say(f"meshroute hook: agent not reached at {path} ({_reason(exc)}); event dropped")
    except Exception as exc:  # never let a bug reject a client
        _say(f"meshroute hook: internal error, event dropped: {exc!r}")
    return 0


def _socket_path(args: list[str], environ: Mapping[str, str]) -> tuple[str, list[str]]:
    path = environ.get(SOCKET_ENV) or DEFAULT_HOOK_SOCKET
    rest = list(args)
    if rest[:1] == ["--socket"]:
        if len(rest) < 2 or not rest[1]:
            raise UsageError("--socket needs a path")
        path, rest = rest[1], rest[2:]
    elif rest and rest[0].startswith("--socket="):
        path, rest = rest[0].split("=", 1)[1], rest[1:]
        if not path:
            raise UsageError("--socket needs a path")
    return path, rest


def build_event(args: list[str], environ: Mapping[str, str], now_ms: int) -> dict[str, object]:
    """The JSON object for one script call; raises UsageError on bad arguments."""
    if not args:
        raise UsageError("missing event")
    kind, rest = args[0], args[1:]
    if kind == "learn-address":
        return _learn_address(rest, environ, now_ms)
    if kind in ("client-connect", "client-disconnect"):
        # OpenVPN passes client-connect a temp file for dynamic config; meshroute
        # writes none, and extra arguments from newer OpenVPN versions are ignored.
        return _session(kind, environ, now_ms)
    raise UsageError(f"unknown event {kind!r}")


def _learn_address(args: list[str], environ: Mapping[str, str], now_ms: int) -> dict[str, object]:
    if len(args) not in (2, 3) or args[0] not in LEARN_OPS:
        raise UsageError(f"learn-address needs OP ADDR [CN], got {args!r}")
    return {
        "v": 1,
        "event": "learn-address",
        "op": args[0],
        "address": args[1],
        "common_name": args[2] if len(args) == 3 else None,
        "time_unix": environ.get("time_unix") or None,
        "ts_ms": now_ms,
    }


def _session(kind: str, environ: Mapping[str, str], now_ms: int) -> dict[str, object]:
    def env(name: str) -> str | None:
        return environ.get(name) or None

    return {
        "v": 1,
        "event": kind,
        "op": "connect" if kind == "client-connect" else "disconnect",
        "address": env("ifconfig_pool_remote_ip"),
        "address6": env("ifconfig_pool_remote_ip6"),
        "common_name": env("common_name"),
        "time_unix": env("time_unix"),
        "trusted_ip": env("trusted_ip") or env("trusted_ip6"),
        "trusted_port": env("trusted_port"),
        "ts_ms": now_ms,
    }


def encode_json(event: dict[str, object]) -> bytes:
    """A flat object of str/int/None values as compact JSON (RFC 8259 escapes)."""
    parts = []
    for key, value in event.items():
        if value is None:
            text = "null"
        elif isinstance(value, int):
            text = str(value)
        else:
            text = _json_string(str(value))
        parts.append(f'"{key}":{text}')
    return ("{" + ",".join(parts) + "}").encode("utf-8", errors="replace")


def _json_string(value: str) -> str:
    value = value.replace("\\", "\\\\").replace('"', '\\"')
    if any(ch < " " for ch in value):
        value = "".join(ch if ch >= " " else f"\\u{ord(ch):04x}" for ch in value)
    return f'"{value}"'


def send_datagram(path: str, payload: bytes) -> None:
    """Send without ever blocking: a full receiver queue is an error, not a wait."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.sendto(payload, path)
    finally:
        sock.close()


def _reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no socket: agent not running?"
    if isinstance(exc, ConnectionRefusedError):
        return "nobody listening: agent not running?"
    if isinstance(exc, BlockingIOError):
        return "receive queue full: agent stuck?"
    return exc.strerror or type(exc).__name__


def _say(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: nothing left to tell anyone
        pass


if __name__ == "__main__":
    # The fastest form, run as a plain script without site-packages:
    #   python3 -S /path/to/meshroute/openvpn/hook.py [--socket PATH] EVENT ...
    # (this file imports only the stdlib, so it needs no installed package).
    import os

    sys.exit(main(sys.argv[1:], os.environ))
