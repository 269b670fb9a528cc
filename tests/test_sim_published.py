"""The simulation reports published in docs/sim/reports/ (docs/simulation.md, "Plots").

The plots and the tables of docs/simulation.md are drawn from these files, some of them hours of
CPU to make again; this checks that each is a complete run whose counters add up (the checks
tests/test_sim.py makes of its 200-node run: support/sim_report.py), and that `sim plot` still
reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.sim_report import check_counters

REPORTS = Path(__file__).resolve().parent.parent / "docs" / "sim" / "reports"
PUBLISHED = sorted(REPORTS.rglob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def test_the_published_reports_are_there() -> None:
    names = {p.relative_to(REPORTS).as_posix() for p in PUBLISHED}
    fleet = {f"nodes-{n}.json" for n in (100, 300, 1000, 3000, 10000)}
    assert fleet <= names, sorted(names)


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.relative_to(REPORTS).as_posix())
def test_a_published_report_is_complete_and_adds_up(path: Path) -> None:
    r = _load(path)
    context = path.name
    assert "stopped_at_s" not in r, context  # a run to its end, not a partial report
    check_counters(r, context)
    assert r["offload"] <= r["offload_ceiling_nat"], context
    if path.name.startswith("nodes-"):
        assert path.name == f"nodes-{r['nodes']}.json", context


def test_sim_plot_draws_the_published_fleet_sizes(tmp_path: Path) -> None:
    # matplotlib is the `sim` extra, which `make test` installs
    from dhtdeb.sim.plots import plot_runs

    reports = [_load(p) for p in sorted(REPORTS.glob("nodes-*.json"))]
    written = plot_runs(reports, tmp_path)
    expected = {"offload-vs-nodes.png", "lookup-cdf.png", "mirror-bytes.png"}
    assert {p.name for p in written} == expected
    assert all(p.stat().st_size > 10_000 for p in written)
