"""Status parser against fixtures in the shapes OpenVPN 2.3-2.6 print (one real capture)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from meshroute.openvpn.status import ClientSession, ParseError, parse_status

FIXTURES = Path(__file__).parent.parent / "fixtures" / "status"


def load(name: str) -> str:
    return (FIXTURES / name).read_text()


def by_name(sessions: tuple[ClientSession, ...]) -> dict[str, ClientSession]:
    return {s.common_name: s for s in sessions}


def test_real_capture_from_openvpn_2_6() -> None:
    report = parse_status(load("real-2.6.14-status3.txt"))
    assert report.problems == ()
    assert report.sessions == (
        ClientSession(
            common_name="cli1",
            real_address="198.51.100.2:58528",
            virtual_address=IPv4Address("10.100.100.95"),
            virtual_address6=IPv6Address("fd00:100::5f"),
            connected_since=1795696544,
            client_id=0,
        ),
    )
    assert report.time == 1795696544
    assert report.title is not None and report.title.startswith("OpenVPN 2.6.14")
    assert "Data Channel Cipher" in report.columns


def test_2_3_status2_without_ipv6_and_client_id_columns() -> None:
    report = parse_status(load("v2.3-status2.txt"))
    sessions = by_name(report.sessions)
    assert set(sessions) == {"alice", "bob"}
    assert sessions["alice"].virtual_address == IPv4Address("10.100.100.20")
    assert sessions["alice"].virtual_address6 is None
    assert sessions["alice"].client_id is None
    assert sessions["bob"].connected_since == 1795690800


def test_2_4_status3_crlf_skips_the_client_still_authenticating() -> None:
    report = parse_status(load("v2.4-status3.txt"))
    sessions = by_name(report.sessions)
    assert set(sessions) == {"alice", "carol"}
    assert report.pending == 1
    assert sessions["alice"].virtual_address6 == IPv6Address("fd00:100::14")
    assert sessions["alice"].client_id == 7
    assert sessions["carol"].virtual_address6 is None
    assert sessions["carol"].real_address == "[AF_INET6]2001:db8::5:40001"


def test_2_5_status2_with_cipher_column() -> None:
    report = parse_status(load("v2.5-status2.txt"))
    assert [s.common_name for s in report.sessions] == ["alice", "bob"]
    assert [s.client_id for s in report.sessions] == [0, 1]
    assert report.problems == ()


def test_2_6_status3_ipv6_only_client_is_kept_pending_rows_are_not() -> None:
    report = parse_status(load("v2.6-status3.txt"))
    sessions = by_name(report.sessions)
    assert set(sessions) == {"alice", "bob", "dave-v6only"}
    assert sessions["dave-v6only"].virtual_address is None
    assert sessions["dave-v6only"].virtual_address6 == IPv6Address("fd00:100::16")
    assert report.pending == 2  # UNDEF, and erin who has no address yet
    assert report.problems == ()


def test_malformed_rows_are_reported_and_good_rows_kept() -> None:
    report = parse_status(load("malformed-rows-status3.txt"))
    assert [s.common_name for s in report.sessions] == ["alice", "bob"]
    problems = {p.line_number: p.message for p in report.problems}
    assert set(problems) == {5, 6, 7, 9}
    assert "10.100.100.300" in problems[5] and "IPv4Address" in problems[5]
    assert "Connected Since (time_t)" in problems[6] and "yesterday" in problems[6]
    assert "has 3 fields" in problems[7] and "line 3 has 12" in problems[7]
    assert "Virtual IPv6 Address" in problems[9]
    assert str(report.problems[0]).startswith("line 5: ")


def test_columns_are_found_by_name_not_position() -> None:
    text = (
        "TITLE\tfuture\nTIME\tx\t100\n"
        "HEADER\tCLIENT_LIST\tConnected Since (time_t)\tNew Column\tVirtual Address\t"
        "Real Address\tCommon Name\n"
        "CLIENT_LIST\t1700000000\tnew\t10.0.0.9\t192.0.2.1:1194\tzed\nEND\n"
    )
    (session,) = parse_status(text).sessions
    assert session.common_name == "zed"
    assert session.virtual_address == IPv4Address("10.0.0.9")
    assert session.connected_since == 1700000000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (load("v2.6-status3.txt").replace("END", "GLOBAL_STATS\tx\t1"), "truncated"),
        ("TITLE\tx\nTIME\tx\t1\nEND\n", "no 'HEADER CLIENT_LIST'"),
        ("OpenVPN CLIENT LIST\nUpdated,x\nEND\n", "status version 1"),
        ("SUCCESS: pid=42\n", "not OpenVPN status"),
        (
            "TITLE\tx\nHEADER\tCLIENT_LIST\tCommon Name\tReal Address\n",
            r"line 2: .*lacks Virtual Address, Connected Since \(time_t\)",
        ),
        ("TITLE\tx\nCLIENT_LIST\ta\tb\nEND\n", "before its HEADER"),
    ],
)
def test_a_broken_document_raises(text: str, expected: str) -> None:
    with pytest.raises(ParseError, match=expected):
        parse_status(text)


def test_empty_server_has_no_sessions() -> None:
    text = "\n".join(
        line for line in load("real-2.6.14-status3.txt").splitlines() if "cli1" not in line
    )
    report = parse_status(text + "\n")
    assert report.sessions == () and report.problems == () and report.pending == 0


def test_large_status_parses_quickly() -> None:
    import time

    header = load("v2.6-status3.txt").splitlines()[:3]
    rows = [
        f"CLIENT_LIST\tc{i}\t203.0.113.1:{i % 60000}\t10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
        f"\t\t1\t1\t2026-11-26 10:00:00\t1795687200\tUNDEF\t{i}\t{i}\tAES-256-GCM"
        for i in range(20_000)
    ]
    text = "\n".join([*header, *rows, "END"]) + "\n"
    start = time.perf_counter()
    report = parse_status(text)
    elapsed = time.perf_counter() - start
    assert len(report.sessions) == 20_000
    assert elapsed < 3.0, f"20,000 rows took {elapsed:.2f}s"  # ~0.2 s on an idle box


def test_last_ref_per_virtual_address_from_the_routing_table() -> None:
    """Issue 7: Last Ref is the skew-free evidence of which session is live."""
    report = parse_status(load("real-2.6.14-status3.txt"))
    assert report.last_ref == {"10.100.100.95": 1795696544, "fd00:100::5f": 1795696544}
    v26 = parse_status(load("v2.6-status3.txt"))
    assert v26.last_ref == {"10.100.100.20": 1795694398, "10.100.100.21": 1795694398}


def test_a_bad_last_ref_is_a_problem_and_loses_nothing_else() -> None:
    text = load("real-2.6.14-status3.txt").replace(
        "fd00:100::5f\tcli1\t198.51.100.2:58528\t2026-11-26 12:35:44\t1795696544",
        "fd00:100::5f\tcli1\t198.51.100.2:58528\t2026-11-26 12:35:44\tsoon",
    )
    report = parse_status(text)
    assert report.last_ref == {"10.100.100.95": 1795696544}
    assert len(report.sessions) == 1
    assert [p.line_number for p in report.problems] == [7]


def test_a_common_name_longer_than_the_bus_allows_is_a_row_problem() -> None:
    """One long name must not reach a snapshot (every peer would refuse it whole)."""
    from meshroute.core.codec import MAX_COMMON_NAME

    head = (
        "HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tConnected Since (time_t)"
    )
    rows = [
        f"CLIENT_LIST\t{'x' * (MAX_COMMON_NAME + 1)}\t1.2.3.4:1\t10.8.0.6\t1700000000",
        f"CLIENT_LIST\t{'y' * MAX_COMMON_NAME}\t1.2.3.5:1\t10.8.0.7\t1700000000",
    ]
    report = parse_status("\n".join(["TITLE\tx", head, *rows, "END"]))
    assert [len(s.common_name) for s in report.sessions] == [MAX_COMMON_NAME]
    [problem] = report.problems
    assert problem.line_number == 3 and f"at most {MAX_COMMON_NAME}" in problem.message
