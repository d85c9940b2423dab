"""Session-wide reporting for every tier."""

from __future__ import annotations

from tests.fakes import STRAYS


def pytest_terminal_summary(terminalreporter) -> None:
    """Name any connection a fake OpenVPN accepted that was meant for another fake
    (see FakeManagement.serve): the harness refused it, this says it happened."""
    if STRAYS:
        terminalreporter.section("fake OpenVPN: stray connections")
        for stray in STRAYS:
            terminalreporter.write_line(stray)
