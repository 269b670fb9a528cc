"""`dhtdeb sim`: the network simulation's commands (docs/simulation.md).

Owns: the options of `dhtdeb sim scale`, writing its JSON, asking for its plots, printing the
issue's targets.
The simulation itself is imported when the command runs, so that `dhtdeb --help` stays quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

sim_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="Simulate a fleet (real DHT and swarm code)."
)


@sim_app.command("scale")
def scale(
    nodes: Annotated[int, typer.Option("--nodes", min=2, help="Machines in the fleet.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="One seed, one history.")] = 1,
    json_out: Annotated[
        Path, typer.Option("--json", help="Write the report here ('-': standard output).")
    ] = Path("-"),
    plots: Annotated[
        Path | None, typer.Option("--plots", help="Write PNG plots here (needs matplotlib).")
    ] = None,
    hours: Annotated[float, typer.Option("--hours", min=0.01, help="Virtual hours.")] = 0.25,
    nat: Annotated[
        float, typer.Option("--nat", min=0.0, max=1.0, help="Share of NATed machines.")
    ] = 0.5,
    packages: Annotated[int, typer.Option("--packages", min=100, help="Archive size.")] = 60_000,
    session_median: Annotated[
        float, typer.Option("--session-median", min=0.1, help="Median session, hours.")
    ] = 5.0,
    loss: Annotated[float, typer.Option("--loss", min=0.0, max=0.5, help="Datagram loss.")] = 0.01,
    warmup: Annotated[
        float, typer.Option("--warmup", min=0.0, help="Virtual seconds to join before the update.")
    ] = 600.0,
    drain: Annotated[
        float, typer.Option("--drain", min=0.0, help="Virtual seconds after the window.")
    ] = 900.0,
) -> None:
    """A deterministic discrete-event simulation of a fleet fetching a day's update."""
    from dhtdeb.sim.plots import plot_run
    from dhtdeb.sim.report import targets_line
    from dhtdeb.sim.scale import ScaleParams, run_scale
    from dhtdeb.sim.workload import WorkloadParams

    if plots is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            typer.echo("dhtdeb: --plots needs matplotlib (pip install 'dhtdeb[sim]')", err=True)
            raise typer.Exit(2) from None
    workload = WorkloadParams(
        packages=packages, nat_share=nat, hours=hours, session_median_h=session_median
    )
    result = run_scale(ScaleParams(nodes, seed, workload, loss=loss, warmup=warmup, drain=drain))
    text = json.dumps(result, indent=1, sort_keys=True)
    if str(json_out) == "-":
        typer.echo(text)
    else:
        json_out.write_text(text + "\n")
    if plots is not None:
        for path in plot_run(result, plots):
            typer.echo(f"plot: {path}", err=True)
    summary = (
        f"{result['nodes']} nodes, seed {result['seed']}, {result['virtual_hours']} h:"
        f" wall {result['wall_s']:.1f} s, offload {result['offload']:.3f},"
        f" lookup p50 {result['lookup_p50_s']:.3f} s p95 {result['lookup_p95_s']:.3f} s,"
        f" success {result['lookup_success']:.3f}"
    )
    typer.echo(summary, err=True)
    typer.echo(f"targets: {targets_line(result)}", err=True)
