"""`dhtdeb sim`: the network simulation's commands (docs/simulation.md).

Owns: the options of `dhtdeb sim scale`, `sim sweep` and `sim plot`, writing a run's JSON, asking
for plots, the lines printed per run and the issue's targets.
The simulation itself is imported when a command runs, so that `dhtdeb --help` stays quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dhtdeb.sim.sweep import Varied

if TYPE_CHECKING:
    from dhtdeb.sim.scale import ScaleParams

sim_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="Simulate a fleet (real DHT and swarm code)."
)

# The options of a run, shared by `scale` and `sweep` (where they are the fixed base).
Hours = Annotated[float, typer.Option("--hours", min=0.01, help="Virtual hours.")]
NatShare = Annotated[
    float, typer.Option("--nat", min=0.0, max=1.0, help="Share of NATed machines.")
]
Packages = Annotated[int, typer.Option("--packages", min=100, help="Archive size.")]
SessionMedian = Annotated[
    float, typer.Option("--session-median", min=0.1, help="Median session, hours.")
]
Loss = Annotated[float, typer.Option("--loss", min=0.0, max=0.5, help="Datagram loss.")]
Warmup = Annotated[
    float, typer.Option("--warmup", min=0.0, help="Virtual seconds to join before the update.")
]
Drain = Annotated[float, typer.Option("--drain", min=0.0, help="Virtual seconds after the window.")]
Seed = Annotated[int, typer.Option("--seed", help="One seed, one history.")]
Progress = Annotated[
    float,
    typer.Option(
        "--progress",
        min=0.0,
        help="Wall seconds between progress lines on stderr (0: none).",
    ),
]
Until = Annotated[
    float | None,
    typer.Option(
        "--until",
        min=0.0,
        help="Stop at this virtual second, counted from the warm-up's start (default: the"
        " drain's end); the report is partial.",
    ),
]


def _scale_params(
    nodes: int,
    seed: int,
    *,
    hours: float,
    nat: float,
    packages: int,
    session_median: float,
    loss: float,
    warmup: float,
    drain: float,
    until: float | None = None,
) -> ScaleParams:
    from dhtdeb.sim.scale import ScaleParams
    from dhtdeb.sim.workload import WorkloadParams

    workload = WorkloadParams(
        packages=packages, nat_share=nat, hours=hours, session_median_h=session_median
    )
    return ScaleParams(nodes, seed, workload, loss=loss, warmup=warmup, drain=drain, until=until)


def _progress_options(every: float) -> dict[str, Any]:
    """run_scale's progress options for `--progress` (lines on stderr; 0: none)."""
    if not every:
        return {}
    return {"progress": lambda line: typer.echo(line, err=True), "progress_every": every}


def _need_matplotlib(what: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        typer.echo(f"dhtdeb: {what} needs matplotlib (pip install 'dhtdeb[sim]')", err=True)
        raise typer.Exit(2) from None


def _cpu(result: dict[str, Any]) -> str:
    """The CPU part of the summary line (reports before cpu_s have none)."""
    cpu = result.get("cpu_s")
    return f" (CPU {cpu:.1f} s)" if isinstance(cpu, int | float) else ""


def _summary_line(result: dict[str, Any]) -> str:
    return (
        f"{result['nodes']} nodes, seed {result['seed']}, {result['virtual_hours']} h:"
        f" wall {result['wall_s']:.1f} s{_cpu(result)}, offload {result['offload']:.3f},"
        f" lookup p50 {result['lookup_p50_s']:.3f} s p95 {result['lookup_p95_s']:.3f} s,"
        f" success {result['lookup_success']:.3f},"
        f" stretch p50 {result.get('download_stretch_p50', 0.0):.2f}"
        f" p95 {result.get('download_stretch_p95', 0.0):.2f}"
    )


@sim_app.command("scale")
def scale(
    nodes: Annotated[int, typer.Option("--nodes", min=2, help="Machines in the fleet.")] = 100,
    seed: Seed = 1,
    json_out: Annotated[
        Path, typer.Option("--json", help="Write the report here ('-': standard output).")
    ] = Path("-"),
    plots: Annotated[
        Path | None, typer.Option("--plots", help="Write PNG plots here (needs matplotlib).")
    ] = None,
    hours: Hours = 0.25,
    nat: NatShare = 0.5,
    packages: Packages = 60_000,
    session_median: SessionMedian = 5.0,
    loss: Loss = 0.01,
    warmup: Warmup = 600.0,
    drain: Drain = 900.0,
    until: Until = None,
    progress: Progress = 60.0,
) -> None:
    """A deterministic discrete-event simulation of a fleet fetching a day's update.

    A run stopped early (--until, or Ctrl-C once the fleet is built: exit status 130) still
    writes its report, which counts the files finished by then and gives `stopped_at_s`,
    `files_running` and `files_queued`."""
    from dhtdeb.sim.plots import plot_run
    from dhtdeb.sim.report import targets_line
    from dhtdeb.sim.scale import SimInterrupted, run_scale
    from dhtdeb.sim.sweep import dump_report

    if plots is not None:
        _need_matplotlib("--plots")
    params = _scale_params(
        nodes,
        seed,
        hours=hours,
        nat=nat,
        packages=packages,
        session_median=session_median,
        loss=loss,
        warmup=warmup,
        drain=drain,
        until=until,
    )
    interrupted = False
    try:
        result = run_scale(params, **_progress_options(progress))
    except SimInterrupted as stop:
        result, interrupted = stop.report, True
    except KeyboardInterrupt:
        typer.echo("dhtdeb: interrupted while the fleet was built: no report", err=True)
        raise typer.Exit(130) from None
    text = dump_report(result)
    if str(json_out) == "-":
        typer.echo(text, nl=False)
    else:
        json_out.write_text(text)
    if plots is not None:
        for path in plot_run(result, plots):
            typer.echo(f"plot: {path}", err=True)
    if "stopped_at_s" in result:
        typer.echo(
            f"stopped at virtual {result['stopped_at_s']:.1f} s"
            f"{' (Ctrl-C)' if interrupted else ''}: a partial report, counting the"
            f" {result['files_finished']} files finished by then"
            f" ({result['files_running']} still running, {result['files_queued']} queued)",
            err=True,
        )
    typer.echo(_summary_line(result), err=True)
    typer.echo(f"targets: {targets_line(result)}", err=True)
    if interrupted:
        raise typer.Exit(130)


@sim_app.command("sweep")
def sweep(
    vary: Annotated[
        Varied, typer.Option("--vary", help="The parameter to vary (session-median: churn).")
    ],
    values: Annotated[
        str, typer.Option("--values", help="Its values, comma-separated (e.g. 100,300,1000).")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Write one JSON per value here: <vary>-<value>.json.")
    ],
    seed: Seed = 1,
    plots: Annotated[
        Path | None,
        typer.Option(
            "--plots", help="At the end, write the sweep's plots here (needs matplotlib)."
        ),
    ] = None,
    nodes: Annotated[int, typer.Option("--nodes", min=2, help="Machines in the fleet.")] = 100,
    hours: Hours = 0.25,
    nat: NatShare = 0.5,
    packages: Packages = 60_000,
    session_median: SessionMedian = 5.0,
    loss: Loss = 0.01,
    warmup: Warmup = 600.0,
    drain: Drain = 900.0,
    progress: Progress = 60.0,
) -> None:
    """Run `sim scale` once per value of one parameter, the other options fixed.

    Each point's report is <out>/<vary>-<value>.json, the same JSON as `sim scale --json`. The
    points run one after another; a point whose JSON is already there with the same parameters
    is not run again, so a sweep that was stopped resumes when the same command is given again
    (delete a point's file to run it again). The option that --vary names is ignored.
    """
    from dhtdeb.sim.scale import SimInterrupted
    from dhtdeb.sim.sweep import BadValues, parse_values, plan_sweep, run_sweep

    try:
        chosen = parse_values(vary, values)
    except BadValues as exc:
        raise typer.BadParameter(str(exc), param_hint="--values") from None
    if plots is not None:
        _need_matplotlib("--plots")
    base = _scale_params(
        nodes,
        seed,
        hours=hours,
        nat=nat,
        packages=packages,
        session_median=session_median,
        loss=loss,
        warmup=warmup,
        drain=drain,
    )
    reports = []
    try:
        points = plan_sweep(base, vary, chosen, out)
        for run in run_sweep(points, **_progress_options(progress)):
            reports.append(run.report)
            note = {
                "ran": "",
                "kept": " (kept: its JSON was already there)",
                "replaced": " (its JSON held another run: replaced)",
            }[run.outcome]
            typer.echo(f"{run.point.path}: {_summary_line(run.report)}{note}", err=True)
    except (SimInterrupted, KeyboardInterrupt) as stop:
        what = stop if isinstance(stop, SimInterrupted) else "interrupted"
        typer.echo(
            f"dhtdeb: {what}: that point's JSON is not written; the same command resumes the"
            " sweep from it",
            err=True,
        )
        raise typer.Exit(130) from None
    if plots is not None:
        from dhtdeb.sim.plots import plot_runs

        for path in plot_runs(reports, plots):
            typer.echo(str(path))


@sim_app.command("plot")
def plot(
    reports: Annotated[
        list[Path], typer.Argument(help="JSON reports of `sim scale` or `sim sweep`.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Write the PNG plots here.")],
) -> None:
    """Plots from existing reports: offload against each parameter they vary in (nodes, nat,
    session-median, loss), the first lookups' durations (CDF) and the mirror's bytes over
    virtual time, one line per report. Prints the paths of the files it wrote."""
    from dhtdeb.sim.sweep import NotAReport, read_report

    try:
        loaded = [read_report(path) for path in reports]
    except NotAReport as exc:
        typer.echo(f"dhtdeb: {exc}", err=True)
        raise typer.Exit(2) from None
    _need_matplotlib("sim plot")
    from dhtdeb.sim.plots import plot_runs

    for path in plot_runs(loaded, out):
        typer.echo(str(path))
