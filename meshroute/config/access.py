"""Can the agent's user read what the agent reads? (``meshroute check --as-user``).

The agent runs as an unprivileged user (the unit's ``User=meshroute``) and reads
OpenVPN's management password file and its TLS files after it started. Run as root,
``meshroute check`` would read them whatever their mode; ``--as-user USER`` checks
in a child process that has become USER (its groups included), so a file only root
can read is reported before the agent fails on it.
"""

from __future__ import annotations

import os
import sys

from meshroute.config.schema import Config, ConfigError, load_config

# Files read after start, as the agent's user.
READ_FILES = ("openvpn_mgmt_pass_file", "tls_ca_file", "tls_cert_file", "tls_key_file")


def unreadable(config: Config, user: str) -> tuple[list[str], bool]:
    """(problems, any permission denied) for every file the agent reads."""
    problems, denied = [], False
    for key in READ_FILES:
        path = getattr(config, key)
        if path is None:
            continue
        try:
            with open(path, "rb") as f:
                f.read(1)
        except PermissionError:
            denied = True
            problems.append(f"{key}: {path} is not readable by user {user} (permission denied)")
        except OSError as exc:
            problems.append(f"{key}: cannot read {path}: {exc.strerror or exc}")
    return problems, denied


def current_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def check_as_user(config_path: str, user: str) -> int:
    """0 when USER can read every file; 1 and one line per problem otherwise."""
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        print(f"error: --as-user: no user {user!r}", file=sys.stderr)
        return 2
    if os.geteuid() != 0 and os.geteuid() != entry.pw_uid:
        print("error: --as-user needs root (to become the user)", file=sys.stderr)
        return 2
    pid = os.fork()
    if pid == 0:  # the child becomes the user, checks, and reports by exit status
        code = 1
        try:
            if os.geteuid() == 0:  # else we already are USER (checked above)
                os.initgroups(user, entry.pw_gid)
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)
            code = _check_files(config_path, user)
        except OSError as exc:
            print(f"error: cannot become user {user}: {exc}", file=sys.stderr)
            sys.stderr.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _check_files(config_path: str, user: str) -> int:
    try:
        config = load_config(config_path).config
    except ConfigError as exc:  # the config file itself may be unreadable for the user
        print(f"error: as user {user}: {exc}", file=sys.stderr)
        return 1
    problems, _ = unreadable(config, user)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"ok: user {user} can read the config and every file it names", file=sys.stderr)
    sys.stderr.flush()
    return 1 if problems else 0
