"""What a long simulation gives whoever runs it: progress lines, and a report when it is stopped
early (`sim scale --until T`, Ctrl-C).

A 10,000-node run takes hours of CPU; its operator must see where it is, and whoever stops it
must get what it measured, labelled as partial. Neither may change the history: progress lines
and a stop are hooks of the virtual clock's jump, not timers (`--until` past the end is the full
run), and the counters of a partial report add up with the files still running. The fleet is
tiny (30 machines, a 300-package archive, 36 virtual seconds of arrivals): the runs take a
second.
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from dhtdeb.cli import app
from dhtdeb.sim import scale
from dhtdeb.sim.loop import VirtualTimeLoop
from dhtdeb.sim.plots import label, plot_runs
from dhtdeb.sim.report import Tally, without_timings
from dhtdeb.sim.scale import ScaleParams, run_scale
from dhtdeb.sim.workload import WorkloadParams

SEED = 1
WORKLOAD = WorkloadParams(packages=300, hours=0.01)
END = 30.0 + 36.0 + 30.0  # warm-up, window, drain
MIDWAY = 50.0  # virtual seconds: downloads are running
BASE = ["--seed", str(SEED), "--packages", "300", "--hours", "0.01", "--warmup", "30"]
BASE += ["--drain", "30"]


def _params(until: float | None = None) -> ScaleParams:
    return ScaleParams(30, SEED, WORKLOAD, warmup=30.0, drain=30.0, until=until)


@pytest.fixture(scope="module")
def full() -> dict[str, Any]:
    return run_scale(_params())


@pytest.fixture(scope="module")
def partial() -> dict[str, Any]:
    return run_scale(_params(until=MIDWAY))


def _adds_up(result: dict[str, Any]) -> None:
    ended = result["files_finished"] + result["files_failed"] + result["files_abandoned"]
    context = f"seed {SEED}: {result}"
    assert ended + result["files_running"] == result["files_requested"], context
    assert result["files_queued"] >= 0, context
    assert result["bytes_from_peers"] + result["bytes_from_mirror"] == result["bytes_requested"]
    assert result["wrong_pieces"] == 0 and result["files_failed"] == 0, context
    assert result["upkeep_bytes_per_s_per_node"] > 0, context  # online machines counted


def test_a_stop_after_the_end_leaves_the_full_run(full: dict[str, Any]) -> None:
    late = run_scale(_params(until=END + 1000.0))
    assert late["params"].pop("until") == END + 1000.0
    assert "stopped_at_s" not in late and "until" not in full["params"]
    assert without_timings(late) == without_timings(full), f"seed {SEED}"


def test_progress_lines_say_where_the_run_is_and_change_nothing(full: dict[str, Any]) -> None:
    lines: list[str] = []
    # every second of virtual time, instead of every minute of wall time
    watched = run_scale(_params(), progress=lines.append, progress_every=0.0)
    assert without_timings(watched) == without_timings(full), f"seed {SEED}"
    assert len(lines) > END / 2, lines  # one per virtual second passed, where events were
    shape = re.compile(
        r"virtual (\d+) s: ([\d,]+) files asked for, ([\d,]+) finished, ([\d,]+) running,"
        r" ([\d,]+) queued;"
        r" CPU [\d,]+ s, peak memory [\d.]+ GB"
    )
    seen = [shape.fullmatch(line) for line in lines]
    assert all(seen), [line for line, match in zip(lines, seen, strict=True) if not match]
    times = [int(match.group(1)) for match in seen if match]
    assert times == sorted(set(times)) and times[-1] >= END - 2, times
    finished = [int(match.group(3).replace(",", "")) for match in seen if match]
    assert finished[0] == 0 and finished == sorted(finished), finished  # warm-up, then files
    assert 0 < finished[-1] <= full["files_finished"], (finished[-1], full["files_finished"])


def test_a_stopped_run_reports_what_it_measured_by_then(
    full: dict[str, Any], partial: dict[str, Any]
) -> None:
    assert partial["stopped_at_s"] == MIDWAY
    assert partial["files_running"] > 0, f"seed {SEED}: nothing was running at {MIDWAY} s"
    _adds_up(partial)
    assert partial["files_finished"] < full["files_finished"], f"seed {SEED}"
    assert partial["bytes_requested"] < full["bytes_requested"], f"seed {SEED}"
    again = run_scale(_params(until=MIDWAY))
    assert without_timings(again) == without_timings(partial), f"seed {SEED}: two stops differ"


@dataclass
class _WatchedTally(Tally):
    """The tally of a run, kept where the test can read it while the run goes on."""

    made: ClassVar[list[Tally]] = []

    def __post_init__(self) -> None:
        self.made.append(self)


def test_a_stopped_run_is_the_full_run_up_to_its_stop(
    partial: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the full run had counted when its clock passed MIDWAY (a hook of the clock's jump, as
    # the stop is), against what the run stopped there reports.
    seen: list[dict[str, int]] = []

    def watched_loop() -> VirtualTimeLoop:
        loop = VirtualTimeLoop(freeze_every=scale.FREEZE_EVERY)
        loop.every(MIDWAY, lambda: seen.append(_counted(_WatchedTally.made[-1])))
        return loop

    monkeypatch.setattr(scale, "_loop", watched_loop)
    monkeypatch.setattr(scale, "Tally", _WatchedTally)
    run_scale(_params())
    assert seen, "the clock never passed the stop"
    tally = _WatchedTally.made[-1]
    assert tally.queued == 0  # every file of a batch started or was dropped
    assert sum(tally.batches) >= tally.files_requested + tally.not_started
    reported = {key: partial[key] for key in seen[0]}
    assert seen[0] == reported, f"seed {SEED}: the full run at {MIDWAY} s against the stopped"


def _counted(tally: Tally) -> dict[str, int]:
    return {
        "files_requested": tally.files_requested,
        "files_finished": tally.files_finished,
        "files_abandoned": tally.files_abandoned,
        "bytes_requested": tally.bytes_requested,
        "bytes_from_peers": tally.bytes_from_peers,
        "bytes_from_mirror": tally.bytes_from_mirror,
        "bytes_mirror_sent": tally.mirror_moved,
        "bytes_peers_sent": tally.peer_moved,
        "lookups_with_holder": len(tally.lookups),
    }


def test_plots_say_which_runs_stopped(
    full: dict[str, Any], partial: dict[str, Any], tmp_path: Path
) -> None:
    assert label(full, []) == "30 nodes, seed 1"
    assert label(partial, []) == "30 nodes, seed 1 (stopped at 50 s)"
    written = plot_runs([full, partial], tmp_path)
    assert [path.name for path in written] == ["lookup-cdf.png", "mirror-bytes.png"]


@pytest.fixture
def ctrl_c_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs' loop raises a real SIGINT when its clock reaches MIDWAY."""

    def interrupted_loop() -> VirtualTimeLoop:
        loop = VirtualTimeLoop(freeze_every=scale.FREEZE_EVERY)
        loop.call_at(MIDWAY, signal.raise_signal, signal.SIGINT)
        return loop

    monkeypatch.setattr(scale, "_loop", interrupted_loop)


@pytest.mark.usefixtures("ctrl_c_midway")
def test_ctrl_c_writes_the_report_so_far(tmp_path: Path) -> None:
    out = tmp_path / "partial.json"
    result = CliRunner().invoke(app, ["sim", "scale", "--nodes", "30", *BASE, "--json", str(out)])
    assert result.exit_code == 130, result.output
    assert "(Ctrl-C): a partial report" in result.output
    partial = json.loads(out.read_text())
    assert MIDWAY <= partial["stopped_at_s"] < MIDWAY + 1.0, partial["stopped_at_s"]
    assert partial["files_running"] > 0, f"seed {SEED}: nothing was running at {MIDWAY} s"
    _adds_up(partial)


@pytest.mark.usefixtures("ctrl_c_midway")
def test_ctrl_c_in_a_sweep_writes_no_point_it_would_keep(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    command = ["sim", "sweep", "--vary", "nodes", "--values", "10,20", "--out", str(out), *BASE]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 130, result.output
    assert "interrupted at virtual 50.0 s" in result.output
    assert "the same command resumes the sweep from it" in result.output
    assert not list(out.glob("*.json"))  # a partial report would be kept by the resumption


def test_a_sweep_runs_again_a_point_whose_file_holds_a_stopped_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c_midway: None
) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    point = out / "nodes-30.json"
    stopped = CliRunner().invoke(
        app, ["sim", "scale", "--nodes", "30", *BASE, "--json", str(point)]
    )
    assert stopped.exit_code == 130 and "stopped_at_s" in json.loads(point.read_text())
    monkeypatch.undo()  # no Ctrl-C from here on

    swept = CliRunner().invoke(
        app, ["sim", "sweep", "--vary", "nodes", "--values", "30", "--out", str(out), *BASE]
    )
    assert swept.exit_code == 0, swept.output
    assert "(its JSON held another run: replaced)" in swept.output
    assert "stopped_at_s" not in json.loads(point.read_text())
