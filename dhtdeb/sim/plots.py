"""Plots of simulation reports, drawn from their JSON (`sim scale --plots`, `sim sweep --plots`,
`sim plot`).

Owns: the figures and their file names: per run (`plot_run`: mirror-<nodes>.png,
lookups-<nodes>.png) and across runs (`plot_runs`: offload-vs-<parameter>.png for each sweep
parameter the runs differ in, lookup-cdf.png, mirror-bytes.png). Trusts: the reports it is given
(`sweep.read_report` checked the fields it reads). matplotlib (the `sim` extra) is imported only
when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dhtdeb.sim.sweep import Varied, value_of

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Report = dict[str, Any]


@dataclass(frozen=True)
class Dimension:
    """Something runs can differ in, and how a legend says it."""

    name: str
    read: Callable[[Report], float]
    text: Callable[[float], str]


def _varied(varied: Varied) -> Callable[[Report], float]:
    return lambda report: value_of(report, varied)


DIMENSIONS = (
    Dimension(Varied.NODES, _varied(Varied.NODES), lambda v: f"{v:g} nodes"),
    Dimension(Varied.NAT, _varied(Varied.NAT), lambda v: f"NAT {v:g}"),
    Dimension(Varied.SESSION_MEDIAN, _varied(Varied.SESSION_MEDIAN), lambda v: f"sessions {v:g} h"),
    Dimension(Varied.LOSS, _varied(Varied.LOSS), lambda v: f"loss {v:g}"),
    Dimension("seed", lambda r: float(r["seed"]), lambda v: f"seed {v:g}"),
    Dimension("hours", lambda r: float(r["virtual_hours"]), lambda v: f"{v:g} virtual h"),
)


@dataclass(frozen=True)
class OffloadPlot:
    file: str
    title: str
    axis: str
    log: bool = False


OFFLOAD_PLOTS = {
    Varied.NODES: OffloadPlot(
        "offload-vs-nodes.png", "Offload against fleet size", "machines in the fleet", log=True
    ),
    Varied.NAT: OffloadPlot(
        "offload-vs-nat.png", "Offload against NAT share", "share of machines behind NAT"
    ),
    Varied.SESSION_MEDIAN: OffloadPlot(
        "offload-vs-session-median.png",
        "Offload against session length (churn)",
        "median session, hours",
    ),
    Varied.LOSS: OffloadPlot(
        "offload-vs-loss.png", "Offload against datagram loss", "share of datagrams lost"
    ),
}


def differing(reports: Sequence[Report]) -> list[Dimension]:
    """The dimensions in which the reports do not all agree."""
    return [d for d in DIMENSIONS if len({d.read(r) for r in reports}) > 1]


def label(report: Report, dimensions: Sequence[Dimension], *, run: bool = True) -> str:
    """A legend's text for `report` (`run`: this one run, marked if it stopped early; else the
    line through several runs that it starts)."""
    if not dimensions:
        text = f"{report['nodes']} nodes, seed {report['seed']}"
    else:
        text = ", ".join(d.text(d.read(report)) for d in dimensions)
    stop = stopped(report)
    return f"{text} ({stop})" if run and stop else text


def stopped(report: Report) -> str | None:
    """How a plot marks a run stopped before its drain's end (`sim scale --until`, Ctrl-C)."""
    at = report.get("stopped_at_s")
    return f"stopped at {at:,.0f} s" if isinstance(at, int | float) else None


def plot_runs(reports: Sequence[Report], directory: Path) -> list[Path]:
    """The plots across runs that these reports allow; the paths written."""
    varying = differing(reports)
    ordered = sorted(reports, key=lambda r: tuple(d.read(r) for d in varying))
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for dimension in varying:
        if dimension.name in OFFLOAD_PLOTS:
            varied = Varied(dimension.name)
            others = [d for d in varying if d is not dimension]
            path = directory / OFFLOAD_PLOTS[varied].file
            _offload_plot(ordered, dimension, others, OFFLOAD_PLOTS[varied], path)
            written.append(path)
    if any(sum(r["lookup_histogram"]["counts"]) for r in ordered):
        path = directory / "lookup-cdf.png"
        _lookup_cdf(ordered, varying, path)
        written.append(path)
    if any(r["mirror_bytes_series"]["bytes"] for r in ordered):
        path = directory / "mirror-bytes.png"
        _mirror_bytes(ordered, varying, path)
        written.append(path)
    return written


def _figure() -> tuple[Figure, Axes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    return figure, axes


def _save(figure: Figure, path: Path, legend: bool) -> None:
    import matplotlib.pyplot as plt

    if legend:
        figure.axes[0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _offload_plot(
    reports: Sequence[Report],
    along: Dimension,
    others: Sequence[Dimension],
    plot: OffloadPlot,
    path: Path,
) -> None:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    figure, axes = _figure()
    # one line per combination of the other parameters the runs differ in
    lines: dict[tuple[float, ...], list[Report]] = {}
    for report in reports:
        lines.setdefault(tuple(d.read(report) for d in others), []).append(report)
    ceilings = False
    for number, group in enumerate(lines.values()):
        runs = sorted(group, key=along.read)
        xs = [along.read(r) for r in runs]
        (line,) = axes.plot(
            xs,
            [r["offload"] for r in runs],
            marker="o",
            label=label(runs[0], others, run=False) if others else "offload",
        )
        for run in runs:
            if stop := stopped(run):
                axes.annotate(
                    stop,
                    (along.read(run), run["offload"]),
                    textcoords="offset points",
                    xytext=(-6, -14),
                    ha="right",
                    fontsize="small",
                )
        if all("offload_ceiling_nat" in r for r in runs):  # reports of this version on
            ceilings = True
            first = number == 0
            axes.plot(
                xs,
                [r["offload_ceiling"] for r in runs],
                linestyle=":",
                color=line.get_color(),
                label="ceiling: every file's first copy from the mirror" if first else None,
            )
            axes.plot(
                xs,
                [r["offload_ceiling_nat"] for r in runs],
                linestyle="--",
                color=line.get_color(),
                label="ceiling with NAT: and every copy before a reachable holder"
                if first
                else None,
            )
    if plot.log:
        axes.set_xscale("log")
        axes.set_xticks(sorted({along.read(r) for r in reports}))
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel(plot.axis)
    axes.set_ylabel("offload (bytes from peers / bytes fetched)")
    axes.set_title(plot.title)
    axes.grid(alpha=0.3)
    _save(figure, path, legend=bool(others) or ceilings)


def _lookup_cdf(reports: Sequence[Report], varying: Sequence[Dimension], path: Path) -> None:
    figure, axes = _figure()
    for report in reports:
        histogram = report["lookup_histogram"]
        counts, step = histogram["counts"], histogram["step_s"]
        total = sum(counts)
        if not total:
            continue
        # the share of lookups done by the end of each bucket
        edges, shares, done = [0.0], [0.0], 0
        for index, count in enumerate(counts):
            done += count
            edges.append((index + 1) * step)
            shares.append(done / total)
        axes.plot(edges, shares, label=label(report, varying))
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("first lookup of a download, virtual seconds (a holder existed)")
    axes.set_ylabel("share of first lookups done")
    axes.set_title("First-lookup durations (CDF)")
    axes.grid(alpha=0.3)
    _save(figure, path, legend=True)


def _mirror_bytes(reports: Sequence[Report], varying: Sequence[Dimension], path: Path) -> None:
    figure, axes = _figure()
    steps = {r["mirror_bytes_series"]["step_s"] for r in reports}
    for report in reports:
        series = report["mirror_bytes_series"]
        step, values = series["step_s"], series["bytes"]
        if not values:
            continue
        megabytes = [v / 1e6 for v in values]
        axes.plot(
            [i * step / 3600 for i in range(len(values) + 1)],
            [*megabytes, megabytes[-1]],
            drawstyle="steps-post",
            label=label(report, varying),
        )
    per = f"{next(iter(steps)) / 60:g} min" if len(steps) == 1 else "step"
    axes.set_xlabel("virtual hours since the update")
    axes.set_ylim(bottom=0.0)
    axes.set_ylabel(f"mirror MB per {per}")
    axes.set_title("Mirror bytes over virtual time")
    axes.grid(alpha=0.3)
    _save(figure, path, legend=True)


def plot_run(result: dict[str, Any], directory: Path) -> list[Path]:
    """Plots of one run: the mirror's bytes over virtual time, and the first lookups'
    durations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    series = result["mirror_bytes_series"]
    step = series["step_s"]
    values = series["bytes"]
    figure, axes = plt.subplots(figsize=(7, 3.5))
    axes.bar(
        [i * step / 3600 for i in range(len(values))],
        [v / 1e6 for v in values],
        width=step / 3600,
        align="edge",
    )
    axes.set_xlabel("virtual hours since the update")
    axes.set_ylabel(f"mirror MB per {step / 60:.0f} min")
    axes.set_title(f"{result['nodes']} nodes, seed {result['seed']}")
    path = directory / f"mirror-{result['nodes']}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    lookups = result["lookup_histogram"]
    figure, axes = plt.subplots(figsize=(7, 3.5))
    counts = lookups["counts"]
    axes.bar([i * lookups["step_s"] for i in range(len(counts))], counts, width=lookups["step_s"])
    axes.set_xlabel("first lookup of a download, virtual seconds (a holder existed)")
    axes.set_ylabel("lookups")
    axes.set_title(f"{result['nodes']} nodes: success {result['lookup_success']:.3f}")
    latency = directory / f"lookups-{result['nodes']}.png"
    figure.tight_layout()
    figure.savefig(latency, dpi=100)
    plt.close(figure)
    return [path, latency]
