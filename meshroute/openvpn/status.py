"""Parse OpenVPN ``status 2`` / ``status 3`` output into client sessions (pure).

The client list is read by HEADER names, never by column positions, because the
columns changed between releases (from OpenVPN's ``multi.c``):

- 2.3: Common Name, Real Address, Virtual Address, Bytes Received, Bytes Sent,
  Connected Since, Connected Since (time_t), Username
- 2.4: adds Virtual IPv6 Address (after Virtual Address), Client ID, Peer ID
- 2.5, 2.6: add Data Channel Cipher (2.6 also adds ``GLOBAL_STATS dco_enabled``)

``status 3`` separates fields with tabs, ``status 2`` with commas (a comma inside a
common name breaks ``status 2``: prefer 3).

Invariants:

- Only "Common Name", "Real Address", "Virtual Address" and "Connected Since
  (time_t)" are required columns; the rest are used when present.
- A common name longer than the bus allows (``meshroute.core.codec.MAX_COMMON_NAME``) or
  with control characters is a problem of its row, not a session: one bad name must
  never reach a snapshot, where every peer would refuse the whole snapshot.
- A row that is still authenticating (common name ``UNDEF``, or no virtual address
  yet) is skipped and counted, not reported as a problem.
- One malformed row never loses the others: it becomes a :class:`ParseError` in
  ``StatusReport.problems`` and parsing goes on.
- ``ROUTING_TABLE`` rows give ``Last Ref (time_t)`` per virtual address (the
  server's clock time of the last packet from the client: skew-free evidence of
  which session is live); read by header name too, optional, and a bad row there is
  a problem like any other. Rows of other tables are ignored.
- A ``ROUTING_TABLE`` row whose virtual address is a subnet (``192.168.50.0/24``,
  from the client's ``iroute``) is a subnet behind that client
  (``StatusReport.subnets``); :func:`routed_subnets` pairs it with its client's
  session by common name and real address (a row without one is skipped: the
  client is gone or still authenticating).
- Output that is not a whole status document (no CLIENT_LIST header, no ``END``:
  for example a truncated read) raises :class:`ParseError`: the poll result is the
  reconciling truth, and a partial list would wrongly retract live clients.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from meshroute.core.model import MAX_COMMON_NAME, Network, route_key

COMMON_NAME = "Common Name"
REAL_ADDRESS = "Real Address"
VIRTUAL_ADDRESS = "Virtual Address"
VIRTUAL_ADDRESS6 = "Virtual IPv6 Address"
CONNECTED_SINCE = "Connected Since (time_t)"
CLIENT_ID = "Client ID"
LAST_REF = "Last Ref (time_t)"
REQUIRED_COLUMNS = (COMMON_NAME, REAL_ADDRESS, VIRTUAL_ADDRESS, CONNECTED_SINCE)
PENDING_COMMON_NAME = "UNDEF"
_TAGS = ("TITLE", "TIME", "HEADER", "CLIENT_LIST")


class ParseError(ValueError):
    """What is wrong, and on which line (1-based; 0 = the document as a whole)."""

    def __init__(self, line_number: int, message: str, line: str = "") -> None:
        where = f"line {line_number}: " if line_number else ""
        super().__init__(f"{where}{message}")
        self.line_number = line_number
        self.message = message
        self.line = line


@dataclass(frozen=True)
class ClientSession:
    """One connected, authenticated client as the server's status lists it."""

    common_name: str
    real_address: str
    virtual_address: ipaddress.IPv4Address | None
    virtual_address6: ipaddress.IPv6Address | None
    connected_since: int
    client_id: int | None


@dataclass(frozen=True)
class StatusReport:
    """The parsed document: good sessions, per-row problems and the header lines."""

    sessions: tuple[ClientSession, ...]
    problems: tuple[ParseError, ...] = ()
    pending: int = 0
    title: str | None = None
    time: int | None = None
    columns: tuple[str, ...] = field(default=(), repr=False)
    last_ref: dict[str, int] = field(default_factory=dict)  # virtual address -> time_t
    # iroute subnets: (subnet, common name, real address)
    subnets: tuple[tuple[Network, str, str], ...] = ()


def routed_subnets(report: StatusReport) -> list[tuple[Network, ClientSession, int | None]]:
    """Each iroute subnet with its client's session and its ``Last Ref`` (if known)."""
    by_client = {(s.common_name, s.real_address): s for s in report.sessions}
    found = []
    for subnet, common_name, real in report.subnets:
        session = by_client.get((common_name, real))
        if session is not None:
            found.append((subnet, session, report.last_ref.get(str(subnet))))
    return found


def parse_status(text: str) -> StatusReport:
    """Parse a whole ``status 2``/``status 3`` document; see the module invariants."""
    lines = text.splitlines()
    sep = _separator(lines)
    header: _Header | None = None
    sessions: list[ClientSession] = []
    problems: list[ParseError] = []
    pending = 0
    title: str | None = None
    stamp: int | None = None
    routes: dict[str, int] | None = None  # ROUTING_TABLE column -> index
    last_ref: dict[str, int] = {}
    subnets: list[tuple[Network, str, str]] = []
    for number, line in enumerate(lines, start=1):
        fields = line.split(sep)
        tag = fields[0]
        if tag == "END" and len(fields) == 1:
            if header is None:
                raise ParseError(0, "no 'HEADER CLIENT_LIST' line before END")
            return StatusReport(
                tuple(sessions), tuple(problems), pending, title, stamp, header.columns,
                last_ref, tuple(subnets),
            )  # fmt: skip
        if tag == "TITLE":
            title = sep.join(fields[1:])
        elif tag == "TIME":
            stamp = _time_line(fields, number, line, problems)
        elif tag == "HEADER" and fields[1:2] == ["CLIENT_LIST"]:
            header = _Header.parse(fields[2:], number, line)
        elif tag == "CLIENT_LIST":
            if header is None:
                raise ParseError(number, "CLIENT_LIST row before its HEADER line", line)
            try:
                session = header.session(fields[1:], number, line)
            except ParseError as exc:
                problems.append(exc)
                continue
            if session is None:
                pending += 1
            else:
                sessions.append(session)
        elif tag == "HEADER" and fields[1:2] == ["ROUTING_TABLE"]:
            routes = {name: i for i, name in enumerate(fields[2:])}
        elif tag == "ROUTING_TABLE" and routes is not None:
            _routing_row(fields[1:], routes, number, line, last_ref, problems)
            _subnet_row(fields[1:], routes, number, line, subnets, problems)
        # Other records (GLOBAL_STATS, future ones) are not ours.
    raise ParseError(0, "truncated status: no END line")


def _routing_row(
    values: list[str],
    columns: dict[str, int],
    number: int,
    line: str,
    last_ref: dict[str, int],
    problems: list[ParseError],
) -> None:
    """One ROUTING_TABLE row: remember ``Last Ref (time_t)`` for its virtual address."""
    where, when = columns.get(VIRTUAL_ADDRESS), columns.get(LAST_REF)
    if where is None or when is None:
        return  # an older format without the column: no evidence, nothing wrong
    if len(values) != len(columns):
        problems.append(ParseError(number, "ROUTING_TABLE row does not match its header", line))
        return
    try:
        last_ref[values[where]] = _int(values[when], LAST_REF, number, line)
    except ParseError as exc:
        problems.append(exc)


def _subnet_row(
    values: list[str],
    columns: dict[str, int],
    number: int,
    line: str,
    subnets: list[tuple[Network, str, str]],
    problems: list[ParseError],
) -> None:
    """One ROUTING_TABLE row for an iroute subnet (its virtual address has a /LEN)."""
    where = columns.get(VIRTUAL_ADDRESS)
    name, real = columns.get(COMMON_NAME), columns.get(REAL_ADDRESS)
    if where is None or name is None or real is None or len(values) != len(columns):
        return  # a mismatched row is already a problem (_routing_row)
    text = values[where]
    if "/" not in text:
        return
    try:
        key = route_key(ipaddress.ip_network(text, strict=True))
    except ValueError:
        problems.append(ParseError(number, f"{VIRTUAL_ADDRESS} {text!r} is not a subnet", line))
        return
    if isinstance(key, ipaddress.IPv4Network | ipaddress.IPv6Network):
        subnets.append((key, values[name], values[real]))


def _separator(lines: list[str]) -> str:
    """Tab for ``status 3``, comma for ``status 2``: the character after the first tag."""
    for line in lines:
        if line.startswith("OpenVPN CLIENT LIST"):
            raise ParseError(0, "status version 1 output; ask for 'status 3'")
        for tag in _TAGS:
            if line.startswith(tag) and line[len(tag) : len(tag) + 1] in ("\t", ","):
                return line[len(tag)]
    raise ParseError(0, "not OpenVPN status 2/3 output (no TITLE/TIME/HEADER line)")


def _time_line(fields: list[str], number: int, line: str, problems: list[ParseError]) -> int | None:
    # TIME <ascii time> <time_t>; the ascii form is local time, only time_t is usable.
    if len(fields) >= 3 and fields[-1].isdigit():
        return int(fields[-1])
    problems.append(ParseError(number, "TIME line without a time_t field", line))
    return None


@dataclass(frozen=True)
class _Header:
    columns: tuple[str, ...]
    index: dict[str, int]
    line_number: int

    @classmethod
    def parse(cls, columns: list[str], number: int, line: str) -> _Header:
        index = {name: i for i, name in enumerate(columns)}
        missing = [name for name in REQUIRED_COLUMNS if name not in index]
        if missing:
            raise ParseError(number, f"CLIENT_LIST header lacks {', '.join(missing)}", line)
        return cls(tuple(columns), index, number)

    def session(self, values: list[str], number: int, line: str) -> ClientSession | None:
        if len(values) != len(self.columns):
            raise ParseError(
                number,
                f"CLIENT_LIST row has {len(values)} fields, the header on line "
                f"{self.line_number} has {len(self.columns)}",
                line,
            )
        row = dict(zip(self.columns, values, strict=True))
        common_name = row[COMMON_NAME]
        v4_text, v6_text = row[VIRTUAL_ADDRESS], row.get(VIRTUAL_ADDRESS6, "")
        if common_name in ("", PENDING_COMMON_NAME) or not (v4_text or v6_text):
            return None
        if len(common_name) > MAX_COMMON_NAME or not common_name.isprintable():
            raise ParseError(
                number,
                f"{COMMON_NAME} {common_name[:40]!r}: at most {MAX_COMMON_NAME} printable "
                "characters (the limit of the bus)",
                line,
            )
        return ClientSession(
            common_name=common_name,
            real_address=row[REAL_ADDRESS],
            virtual_address=_ip(v4_text, ipaddress.IPv4Address, VIRTUAL_ADDRESS, number, line),
            virtual_address6=_ip(v6_text, ipaddress.IPv6Address, VIRTUAL_ADDRESS6, number, line),
            connected_since=_int(row[CONNECTED_SINCE], CONNECTED_SINCE, number, line),
            client_id=_int(row[CLIENT_ID], CLIENT_ID, number, line) if row.get(CLIENT_ID) else None,
        )


def _ip(text: str, kind: type, column: str, number: int, line: str) -> Any:
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise ParseError(number, f"{column} {text!r} is not an {kind.__name__}", line) from None


def _int(text: str, column: str, number: int, line: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ParseError(number, f"{column} {text!r} is not a non-negative integer", line)
    return int(text)
