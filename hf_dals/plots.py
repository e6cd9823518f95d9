"""Plots for the benchmark report, strategy schedules and finished runs (matplotlib, PNG without a display)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "depth_rows",
    "draw_lr_heatmap",
    "plot_accuracy_bars",
    "plot_lr_heatmaps",
    "plot_run",
    "plot_schedules",
    "plot_time_to_target",
    "plot_validation_curves",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _generation_colors(generations: Sequence[int]) -> list:
    plt = _pyplot()
    palette = plt.get_cmap("viridis")
    return [palette((g - 1) / 4) for g in generations]


def plot_accuracy_bars(by_task: Mapping[str, list], path: Path, *, order: Sequence[str]) -> Path:
    """One panel per task: test accuracy (mean, with the standard deviation as error bar) per strategy."""
    plt = _pyplot()
    figure, axes = plt.subplots(len(order), 1, figsize=(12, 3.2 * len(order)), squeeze=False)
    for axis, task in zip(axes[:, 0], order):
        summaries = by_task[task]
        x = np.arange(len(summaries))
        means = [100 * s.test_mean for s in summaries]
        errors = [0.0 if s.test_std is None else 100 * s.test_std for s in summaries]
        axis.bar(x, means, yerr=errors, color=_generation_colors([s.generation for s in summaries]), capsize=3)
        axis.set_xticks(x, [s.strategy for s in summaries], rotation=60, ha="right", fontsize=8)
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(task)
        low = min(m - e for m, e in zip(means, errors))
        axis.set_ylim(max(0.0, low - 5), min(100.0, max(means) + 5))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_validation_curves(records: Sequence[dict], task: str, path: Path, *, profile: str | None = None) -> Path:
    """Mean validation accuracy per epoch, one line per strategy, coloured by generation."""
    plt = _pyplot()
    curves: dict[str, list[list[float]]] = defaultdict(list)
    generations: dict[str, int] = {}
    for record in records:
        if record.get("status") != "ok" or record["task"] != task or (profile and record.get("profile") != profile):
            continue
        curves[record["strategy"]].append([row["validation_accuracy"] for row in record["epochs"]])
        generations[record["strategy"]] = record["generation"]
    figure, axis = plt.subplots(figsize=(9, 5))
    for strategy in sorted(curves, key=lambda name: (generations[name], name)):
        length = min(len(curve) for curve in curves[strategy])
        mean = np.mean([curve[:length] for curve in curves[strategy]], axis=0)
        color = _generation_colors([generations[strategy]])[0]
        style = "-" if strategy.startswith("dals") else "--"
        axis.plot(np.arange(1, length + 1), 100 * mean, style, color=color, label=strategy, linewidth=1.2)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy (%)")
    axis.set_title(f"{task}: validation accuracy (colour: generation 1 dark to 5 light; DALS solid)")
    axis.legend(fontsize=7, ncol=2, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_time_to_target(by_task: Mapping[str, list], path: Path, *, order: Sequence[str]) -> Path:
    """Epochs until validation accuracy first reaches each task's first target (missing: never)."""
    plt = _pyplot()
    figure, axes = plt.subplots(len(order), 1, figsize=(12, 3.0 * len(order)), squeeze=False)
    for axis, task in zip(axes[:, 0], order):
        summaries = by_task[task]
        targets = list(summaries[0].epochs_to_target) if summaries else []
        if not targets:
            axis.set_visible(False)
            continue
        target = targets[0]
        values = [s.epochs_to_target.get(target) for s in summaries]
        x = np.arange(len(summaries))
        heights = [np.nan if v is None else v for v in values]
        axis.bar(x, heights, color=_generation_colors([s.generation for s in summaries]))
        for index, value in enumerate(values):
            if value is None:
                axis.text(index, 0.05, "never", rotation=90, ha="center", va="bottom", fontsize=7)
        axis.set_xticks(x, [s.strategy for s in summaries], rotation=60, ha="right", fontsize=8)
        axis.set_ylabel(f"epochs to {float(target):.0%}")
        axis.set_title(f"{task}: epochs until validation accuracy reaches {float(target):.0%}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_lr_heatmaps(
    records: Sequence[dict],
    path: Path,
    *,
    families: Mapping[str, str],
    profile: str | None = None,
    task: str | None = None,
) -> Path | None:
    """Depth x step heatmaps of the learning rate, one run per family (``families``: title -> strategy).

    The run of each strategy is taken from ``task`` (default: the first fine-tuning task with
    records, else any task), seed order first. Only traces that reach the run's last optimizer
    step count: results files written before a sampling fix hold short runs whose trace stops
    after the first few steps. Returns ``None`` when no run has a complete trace.
    """
    chosen = []
    for title, strategy in families.items():
        candidates = [
            r
            for r in records
            if r.get("status") == "ok"
            and r["strategy"] == strategy
            and _trace_is_complete(r)
            and (profile is None or r.get("profile") == profile)
            and (task is None or r["task"] == task)
        ]
        candidates.sort(key=lambda r: (r["task"] not in ("trec", "rte", "imdb"), r["task"], r["seed"]))
        if candidates:
            chosen.append((title, candidates[0]))
    if not chosen:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.6 * len(chosen)), squeeze=False)
    for axis, (title, record) in zip(axes[:, 0], chosen):
        draw_lr_heatmap(axis, record["lr_trace"], title=f"{title}: {record['strategy']} on {record['task']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _trace_is_complete(record: Mapping) -> bool:
    steps = record.get("lr_trace", {}).get("steps")
    if not steps:
        return False
    total = record.get("optimizer_steps")
    return total is None or steps[-1] >= total - 1


_LAYER_NAME = re.compile(r"layer_(\d+)")


def depth_rows(trace: Mapping) -> list[str]:
    """Return the depth names of an LR trace from the bottom of the model to the top.

    A trace records its depth order under ``"order"``. Older traces lost it (their results
    file sorts keys alphabetically), so their rows are put back in order by name: embeddings
    first, numbered layers in numeric order, the head and classifier last.
    """
    names = list(trace["depths"])
    order = trace.get("order")
    if order is not None and sorted(order) == sorted(names):
        return list(order)

    def section(name: str) -> int:
        # 0 below the layers, 1 for the layers, 2 above them.
        if name == "embeddings":
            return 0
        if name == "head" or name.startswith("classifier"):
            return 2
        return 1

    def layer_index(name: str) -> int:
        match = _LAYER_NAME.fullmatch(name)
        return int(match[1]) if match else -1

    bottom = [name for name in names if section(name) == 0]
    middle = [name for name in names if section(name) == 1]
    top = [name for name in names if section(name) == 2]
    if all(layer_index(name) >= 0 for name in middle):
        middle.sort(key=layer_index)
    return bottom + middle + top



def draw_lr_heatmap(axis, trace: Mapping, *, title: str, decades: float | None = None) -> None:
    """Draw one depth x step heatmap of ``trace`` (``{"steps": [...], "depths": {name: [...]}}``).

    The colour is log10 of the learning rate. ``decades`` limits the colour range to that many
    powers of ten below the largest rate, so that a schedule decaying to almost 0 does not
    squeeze the rest into one colour. Lower rates, and 0, get the lowest colour.
    """
    plt = _pyplot()
    names = depth_rows(trace)
    values = np.array([trace["depths"][name] for name in names], dtype=float)
    positive = values[values > 0]
    floor = positive.min() / 10 if positive.size else 1e-12
    if decades is not None and positive.size:
        floor = max(floor, positive.max() / 10**decades)
    image = axis.imshow(
        np.log10(np.maximum(values, floor)),
        aspect="auto",
        origin="lower",
        extent=(trace["steps"][0], trace["steps"][-1], -0.5, len(names) - 0.5),
        cmap="magma",
    )
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.set_xlabel("optimizer step")
    axis.set_title(title, fontsize=9)
    colorbar = plt.colorbar(image, ax=axis, pad=0.01)
    colorbar.set_label("log10 lr", fontsize=7)


# -- schedules and runs --------------------------------------------------------------------------

# Figure sizes in inches at PLOT_DPI, so a figure's pixel size is known before it is drawn.
PLOT_DPI = 110
SCHEDULE_FIGURE_WIDTH = 12.0
SCHEDULE_ROW_HEIGHT = 3.2
RUN_FIGURE_WIDTH = 10.0
RUN_PANEL_HEIGHT = 2.4
# Colour range of the schedule heatmaps, in powers of ten below the peak learning rate.
HEATMAP_DECADES = 5.0

_PHASE_COLORS = ("#4c72b0", "#dd8452", "#55a868")


def _evenly_spaced(names: Sequence[str], count: int) -> list[str]:
    if len(names) <= count:
        return list(names)
    indices = sorted({round(i * (len(names) - 1) / (count - 1)) for i in range(count)})
    return [names[i] for i in indices]


def _positive_or_nan(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return np.where(array > 0, array, np.nan)


def _shade_phases(axis, phases: Mapping) -> None:
    """Shade the step ranges of each DALS phase behind the lines of ``axis``, with legend entries."""
    from .lr_trace import PHASE_NAMES

    steps, values = phases["steps"], phases["phases"]
    labelled: set[int] = set()
    start = 0
    for index in range(1, len(steps) + 1):
        if index < len(steps) and values[index] == values[start]:
            continue
        phase = values[start]
        # A logged phase is drawn from the step before its first log to its last log.
        left = steps[start - 1] if start > 0 else steps[0] - 1
        right = steps[index - 1]
        label = None
        if phase not in labelled:
            label = f"phase {phase} ({PHASE_NAMES[phase]}, {phases['source']})"
            labelled.add(phase)
        axis.axvspan(left, right, color=_PHASE_COLORS[phase], alpha=0.12, linewidth=0, label=label)
        start = index


def plot_schedules(
    tables: Sequence[Mapping],
    path: Path,
    *,
    phases: Mapping[str, Mapping] | None = None,
    line_count: int = 4,
) -> Path:
    """Draw one row per strategy: a depth x step heatmap of the learning rate and lines of a few depths.

    ``tables`` come from :func:`hf_dals.lr_trace.schedule_table`. ``phases`` maps a strategy
    name to a DALS phase sequence (:func:`hf_dals.lr_trace.assumed_phases` or
    :func:`hf_dals.lr_trace.logged_phases`), shaded behind its lines; the phase changes the
    gradient filter of DALS, not its learning rate. The figure is ``SCHEDULE_FIGURE_WIDTH`` x
    ``SCHEDULE_ROW_HEIGHT`` per row inches at ``PLOT_DPI``.
    """
    if not tables:
        raise ValueError("no schedule to plot; pass at least one table from schedule_table")
    plt = _pyplot()
    figure, axes = plt.subplots(
        len(tables),
        2,
        figsize=(SCHEDULE_FIGURE_WIDTH, SCHEDULE_ROW_HEIGHT * len(tables)),
        squeeze=False,
        gridspec_kw={"width_ratios": (3, 2)},
    )
    for (heatmap_axis, line_axis), table in zip(axes, tables):
        name = table["strategy"]
        steps = table["steps"]
        draw_lr_heatmap(
            heatmap_axis, table, title=f"{name}: learning rate by depth over {len(steps)} steps", decades=HEATMAP_DECADES
        )

        depth_names = list(table["depths"])
        rows = np.array([table["depths"][row] for row in depth_names])
        same_everywhere = bool(np.all(rows == rows[0]))
        for row, color in zip(
            reversed(_evenly_spaced(depth_names, line_count)), plt.get_cmap("viridis")(np.linspace(0.9, 0.1, line_count))
        ):
            line_axis.plot(steps, _positive_or_nan(table["depths"][row]), color=color, linewidth=1.2, label=row)
        sequence = (phases or {}).get(name)
        if sequence is not None:
            _shade_phases(line_axis, sequence)
        line_axis.set_yscale("log")
        line_axis.set_xlim(steps[0], steps[-1])
        line_axis.set_xlabel("optimizer step")
        line_axis.set_ylabel("lr (log; 0 not drawn)", fontsize=8)
        suffix = " (every depth has this rate)" if same_everywhere else ""
        line_axis.set_title(f"{name}: selected depths{suffix}", fontsize=9)
        line_axis.legend(fontsize=6, loc="lower center", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=PLOT_DPI)
    plt.close(figure)
    return path


def plot_run(series: Mapping, path: Path, *, title: str) -> Path:
    """Draw a finished run from its log: learning rate per depth, loss, and for DALS the phase and trust ratios.

    ``series`` comes from :func:`hf_dals.lr_trace.run_series`. One panel per quantity that was
    logged, each ``RUN_FIGURE_WIDTH`` x ``RUN_PANEL_HEIGHT`` inches at ``PLOT_DPI``.
    """
    from .lr_trace import PHASE_NAMES

    panels = ["lr", "loss"]
    if series["phases"] is not None:
        panels.append("phase")
    if series["trust_ratio"]:
        panels.append("trust_ratio")
    plt = _pyplot()
    figure, axes = plt.subplots(
        len(panels), 1, figsize=(RUN_FIGURE_WIDTH, RUN_PANEL_HEIGHT * len(panels)), sharex=True, squeeze=False
    )
    axes = dict(zip(panels, axes[:, 0]))

    def draw_per_depth(axis, by_depth: Mapping) -> None:
        colors = plt.get_cmap("viridis")(np.linspace(0.1, 0.9, max(len(by_depth), 1)))
        for (name, (steps, values)), color in zip(by_depth.items(), colors):
            axis.plot(steps, values, color=color, linewidth=1.1, label=name)
        axis.legend(fontsize=6, ncol=4, loc="best")

    draw_per_depth(axes["lr"], {name: (s, _positive_or_nan(v)) for name, (s, v) in series["lr"].items()})
    axes["lr"].set_yscale("log")
    axes["lr"].set_ylabel("lr (log; 0 not drawn)", fontsize=8)
    axes["lr"].set_title(title, fontsize=9)

    loss_steps, losses = series["loss"]
    axes["loss"].plot(loss_steps, losses, color="black", linewidth=1.1, label="training loss")
    eval_steps, eval_losses = series["eval_loss"]
    if eval_steps:
        axes["loss"].plot(eval_steps, eval_losses, "o", color="tab:red", markersize=4, label="validation loss")
    axes["loss"].set_ylabel("loss", fontsize=8)
    axes["loss"].legend(fontsize=7)

    if "phase" in axes:
        phases = series["phases"]
        axes["phase"].step(phases["steps"], phases["phases"], where="post", color="black", linewidth=1.1)
        axes["phase"].set_yticks(range(3), [f"{i} {name}" for i, name in enumerate(PHASE_NAMES)], fontsize=7)
        axes["phase"].set_ylim(-0.3, 2.3)
        axes["phase"].set_ylabel("DALS phase", fontsize=8)
    if "trust_ratio" in axes:
        draw_per_depth(axes["trust_ratio"], series["trust_ratio"])
        axes["trust_ratio"].set_ylabel("mean trust ratio", fontsize=8)

    axes[panels[-1]].set_xlabel("optimizer step")
    figure.tight_layout()
    figure.savefig(path, dpi=PLOT_DPI)
    plt.close(figure)
    return path
