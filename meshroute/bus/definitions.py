"""RabbitMQ definitions for a mesh: what ``meshroute broker definitions`` writes.

One JSON document an operator imports into the broker (``rabbitmqctl
import_definitions FILE``, the management UI's "Import definitions", or
``load_definitions`` in rabbitmq.conf) to get, on one vhost: the durable fanout
exchange, one user per agent with least permissions, an optional read-only
"monitoring" user for the management UI, and a policy bounding every agent queue.

Invariants:

- The permissions are :func:`agent_permissions`, the ones the
  lab and the tests grant and docs/protocol.md explains: never written twice.
- No password is ever written into the definitions, only RabbitMQ's salted
  SHA-256 hash (``rabbit_password_hashing_sha256``). Plain passwords live only in
  the operator's password files (read, or created mode 0600 and never overwritten)
  or, without a password directory, are returned once for the caller to print.
- Agent and user names follow the config's rule (a queue-name suffix, a broker user
  and a regex fragment); anything else is refused with the offending name.
- Importing is additive and idempotent: existing users get the new hash and
  permissions, existing vhost/exchange/policy are kept or updated; nothing is
  deleted (queues and bindings are the agents' own: they declare them on connect).

Size (above 300 lines): one document and its rules (names, permissions, password
hashes, the queue policy) that must agree with each other; split, the permissions
would be read in one file and the policy that bounds the same queues in another.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

from meshroute import __version__

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
EXCHANGE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,255}")
VHOST_RE = re.compile(r"[A-Za-z0-9_./:-]{1,255}")

POLICY_NAME = "meshroute-agent-queues"
# A queue whose agent is away keeps filling until x-expires removes it (10 min); its
# messages die after x-message-ttl (30 s) anyway, and a returning agent resyncs with
# a sync-request, so dropping the oldest beyond this cap loses nothing it needs.
# Several snapshots of 65,536 claims (a few MB each) still fit.
QUEUE_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Permissions:
    """RabbitMQ permission regexes (configure, write, read) on one vhost."""

    configure: str
    write: str
    read: str


def agent_permissions(name: str, exchange: str = "meshroute") -> Permissions:
    """Least privilege for agent ``name`` (see docs/protocol.md, "Permissions").

    configure: declare its own queue and the exchange. write: publish to the
    exchange and to the default exchange (direct replies), bind its own queue.
    read: consume its own queue, bind from the exchange.
    """
    queue, exch = f"meshroute\\.{_re(name)}", _re(exchange)
    return Permissions(
        configure=f"^({queue}|{exch})$",
        write=f"^({queue}|{exch}|amq\\.default)$",
        read=f"^({queue}|{exch})$",
    )


def _re(text: str) -> str:
    return "".join("\\" + c if c in ".^$*+?{}[]\\|()" else c for c in text)


def password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + pw))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class DefinitionsError(ValueError):
    """Bad input for the definitions: the message names what and where."""


@dataclass(frozen=True)
class Credential:
    """A user's password and where it came from (for the operator's summary)."""

    user: str
    password: str
    source: str
    """``read FILE``, ``generated into FILE`` or ``generated`` (shown once)."""

    @property
    def shown_once(self) -> bool:
        return self.source == "generated"


def parse_agents(text: str) -> list[str]:
    """``s1,s2 s3`` -> ["s1", "s2", "s3"]; refuses empty lists, bad and repeated names."""
    names = [n for n in re.split(r"[,\s]+", text.strip()) if n]
    if not names:
        raise DefinitionsError("--agents: no agent name given (e.g. --agents vpnsrvA,vpnsrvB)")
    seen: set[str] = set()
    for name in names:
        check_name(name, "--agents")
        if name in seen:
            raise DefinitionsError(f"--agents: {name!r} is listed twice")
        seen.add(name)
    return names


def check_name(name: str, where: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise DefinitionsError(
            f"{where}: invalid name {name!r}: 1-63 of A-Z a-z 0-9 _ . - "
            "starting with a letter or digit"
        )
    return name


def check_exchange(exchange: str) -> str:
    if not EXCHANGE_RE.fullmatch(exchange) or exchange.startswith("amq."):
        raise DefinitionsError(
            f"--exchange: invalid exchange name {exchange!r} "
            "(1-255 of A-Z a-z 0-9 _ . : -, not starting with amq.)"
        )
    return exchange


def check_vhost(vhost: str) -> str:
    if not VHOST_RE.fullmatch(vhost):
        raise DefinitionsError(f"--vhost: invalid vhost {vhost!r} (1-255 of A-Z a-z 0-9 _ . / : -)")
    return vhost


def credentials(
    users: Sequence[str],
    password_dir: Path | None,
    *,
    generate: Callable[[], str] = lambda: secrets.token_urlsafe(24),
) -> list[Credential]:
    """A password per user: read from ``password_dir/USER`` (first line), or generated.

    With ``password_dir``, a missing file is created (mode 0600, never overwritten)
    with a generated password, so a second run reads the same passwords back. Without
    it, every password is generated and must be shown to the operator once.
    """
    if password_dir is not None and not password_dir.is_dir():
        raise DefinitionsError(f"--password-dir: {password_dir} is not a directory")
    return [_credential(user, password_dir, generate) for user in users]


def _credential(user: str, directory: Path | None, generate: Callable[[], str]) -> Credential:
    if directory is None:
        return Credential(user, generate(), "generated")
    path = directory / user
    try:
        password = _first_line(path)
    except FileNotFoundError:
        password = generate()
        _write_new(path, password + "\n")
        return Credential(user, password, f"generated into {path}")
    return Credential(user, password, f"read {path}")


def _first_line(path: Path) -> str:
    """The password on the file's first line; FileNotFoundError passes through."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionsError(f"cannot read password file {path}: {exc}") from exc
    if not lines or not lines[0]:
        raise DefinitionsError(f"password file {path}: the first line (the password) is empty")
    return lines[0]


def _write_new(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise DefinitionsError(f"cannot create password file {path}: {exc}") from exc
    with os.fdopen(fd, "w") as f:
        f.write(text)


def definitions(
    agents: Sequence[Credential],
    *,
    vhost: str = "meshroute",
    exchange: str = "meshroute",
    monitoring: Credential | None = None,
    hash_password: Callable[[str], str] = password_hash,
) -> dict:
    """The importable definitions document (a dict ready for ``json.dump``)."""
    check_vhost(vhost)
    check_exchange(exchange)
    users, grants = [], []
    for cred in agents:
        check_name(cred.user, "agent")
        perms = agent_permissions(cred.user, exchange)
        users.append(_user(cred, [], hash_password))
        grants.append(_grant(cred.user, vhost, perms.configure, perms.write, perms.read))
    if monitoring is not None:
        check_name(monitoring.user, "--monitoring-user")
        if monitoring.user in {c.user for c in agents}:
            raise DefinitionsError(f"--monitoring-user {monitoring.user!r} is also an agent")
        # The "monitoring" tag lets it log in to the management UI and see every
        # connection and queue; with no configure/write permission and read on
        # nothing it cannot consume or change anything in the vhost.
        users.append(_user(monitoring, ["monitoring"], hash_password))
        grants.append(_grant(monitoring.user, vhost, "^$", "^$", "^$"))
    return {
        "meshroute_version": __version__,
        "vhosts": [{"name": vhost}],
        "users": users,
        "permissions": grants,
        "exchanges": [
            {
                "name": exchange,
                "vhost": vhost,
                "type": "fanout",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
        ],
        "policies": [
            {
                "vhost": vhost,
                "name": POLICY_NAME,
                "pattern": r"^meshroute\.",
                "apply-to": "queues",
                "priority": 0,
                "definition": {"max-length-bytes": QUEUE_MAX_BYTES, "overflow": "drop-head"},
            }
        ],
    }


def _user(cred: Credential, tags: list[str], hash_password: Callable[[str], str]) -> dict:
    return {
        "name": cred.user,
        "password_hash": hash_password(cred.password),
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": tags,
    }


def _grant(user: str, vhost: str, configure: str, write: str, read: str) -> dict:
    return {"user": user, "vhost": vhost, "configure": configure, "write": write, "read": read}


def summary(creds: Sequence[Credential], vhost: str) -> list[str]:
    """Lines for the operator: where each password is, and generated ones shown once."""
    lines = []
    for cred in creds:
        if cred.shown_once:
            lines.append(f"{cred.user}\t{cred.password}\t(generated: shown only now)")
        else:
            lines.append(f"{cred.user}\t{cred.source}")
    path = quote(vhost, safe="")
    lines.append(f"each agent's broker_url: amqps://NAME:PASSWORD@BROKER:5671/{path}")
    return lines


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (it holds password hashes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_TRUNC


def definitions_command(
    agents: str,
    *,
    vhost: str,
    exchange: str,
    out: Path | None,
    password_dir: Path | None,
    monitoring_user: str | None,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """``meshroute broker definitions``: 0 written, 2 bad input (message on stderr)."""
    try:
        names = parse_agents(agents)
        check_vhost(vhost)
        check_exchange(exchange)
        if monitoring_user is not None:
            check_name(monitoring_user, "--monitoring-user")
        creds = credentials(names, password_dir)
        monitor = credentials([monitoring_user], password_dir)[0] if monitoring_user else None
        doc = definitions(creds, vhost=vhost, exchange=exchange, monitoring=monitor)
    except DefinitionsError as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    text = json.dumps(doc, indent=2) + "\n"
    if out is None:
        stdout.write(text)
    else:
        try:
            write_private(out, text)
        except OSError as exc:
            print(f"error: cannot write {out}: {exc}", file=stderr)
            return 1
        print(f"definitions for {len(names)} agent(s), vhost {vhost}: {out}", file=stderr)
    for line in summary([*creds, *([monitor] if monitor else [])], vhost):
        print(line, file=stderr)
    return 0
