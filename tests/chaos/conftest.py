"""The chaos suite's table: every case's events in, verdicts, lost, duplicated, recovery."""

from __future__ import annotations

from _pytest.terminal import TerminalReporter

from tests.support.chaos import HEADER, TALLIES


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if not TALLIES:
        return
    terminalreporter.section("chaos: what each fault cost")
    terminalreporter.write_line(HEADER)
    for t in TALLIES:
        terminalreporter.write_line(t.row())
