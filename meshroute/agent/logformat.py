"""The agent's log lines: ``text``, ``journal`` or ``json`` (config key ``log_format``).

- ``text``: ``time LEVEL logger: message`` (a terminal, a file).
- ``journal``: ``<N>logger: message`` where N is the syslog priority (3 error,
  4 warning, 6 info, 7 debug). journald reads the prefix off stderr, so
  ``journalctl -u meshroute-agent -p warning`` shows warnings and errors; it adds the
  time itself. The default when ``$JOURNAL_STREAM`` is set (systemd sets it when
  stderr goes to the journal).
- ``json``: one object per line, ``{"time", "level", "logger", "message"}`` (+
  ``"exception"``), for log shippers.

Invariant: a record always becomes exactly one line (newlines in a message or a
traceback are escaped or JSON-encoded), so one event is one journal entry.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping

FORMATS = ("text", "journal", "json")
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}


def default_format(environ: Mapping[str, str]) -> str:
    return "journal" if environ.get("JOURNAL_STREAM") else "text"


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += " | " + self.formatException(record.exc_info)
        priority = _PRIORITY.get(record.levelno, 7)
        return f"<{priority}>" + text.replace("\n", " | ")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def make_formatter(kind: str) -> logging.Formatter:
    if kind == "journal":
        return JournalFormatter()
    if kind == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class _AgentHandler(logging.StreamHandler):
    """The handler :func:`setup_logging` installs (so a reload can find it)."""


def setup_logging(level: str, kind: str) -> None:
    """Configure the root logger on stderr (replacing any earlier setup)."""
    handler = _AgentHandler(sys.stderr)
    handler.setFormatter(make_formatter(kind))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    _quiet_pika(level)


def reconfigure_logging(level: str, kind: str) -> None:
    """SIGHUP: a new level and format, keeping every handler in place."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in root.handlers:
        if isinstance(handler, _AgentHandler):
            handler.setFormatter(make_formatter(kind))
    _quiet_pika(level)


def _quiet_pika(level: str) -> None:
    # pika logs every failed connection attempt at ERROR; the bus logs the same
    # events once, with the agent's words, so pika speaks only when debugging.
    logging.getLogger("pika").setLevel(logging.DEBUG if level == "debug" else logging.CRITICAL)
