"""Fixtures of `make check-real`: `real_report`, the lines the check prints at the end of the run
(in pytest's terminal summary, so they show whether the check passed or failed)."""

from __future__ import annotations

import pytest

_report: list[str] = []


@pytest.fixture
def real_report() -> list[str]:
    return _report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _report:
        terminalreporter.section("make check-real: report")
        for line in _report:
            terminalreporter.line(line)
