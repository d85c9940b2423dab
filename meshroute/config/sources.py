"""Config sources: the file's ``key = value`` lines, ``MESHROUTE_<KEY>``, overrides.

Each reader turns one source into raw text per key, with where it was set
(``file:line``, ``environment MESHROUTE_<KEY>`` or ``override``); parsing the text is
:mod:`meshroute.config.schema`'s job. The keys are passed in (``keys``) so this module does
not depend on :class:`~meshroute.config.schema.Config`.

Invariants:

- Readers never raise for bad content: every problem is appended to ``problems`` and
  every warning to ``warnings``, each prefixed with where it was found.
- A file key given twice is an error; an unknown key is an error in the file and in
  overrides, a warning in the environment (other tools may share the prefix).
- cube-routed's two-server keys (:data:`LEGACY_KEYS`) load with a warning saying why
  they are ignored, so the article's Listing 4 works unchanged.
- Stdlib only; no module state.
"""

from __future__ import annotations

import difflib
import pathlib
from collections.abc import Mapping, Sequence
from typing import TypeAlias

ENV_PREFIX = "MESHROUTE_"

# cube-routed's two-server keys: accepted (so Listing 4 loads) and answered.
LEGACY_KEYS: Mapping[str, str] = {
    "remote_mgmt_ip": "ignored: meshroute has no fixed remote server; peers are discovered "
    "over the RabbitMQ exchange (see broker_url, exchange)",
    "remote_data_ip": "ignored: next hops are not configured per remote server; each peer "
    "announces its own next_hop (default: the IPv4 address of its mgmt_interface)",
    "cube_routed_port": "ignored: meshroute listens on no port; agents talk through the "
    "broker (see broker_url, exchange)",
}

Raw: TypeAlias = dict[str, tuple[str, str]]  # key -> (text, where it was set)


def read_file(path: str, keys: Sequence[str], problems: list[str], warnings: list[str]) -> Raw:
    """The file's keys, each with its text and ``file:line``."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        problems.append(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}")
        return {}
    found: Raw = {}
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        where = f"{path}:{lineno}"
        if not line or line.startswith("#"):
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        if line.startswith("["):
            problems.append(f"{where}: section headers are not used: write 'key = value' lines")
        elif not sep or not key:
            problems.append(f"{where}: expected 'key = value', got {line!r}")
        elif key in first_line:
            problems.append(f"{where}: {key}: duplicate key (lines {first_line[key]} and {lineno})")
        elif _known(key, keys, where, problems, warnings, unknown_is_error=True):
            found[key] = (value, where)
            first_line[key] = lineno
    return found


def read_env(environ: Mapping[str, str], keys: Sequence[str], warnings: list[str]) -> Raw:
    """The ``MESHROUTE_<KEY>`` variables of ``environ``, as keys."""
    found: Raw = {}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        key = var[len(ENV_PREFIX) :].lower()
        where = f"environment {var}"
        if _known(key, keys, where, [], warnings, unknown_is_error=False):
            found[key] = (environ[var].strip(), where)
    return found


def read_overrides(
    overrides: Mapping[str, str | None], keys: Sequence[str], problems, warnings
) -> Raw:
    """The overrides that are not None (unset CLI flags are passed as None)."""
    found: Raw = {}
    for key, value in overrides.items():
        if value is not None and _known(key, keys, "override", problems, warnings, True):
            found[key] = (str(value).strip(), "override")
    return found


def _known(
    key: str, keys: Sequence[str], where: str, problems, warnings, unknown_is_error: bool
) -> bool:
    """True for a config key; answers cube-routed keys and unknown keys otherwise."""
    if key in keys:
        return True
    if key in LEGACY_KEYS:
        warnings.append(f"{where}: {key}: cube-routed key {LEGACY_KEYS[key]}")
    elif unknown_is_error:
        problems.append(f"{where}: {key}: unknown key{suggest_key(key, keys)}")
    else:
        match = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
        hint = f" (did you mean {ENV_PREFIX}{match[0].upper()}?)" if match else ""
        warnings.append(f"{where}: not a meshroute key, ignored{hint}")
    return False


def suggest_key(word: str, keys: Sequence[str]) -> str:
    """' (did you mean hold_time?)' for a near miss, else ''."""
    match = difflib.get_close_matches(word.lower().replace("-", "_"), keys, n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""
