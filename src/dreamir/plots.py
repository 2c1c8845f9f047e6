"""Training curves from the trainer's JSONL logs (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dreamir.io import atomic_path, read_log_rows


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_training_curves(
    logs: Mapping[str, str | Path],
    out: str | Path,
    metrics: tuple[str, ...] = ("loss", "grad_norm", "p_gold"),
) -> Path:
    """One panel per metric, one line per run (moving average over 10 steps, raw values faint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {name: read_log_rows(path) for name, path in logs.items()}
    shown = [m for m in metrics if any(m in row for rows in runs.values() for row in rows)]
    # One colour per run in every panel, also where a run lacks a metric.
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {name: cycle[i % len(cycle)] for i, name in enumerate(runs)}
    columns = max(1, min(len(runs), 4))
    legend_rows = -(-len(runs) // columns)
    figure, axes = plt.subplots(
        1,
        len(shown),
        figsize=(4.5 * len(shown), 3.4 + 0.25 * legend_rows),
        squeeze=False,
        layout="constrained",
    )
    for axis, metric in zip(axes[0], shown, strict=True):
        for name, rows in runs.items():
            points = [(r["step"], r[metric]) for r in rows if metric in r]
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            axis.plot(steps, _smooth(list(values), 10), label=name, color=colours[name])
            axis.plot(steps, values, alpha=0.2, color=colours[name])
        axis.set_title(metric)
        axis.set_xlabel("step")
        if metric == "grad_norm":
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[name], label=name) for name in runs]
    # Below the panels, so that it never hides a curve.
    figure.legend(handles=handles, loc="outside lower center", ncol=columns, frameon=False)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return Path(out)
