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


def run_styles(names: list[str], groups: Mapping[str, str] | None = None) -> dict[str, tuple[int, str]]:
    """(colour index, line style) per run: one colour per group, the group's runs in successive styles."""
    group_of = {name: (groups or {}).get(name, name) for name in names}
    group_index = {group: i for i, group in enumerate(dict.fromkeys(group_of.values()))}
    seen: dict[str, int] = {}
    styles = {}
    for name in names:
        group = group_of[name]
        styles[name] = (group_index[group], ("-", "--", ":", "-.")[seen.get(group, 0) % 4])
        seen[group] = seen.get(group, 0) + 1
    return styles


def plot_training_curves(
    logs: Mapping[str, str | Path],
    out: str | Path,
    metrics: tuple[str, ...] = ("loss", "grad_norm", "p_gold"),
    groups: Mapping[str, str] | None = None,
) -> Path:
    """One panel per metric, one line per run (moving average over 10 steps, raw values faint).

    ``groups`` maps a run to a group (e.g. the same system from several seeds): a group's runs share a
    colour and differ in line style.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {name: read_log_rows(path) for name, path in logs.items()}
    shown = [m for m in metrics if any(m in row for rows in runs.values() for row in rows)]
    # One colour per run (or group) in every panel, also where a run lacks a metric.
    looks = _looks(list(runs), groups)
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
            colour, style = looks[name]
            axis.plot(steps, _smooth(list(values), 10), label=name, color=colour, linestyle=style)
            axis.plot(steps, values, alpha=0.2, color=colour)
        axis.set_title(metric)
        axis.set_xlabel("step")
        if metric == "grad_norm":
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    return _save_with_legend(figure, out, looks)


def plot_metric_by_step(
    curves: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]],
    out: str | Path,
    metric: str = "ndcg@10",
    groups: Mapping[str, str] | None = None,
) -> Path:
    """One panel per dataset: each system's held-out ``metric`` at the steps its checkpoints were evaluated
    (``curves[dataset][system][step][metric]``), steps on a log scale so that early steps stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Every point read before a figure is opened: a missing metric raises without leaving one behind.
    points = {
        dataset: {
            system: [(int(step), by_step[step][metric]) for step in sorted(by_step, key=int)]
            for system, by_step in by_system.items()
        }
        for dataset, by_system in curves.items()
    }
    systems = list(dict.fromkeys(system for by_system in curves.values() for system in by_system))
    looks = _looks(systems, groups)
    figure, axes = plt.subplots(
        1, len(curves), figsize=(5.0 * len(curves), 3.8), squeeze=False, layout="constrained"
    )
    for axis, (dataset, by_system) in zip(axes[0], points.items(), strict=True):
        for system, steps_values in by_system.items():
            steps, values = zip(*steps_values, strict=True)
            colour, style = looks[system]
            axis.plot(steps, values, marker="o", color=colour, linestyle=style, label=system)
        axis.set_xscale("log")
        axis.set_title(f"{dataset}: held-out {metric}")
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    return _save_with_legend(figure, out, looks, marker="o")


def _looks(names: list[str], groups: Mapping[str, str] | None) -> dict[str, tuple[str, str]]:
    """(colour, line style) per run from matplotlib's colour cycle: see ``run_styles``."""
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {
        name: (cycle[index % len(cycle)], style) for name, (index, style) in run_styles(names, groups).items()
    }


def _save_with_legend(
    figure, out: str | Path, looks: Mapping[str, tuple[str, str]], marker: str | None = None
) -> Path:
    """One legend entry per run (its colour and line style) below the panels, so that it never hides a
    curve; the figure written atomically as a PNG and closed."""
    import matplotlib.pyplot as plt

    handles = [
        plt.Line2D([], [], color=colour, linestyle=style, marker=marker, label=name)
        for name, (colour, style) in looks.items()
    ]
    columns = max(1, min(len(looks), 4))
    figure.legend(handles=handles, loc="outside lower center", ncol=columns, frameon=False)
    with atomic_path(out) as tmp:
        # "tight": a legend wider than one narrow panel is grown into, not cut at the figure's edges.
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return Path(out)
