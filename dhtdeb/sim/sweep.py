"""`dhtdeb sim sweep`: one simulation per value of one parameter, each kept as `sim scale`'s JSON.

Owns: the parameters a sweep can vary (where each sits in `ScaleParams` and in a report), the
points' file names (`DIR/<parameter>-<value>.json`), whether a point's file already holds its run
(so that a long sweep resumes where it stopped), writing a file whole, and reading a report back
(`read_report`: anything that is not a sim report raises `NotAReport`, naming the file).
Trusts: `run_scale` for the numbers; the points run one after another in this process (a run
leaves nothing behind: the resident size after several runs is that of the largest one).
The simulation is imported when a point runs, so that `dhtdeb --help` stays quick.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

if TYPE_CHECKING:
    from dhtdeb.sim.scale import ScaleParams


class Varied(StrEnum):
    """A parameter a sweep varies (the names of `sim scale`'s options)."""

    NODES = "nodes"
    NAT = "nat"
    SESSION_MEDIAN = "session-median"
    LOSS = "loss"


# The ranges `sim scale` accepts for each (dhtdeb/sim/cli.py): (lowest, highest or None).
RANGES: dict[Varied, tuple[float, float | None]] = {
    Varied.NODES: (2, None),
    Varied.NAT: (0.0, 1.0),
    Varied.SESSION_MEDIAN: (0.1, None),
    Varied.LOSS: (0.0, 0.5),
}


class BadValues(ValueError):
    """`--values` that the varied parameter cannot take."""


class NotAReport(ValueError):
    """A file that is not the JSON of a sim run; the message names the file."""


def parse_values(varied: Varied, text: str) -> list[float]:
    """`--values 100,300,1000`, in the given order; nodes are whole numbers."""
    low, high = RANGES[varied]
    values: list[float] = []
    for item in (part.strip() for part in text.split(",")):
        try:
            value: float = int(item) if varied is Varied.NODES else float(item)
        except ValueError:
            kind = "a whole number" if varied is Varied.NODES else "a number"
            raise BadValues(f"{item!r} is not {kind}") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            limits = f"{low:g}..{high:g}" if high is not None else f">= {low:g}"
            raise BadValues(f"{varied} {item} is out of range ({limits})")
        if value in values:
            raise BadValues(f"{varied} {item} is given twice")
        values.append(value)
    return values


def with_value(base: ScaleParams, varied: Varied, value: float) -> ScaleParams:
    """`base` with the varied parameter set to `value`."""
    replace = dataclasses.replace
    match varied:
        case Varied.NODES:
            return replace(base, nodes=int(value))
        case Varied.NAT:
            return replace(base, workload=replace(base.workload, nat_share=value))
        case Varied.SESSION_MEDIAN:
            return replace(base, workload=replace(base.workload, session_median_h=value))
        case Varied.LOSS:
            return replace(base, loss=value)


def value_of(report: dict[str, Any], varied: Varied) -> float:
    """The varied parameter's value in a report that `read_report` accepted."""
    match varied:
        case Varied.NODES:
            return float(report["nodes"])
        case Varied.NAT:
            return float(report["params"]["workload"]["nat_share"])
        case Varied.SESSION_MEDIAN:
            return float(report["params"]["workload"]["session_median_h"])
        case Varied.LOSS:
            return float(report["params"]["loss"])


def value_text(varied: Varied, value: float) -> str:
    """How a value reads in a point's file name: nodes-300, nat-0.5, session-median-5.0."""
    return str(int(value)) if varied is Varied.NODES else repr(float(value))


@dataclass(frozen=True)
class Point:
    varied: Varied
    value: float
    params: ScaleParams
    path: Path


def plan_sweep(
    base: ScaleParams, varied: Varied, values: Sequence[float], out: Path
) -> list[Point]:
    return [
        Point(
            varied,
            value,
            with_value(base, varied, value),
            out / f"{varied}-{value_text(varied, value)}.json",
        )
        for value in values
    ]


@dataclass(frozen=True)
class PointRun:
    point: Point
    report: dict[str, Any]
    # ran: no file before; kept: the file held this run; replaced: the file held something else
    outcome: Literal["ran", "kept", "replaced"]


def run_sweep(
    points: Sequence[Point],
    *,
    progress: Callable[[str], object] | None = None,
    progress_every: float = 60.0,
) -> Iterator[PointRun]:
    """Run the points whose file does not already hold their run, in order, writing each file
    as soon as its run ends (`progress`: as `run_scale`'s)."""
    for point in points:
        outcome: Literal["ran", "replaced"] = "ran"
        if point.path.exists():
            try:
                earlier = read_report(point.path)
            except NotAReport:
                earlier = None
            if earlier is not None and holds_run(earlier, point.params):
                yield PointRun(point, earlier, "kept")
                continue
            outcome = "replaced"
        from dhtdeb.sim.scale import run_scale

        result = run_scale(point.params, progress=progress, progress_every=progress_every)
        write_report(point.path, result)
        yield PointRun(point, result, outcome)


def holds_run(report: dict[str, Any], params: ScaleParams) -> bool:
    """Whether `report` is the run of `params` (same fleet, seed and every other parameter),
    to its end: a run stopped by Ctrl-C has the same parameters, not the same numbers."""
    summary = json.loads(json.dumps(params.summary()))  # tuples become lists, as in the file
    stopped_at = report.get("stopped_at_s")
    stopped_early = stopped_at is not None and (params.until is None or stopped_at < params.until)
    return (
        not stopped_early
        and report.get("nodes") == params.nodes
        and report.get("seed") == params.seed
        and report.get("params") == summary
    )


def dump_report(report: dict[str, Any]) -> str:
    """A report as `sim scale --json` writes it."""
    return json.dumps(report, indent=1, sort_keys=True) + "\n"


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write the file whole: a sweep stopped half-way leaves no half-written point behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(dump_report(report))
    os.replace(partial, path)


# What the plots and the resumption read from a report: (path of keys, kind).
_FIELDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("nodes",), "int"),
    (("seed",), "int"),
    (("virtual_hours",), "number"),
    (("offload",), "number"),
    (("lookup_success",), "number"),
    (("lookup_p50_s",), "number"),
    (("lookup_p95_s",), "number"),
    (("lookup_histogram", "step_s"), "step"),
    (("lookup_histogram", "counts"), "numbers"),
    (("mirror_bytes_series", "step_s"), "step"),
    (("mirror_bytes_series", "bytes"), "numbers"),
    (("params", "loss"), "number"),
    (("params", "workload", "nat_share"), "number"),
    (("params", "workload", "session_median_h"), "number"),
    (("wall_s",), "number"),
)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fits(value: object, kind: str) -> bool:
    match kind:
        case "int":
            return isinstance(value, int) and not isinstance(value, bool)
        case "number":
            return _is_number(value)
        case "step":
            return _is_number(value) and value > 0
        case _:  # "numbers"
            return isinstance(value, list) and all(_is_number(v) for v in value)


def read_report(path: Path) -> dict[str, Any]:
    """The report in `path`, with every field the plots and the resumption read."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise NotAReport(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotAReport(f"{path}: not a sim report (not JSON: {exc})") from None
    if not isinstance(data, dict):
        raise NotAReport(f"{path}: not a sim report (not a JSON object)")
    for keys, kind in _FIELDS:
        value: object = data
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if not _fits(value, kind):
            raise NotAReport(f"{path}: not a sim report (no valid {'.'.join(keys)})")
    return data
