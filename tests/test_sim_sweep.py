"""`dhtdeb sim sweep` and `dhtdeb sim plot` on a tiny fleet: one report per value, a resumed
sweep keeps the points whose file already holds their run, plots from the reports, and clear
errors (exit 2) for bad values, a file that is not a report, and a missing matplotlib.

The runs are `sim scale`'s with a 300-package archive and 36 virtual seconds of arrivals, so that
the three of them take seconds; their numbers are `tests/test_sim.py`'s concern, not this file's.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from dhtdeb.cli import app
from dhtdeb.sim.report import without_timings

VALUES = (10, 20)
BASE = [
    *("--seed", "1", "--packages", "300", "--hours", "0.01", "--warmup", "30", "--drain", "30"),
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The collector's thresholds before the sweep: neither Python's default nor run_scale's own.
FOUND_THRESHOLDS = (701, 11, 12)
FOUND_LOG_LEVEL = logging.INFO + 1  # of the "dhtdeb" logger before the sweep: neither's own


def _cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _sweep(out: Path, *extra: str) -> Result:
    values = ",".join(str(v) for v in VALUES)
    return _cli(
        "sim", "sweep", "--vary", "nodes", "--values", values, "--out", str(out), *BASE, *extra
    )


@dataclass(frozen=True)
class Swept:
    out: Path
    result: Result
    collector_after: tuple[int, int, int]  # gc thresholds once the sweep ended
    log_level_after: int  # of the "dhtdeb" logger


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swept]:
    logger = logging.getLogger("dhtdeb")
    level = logger.level
    out = tmp_path_factory.mktemp("sweep") / "runs"
    collector = gc.get_threshold()
    gc.set_threshold(*FOUND_THRESHOLDS)
    logger.setLevel(FOUND_LOG_LEVEL)
    try:
        result = _sweep(out)
        after = gc.get_threshold()
        log_level = logger.level
    finally:
        gc.set_threshold(*collector)
        logger.setLevel(level)
    assert result.exit_code == 0, result.output
    yield Swept(out, result, after, log_level)


def test_runs_leave_the_collector_and_the_log_level_as_they_found_them(swept: Swept) -> None:
    # run_scale collects less often and logs errors only during a run (sim/scale.py), not after
    assert swept.collector_after == FOUND_THRESHOLDS
    assert swept.log_level_after == FOUND_LOG_LEVEL


def test_one_report_per_value(swept: Swept) -> None:
    assert sorted(p.name for p in swept.out.iterdir()) == [f"nodes-{n}.json" for n in VALUES]
    for nodes in VALUES:
        report = json.loads((swept.out / f"nodes-{nodes}.json").read_text())
        assert report["nodes"] == nodes and report["seed"] == 1
        assert report["params"]["workload"]["packages"] == 300
        assert report["files_requested"] > 0
    lines = swept.result.stderr.splitlines()
    assert len(lines) == len(VALUES), swept.result.stderr
    for nodes, line in zip(VALUES, lines, strict=True):
        assert f"nodes-{nodes}.json: {nodes} nodes, seed 1" in line and "offload" in line


def test_resumed_sweep_runs_only_points_without_their_run(swept: Swept, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    shutil.copytree(swept.out, out)
    kept, stale = (out / f"nodes-{n}.json" for n in VALUES)
    # a marker that a rewritten file would lose; the parameters stay those of the point
    marked = {**json.loads(kept.read_text()), "marker": "written before"}
    kept.write_text(json.dumps(marked))
    # a file that holds a run of other parameters
    other = json.loads(stale.read_text())
    other["params"]["loss"] = 0.2
    stale.write_text(json.dumps(other))

    result = _sweep(out)

    assert result.exit_code == 0, result.output
    assert json.loads(kept.read_text()) == marked
    rerun = json.loads(stale.read_text())
    assert rerun["params"]["loss"] == 0.01
    original = json.loads((swept.out / stale.name).read_text())
    assert without_timings(rerun) == without_timings(original)  # same parameters and seed
    first, second = result.stderr.splitlines()
    assert first.endswith("(kept: its JSON was already there)"), first
    assert second.endswith("(its JSON held another run: replaced)"), second
    assert sorted(p.name for p in out.iterdir()) == [kept.name, stale.name]  # no partial file


def test_plot_draws_what_the_reports_vary_in(swept: Swept, tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    reports = [str(swept.out / f"nodes-{n}.json") for n in VALUES]

    result = _cli("sim", "plot", "--out", str(plots), *reports)

    assert result.exit_code == 0, result.output
    expected = ["offload-vs-nodes.png", "lookup-cdf.png", "mirror-bytes.png"]
    assert result.stdout.split() == [str(plots / name) for name in expected]
    assert sorted(p.name for p in plots.iterdir()) == sorted(expected)  # not against nat, ...
    for name in expected:
        assert (plots / name).read_bytes().startswith(PNG_MAGIC), name


def test_a_file_that_is_not_a_report_is_named(swept: Swept, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nodes": 3, "seed": 1}))
    good = swept.out / f"nodes-{VALUES[0]}.json"

    result = _cli("sim", "plot", "--out", str(tmp_path / "plots"), str(good), str(bad))

    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert result.stderr.strip().splitlines() == [
        f"dhtdeb: {bad}: not a sim report (no valid virtual_hours)"
    ]
    assert not (tmp_path / "plots").exists()


def test_values_the_parameter_cannot_take(tmp_path: Path) -> None:
    result = _cli("sim", "sweep", "--vary", "nat", "--values", "0,1.5", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "nat 1.5 is out of range (0..1)" in result.output
    result = _cli("sim", "sweep", "--vary", "nodes", "--values", "10,2.5", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "'2.5' is not a whole number" in result.output
    assert list(tmp_path.iterdir()) == []


def test_plots_without_matplotlib(
    swept: Swept, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    good = str(swept.out / f"nodes-{VALUES[0]}.json")
    result = _cli("sim", "plot", "--out", str(tmp_path / "plots"), good)
    assert result.exit_code == 2
    assert result.stderr == "dhtdeb: sim plot needs matplotlib (pip install 'dhtdeb[sim]')\n"
    result = _sweep(tmp_path / "runs", "--plots", str(tmp_path / "plots"))
    assert result.exit_code == 2
    assert result.stderr == "dhtdeb: --plots needs matplotlib (pip install 'dhtdeb[sim]')\n"
    assert list(tmp_path.iterdir()) == []  # nothing ran
