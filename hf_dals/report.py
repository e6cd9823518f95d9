"""Turn a benchmark results file into a Markdown report with plots.

Per task, a table gives for every strategy (grouped by generation) the mean and standard deviation
over seeds of the test accuracy at the epoch chosen on validation, its rank, the best test
accuracy over epochs (the protocol of arXiv:2604.27295, shown only to compare with the paper's
Table 2, whose value sits beside it), epochs to the accuracy targets, wall time and optimizer step
time. Plots: accuracy with error bars per task, validation curves, time to target, and a
depth x step learning-rate heatmap for each strategy family.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .benchmark import load_records

__all__ = [
    "PAPER_TABLE_2",
    "Summary",
    "average_ranks",
    "mean_and_std",
    "summarize",
    "write_report",
]

logger = logging.getLogger(__name__)

# Best test accuracy (%) over epochs, one seed, from Table 2 of arXiv:2604.27295. Its synthetic
# column is the task called "synthetic" here.
PAPER_TABLE_2: dict[str, dict[str, float]] = {
    "fixed_sgd": {"synthetic": 97.9, "cifar10": 78.8, "rte": 60.6, "trec": 96.6, "imdb": 90.5},
    "cosine_sgd": {"synthetic": 97.6, "cifar10": 80.2, "rte": 57.8, "trec": 94.8, "imdb": 90.7},
    "sgdr": {"synthetic": 97.8, "cifar10": 79.7, "rte": 59.9, "trec": 96.2, "imdb": 90.6},
    "adam": {"synthetic": 96.8, "cifar10": 75.5, "rte": 59.6, "trec": 97.6, "imdb": 90.8},
    "adamw": {"synthetic": 96.2, "cifar10": 75.7, "rte": 60.3, "trec": 97.6, "imdb": 90.7},
    "adabound": {"synthetic": 95.5, "cifar10": 75.5, "rte": 57.4, "trec": 92.8, "imdb": 90.0},
    "lars": {"synthetic": 97.7, "cifar10": 74.9, "rte": 59.6, "trec": 95.2, "imdb": 90.0},
    "discriminative": {"synthetic": 97.1, "cifar10": 77.4, "rte": 57.8, "trec": 84.6, "imdb": 88.6},
    "radam": {"synthetic": 96.5, "cifar10": 75.8, "rte": 62.8, "trec": 96.8, "imdb": 91.2},
    "lion": {"synthetic": 97.0, "cifar10": 76.6, "rte": 58.8, "trec": 95.0, "imdb": 87.8},
    "lookahead_adamw": {"synthetic": 96.0, "cifar10": 75.1, "rte": 59.9, "trec": 97.6, "imdb": 91.1},
    "sam": {"synthetic": 97.5, "cifar10": 76.9, "rte": 59.2, "trec": 96.4, "imdb": 90.5},
    "grokfast": {"synthetic": 97.3, "cifar10": 78.5, "rte": 56.0, "trec": 84.4, "imdb": 89.5},
    "stlr_discriminative": {"synthetic": 95.9, "cifar10": 79.3, "rte": 55.2, "trec": 43.6, "imdb": 85.4},
    "sam_discriminative": {"synthetic": 97.4, "cifar10": 77.9, "rte": 58.5, "trec": 84.6, "imdb": 88.6},
    "dals": {"synthetic": 98.0, "cifar10": 76.7, "rte": 59.2, "trec": 94.0, "imdb": 90.1},
    "dals_fast": {"synthetic": 97.8, "cifar10": 76.9, "rte": 59.9, "trec": 95.0, "imdb": 90.1},
    "dals_acc": {"synthetic": 97.8, "cifar10": 76.5, "rte": 59.2, "trec": 94.2, "imdb": 90.0},
}

TASK_TITLES = {
    "synthetic": "Synthetic (authors' task, MLP from scratch)",
    "synthetic_argmax10": "Synthetic, 10 classes (the paper's text, MLP from scratch)",
    "cifar10": "CIFAR-10 (ConvNet from scratch)",
    "rte": "RTE (fine-tuning)",
    "trec": "TREC-6 (fine-tuning)",
    "imdb": "IMDb (fine-tuning)",
    "trec_scratch": "TREC-6 (small BERT from scratch)",
}

# One strategy per family for the learning-rate heatmaps.
HEATMAP_FAMILIES = {
    "global schedule": "cosine_sgd",
    "layer-wise, constant": "discriminative",
    "layer-wise decay, linear": "llrd_adamw",
    "ULMFiT STLR + discriminative": "stlr_discriminative",
    "gradual unfreezing": "ulmfit",
    "DALS": "dals",
    "DALS-Acc (warm restarts)": "dals_acc",
}


def mean_and_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Return the mean and the sample standard deviation (``None`` for a single value)."""
    if not values:
        raise ValueError("cannot summarise an empty list of values")
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def average_ranks(scores: dict[str, float]) -> dict[str, float]:
    """Rank by score, highest first (rank 1); tied scores share the mean of their ranks."""
    ordered = sorted(scores.items(), key=lambda item: -item[1])
    ranks: dict[str, float] = {}
    position = 0
    while position < len(ordered):
        end = position
        while end + 1 < len(ordered) and ordered[end + 1][1] == ordered[position][1]:
            end += 1
        shared = (position + 1 + end + 1) / 2
        for name, _ in ordered[position : end + 1]:
            ranks[name] = shared
        position = end + 1
    return ranks


@dataclass
class Summary:
    """The aggregate of one (task, strategy) cell over its seeds."""

    task: str
    strategy: str
    generation: int
    seeds: list[int]
    test_mean: float
    test_std: float | None
    best_test_mean: float
    validation_mean: float
    epochs_to_target: dict[str, float | None]
    wall_time_mean: float
    step_seconds_mean: float | None
    rank: float = math.nan


def _mean_or_none(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summarize(records: Sequence[dict], profile: str | None = None) -> dict[str, list[Summary]]:
    """Aggregate successful records by task and strategy, and rank strategies within each task.

    ``epochs_to_target`` is the mean over the seeds that reached the target; a target no seed
    reached is ``None``.
    """
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in records:
        if record.get("status") != "ok" or (profile is not None and record.get("profile") != profile):
            continue
        cells[(record["task"], record["strategy"])].append(record)

    by_task: dict[str, list[Summary]] = defaultdict(list)
    for (task, strategy), runs in cells.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        test_mean, test_std = mean_and_std([r["test_accuracy"] for r in runs])
        targets = runs[0].get("epochs_to_target", {})
        by_task[task].append(
            Summary(
                task=task,
                strategy=strategy,
                generation=runs[0]["generation"],
                seeds=[r["seed"] for r in runs],
                test_mean=test_mean,
                test_std=test_std,
                best_test_mean=statistics.fmean(r["best_test_accuracy_over_epochs"] for r in runs),
                validation_mean=statistics.fmean(r["validation_accuracy"] for r in runs),
                epochs_to_target={t: _mean_or_none(r["epochs_to_target"].get(t) for r in runs) for t in targets},
                wall_time_mean=statistics.fmean(r["wall_time_seconds"] for r in runs),
                step_seconds_mean=_mean_or_none(r.get("mean_optimizer_step_seconds") for r in runs),
            )
        )
    for summaries in by_task.values():
        ranks = average_ranks({s.strategy: s.test_mean for s in summaries})
        for summary in summaries:
            summary.rank = ranks[summary.strategy]
        summaries.sort(key=lambda s: (s.generation, s.strategy))
    return dict(by_task)


# -- Markdown ------------------------------------------------------------------------------------


def _percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _task_table(summaries: list[Summary]) -> list[str]:
    targets = list(summaries[0].epochs_to_target) if summaries else []
    target_headers = "".join(f" epochs to {float(t):.0%} |" for t in targets)
    lines = [
        "| gen | strategy | test acc. (%) mean ± std | seeds | rank | best test over epochs (%) | paper Table 2 (%) |"
        + target_headers
        + " wall time (s) | optimizer step (ms) |",
        "|---:|---|---:|---:|---:|---:|---:|" + "---:|" * len(targets) + "---:|---:|",
    ]
    for s in summaries:
        std = "n/a" if s.test_std is None else f"{100 * s.test_std:.1f}"
        paper = PAPER_TABLE_2.get(s.strategy, {}).get(s.task)
        step = "-" if s.step_seconds_mean is None else f"{1000 * s.step_seconds_mean:.1f}"
        target_cells = "".join(
            f" {'never' if v is None else f'{v:.1f}'} |" for v in s.epochs_to_target.values()
        )
        lines.append(
            f"| {s.generation} | `{s.strategy}` | {_percent(s.test_mean)} ± {std} | {len(s.seeds)} | {s.rank:g} "
            f"| {_percent(s.best_test_mean)} | {'-' if paper is None else f'{paper:.1f}'} |{target_cells} "
            f"{s.wall_time_mean:.0f} | {step} |"
        )
    return lines


def write_report(
    results_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    figures_dir: str | os.PathLike | None = None,
    profile: str | None = None,
    preamble: str = "",
) -> Path:
    """Write the Markdown report (and its PNG plots) for the records in ``results_path``."""
    records = load_records(results_path)
    if not records:
        raise ValueError(f"{results_path} holds no benchmark records")
    output_path = Path(output_path)
    figures_dir = Path(figures_dir) if figures_dir is not None else output_path.parent / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    by_task = summarize(records, profile)
    failed = [r for r in records if r.get("status") != "ok" and (profile is None or r.get("profile") == profile)]

    from . import plots

    lines = ["# Benchmark of the learning-rate strategies", ""]
    if preamble:
        lines += [preamble.rstrip(), ""]
    order = [t for t in TASK_TITLES if t in by_task] + sorted(t for t in by_task if t not in TASK_TITLES)
    accuracy_figure = plots.plot_accuracy_bars(by_task, figures_dir / "accuracy.png", order=order)
    lines += [f"![Test accuracy per task, mean and standard deviation over seeds]({_relative(accuracy_figure, output_path)})", ""]
    for task in order:
        summaries = by_task[task]
        lines += [f"## {TASK_TITLES.get(task, task)}", ""]
        lines += _task_table(summaries)
        curves = plots.plot_validation_curves(records, task, figures_dir / f"curves_{task}.png", profile=profile)
        lines += ["", f"![Validation accuracy per epoch on {task}]({_relative(curves, output_path)})", ""]
    time_figure = plots.plot_time_to_target(by_task, figures_dir / "time_to_target.png", order=order)
    lines += ["## Time to target", "", f"![Epochs to the first accuracy target]({_relative(time_figure, output_path)})", ""]
    heatmap = plots.plot_lr_heatmaps(records, figures_dir / "lr_heatmaps.png", families=HEATMAP_FAMILIES, profile=profile)
    if heatmap is not None:
        lines += [
            "## Learning rate per depth and step",
            "",
            f"![Learning rate of every depth over training, one strategy per family]({_relative(heatmap, output_path)})",
            "",
        ]
    if failed:
        lines += ["## Failed runs", ""]
        lines += [f"- {r['task']} / {r['strategy']} / seed {r['seed']}: {r.get('error', 'unknown error')}" for r in failed]
        lines.append("")
    output_path.write_text("\n".join(lines))
    return output_path


def _relative(path: Path, document: Path) -> str:
    return os.path.relpath(path, document.parent)

