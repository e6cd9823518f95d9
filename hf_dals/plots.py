"""Plots for the benchmark report (matplotlib, written as PNG without a display)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_accuracy_bars", "plot_lr_heatmaps", "plot_time_to_target", "plot_validation_curves"]


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
    records, else any task), seed order first. Returns ``None`` when no run has a trace.
    """
    chosen = []
    for title, strategy in families.items():
        candidates = [
            r
            for r in records
            if r.get("status") == "ok"
            and r["strategy"] == strategy
            and r.get("lr_trace", {}).get("steps")
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


def draw_lr_heatmap(axis, trace: Mapping, *, title: str) -> None:
    """Draw one depth x step heatmap of ``trace`` (``{"steps": [...], "depths": {name: [...]}}``)."""
    plt = _pyplot()
    names = list(trace["depths"])
    values = np.array([trace["depths"][name] for name in names], dtype=float)
    positive = values[values > 0]
    floor = positive.min() / 10 if positive.size else 1e-12
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
