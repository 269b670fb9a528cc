"""Plots of simulation reports, drawn from their JSON (`dhtdeb sim scale --plots`).

Owns: the figures and their PNG files. Trusts: the reports it is given (`report.py` wrote them).
matplotlib (the `sim` extra) is imported only when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
