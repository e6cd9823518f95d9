"""The benchmark runner (grid, resume after a kill) and the report's aggregation math."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from hf_dals.benchmark import PROFILES, RunRecorder, append_record, load_records, plan_grid, summarize_epochs
from hf_dals.report import average_ranks, mean_and_std, summarize, write_report


def test_quick_profile_covers_every_strategy_and_the_core_seeds():
    from hf_dals import list_strategies

    grid = plan_grid(PROFILES["quick"])
    names = {s.name for s in list_strategies()}
    tasks = set(PROFILES["quick"].tasks)
    assert {(r.task, r.strategy) for r in grid if r.seed == 1} == {(t, n) for t in tasks for n in names}
    core = PROFILES["quick"].core_strategies
    assert {(r.strategy, r.seed) for r in grid if r.seed != 1} == {(n, s) for n in core for s in (2, 3)}
    assert len(grid) == len(tasks) * (len(names) + 2 * len(core))
    assert len({r.key for r in grid}) == len(grid)


def test_plan_grid_rejects_unknown_names():
    with pytest.raises(ValueError, match="tasks \\['mnist'\\] are not in profile 'quick'"):
        plan_grid(PROFILES["quick"], tasks=["mnist"])
    with pytest.raises(ValueError, match="unknown lr_strategy 'dal'"):
        plan_grid(PROFILES["quick"], strategies=["dal"])


def test_summarize_epochs_selects_on_validation():
    epochs = [
        {"epoch": 1.0, "validation_accuracy": 0.70, "test_accuracy": 0.69},
        {"epoch": 2.0, "validation_accuracy": 0.80, "test_accuracy": 0.75},
        {"epoch": 3.0, "validation_accuracy": 0.80, "test_accuracy": 0.90},
        {"epoch": 4.0, "validation_accuracy": 0.78, "test_accuracy": 0.77},
    ]
    summary = summarize_epochs(epochs, targets=(0.75, 0.85))
    assert summary["selected_epoch"] == 2.0  # the earliest of the tied best epochs
    assert summary["test_accuracy"] == 0.75
    assert summary["best_test_accuracy_over_epochs"] == 0.90
    assert summary["epochs_to_target"] == {"0.75": 2.0, "0.85": None}


def test_mean_std_and_ranks_by_hand():
    mean, std = mean_and_std([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9)
    assert std == pytest.approx(0.1)
    assert mean_and_std([0.5]) == (0.5, None)
    assert average_ranks({"a": 0.9, "b": 0.7, "c": 0.9, "d": 0.5}) == {"a": 1.5, "c": 1.5, "b": 3.0, "d": 4.0}


def record(strategy, seed, test, *, task="trec", generation=5, validation=None, epochs_to=None):
    return {
        "profile": "quick", "task": task, "strategy": strategy, "seed": seed, "status": "ok",
        "generation": generation, "test_accuracy": test, "validation_accuracy": validation or test,
        "best_test_accuracy_over_epochs": test + 0.01, "epochs_to_target": {"0.8": epochs_to},
        "wall_time_seconds": 10.0 * seed, "mean_optimizer_step_seconds": 0.01,
        "epochs": [{"epoch": 1.0, "validation_accuracy": 0.5, "test_accuracy": 0.5},
                   {"epoch": 2.0, "validation_accuracy": validation or test, "test_accuracy": test}],
        "lr_trace": {"steps": [0, 1, 2], "depths": {"embeddings": [0.1, 0.2, 0.1], "head": [0.3, 0.4, 0.2]}},
    }  # fmt: skip


HAND_MADE = [
    record("dals", 1, 0.80, epochs_to=2.0),
    record("dals", 2, 0.90, epochs_to=None),
    record("dals", 3, 0.85, epochs_to=1.0),
    record("adamw", 1, 0.95, generation=3, epochs_to=1.0),
    record("adamw", 2, 0.93, generation=3, epochs_to=1.0),
    {"profile": "quick", "task": "trec", "strategy": "sam", "seed": 1, "status": "failed", "error": "RuntimeError: boom"},
]


def test_summarize_hand_made_results():
    by_task = summarize(HAND_MADE)
    cells = {s.strategy: s for s in by_task["trec"]}
    assert set(cells) == {"dals", "adamw"}
    assert cells["dals"].test_mean == pytest.approx(0.85)
    assert cells["dals"].test_std == pytest.approx(0.05)
    assert cells["dals"].seeds == [1, 2, 3]
    assert cells["dals"].epochs_to_target == {"0.8": pytest.approx(1.5)}
    assert cells["adamw"].test_mean == pytest.approx(0.94)
    assert cells["adamw"].test_std == pytest.approx(math.sqrt(0.0002))
    assert cells["adamw"].rank == 1.0
    assert cells["dals"].rank == 2.0
    assert cells["dals"].wall_time_mean == pytest.approx(20.0)


def test_report_writes_tables_and_plots(tmp_path):
    results = tmp_path / "results.jsonl"
    for entry in HAND_MADE:
        append_record(results, entry)
    report = write_report(results, tmp_path / "docs" / "benchmarks.md", preamble="Command: `hf-dals benchmark`")
    text = report.read_text()
    assert "Command: `hf-dals benchmark`" in text
    assert "| 5 | `dals` | 85.0 ± 5.0 | 3 | 2 | 86.0 | 94.0 |" in text
    assert "| 3 | `adamw` | 94.0 ± 1.4 | 2 | 1 | 95.0 | 97.6 |" in text
    assert "sam / seed 1: RuntimeError: boom" in text
    for name in ("accuracy.png", "curves_trec.png", "time_to_target.png", "lr_heatmaps.png"):
        image = tmp_path / "docs" / "figures" / name
        assert image.stat().st_size > 5_000, name
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_records_skips_a_cut_line(tmp_path, caplog):
    results = tmp_path / "results.jsonl"
    append_record(results, HAND_MADE[0])
    with results.open("a") as handle:
        handle.write('{"profile": "quick", "task": "tr')
    assert load_records(results) == [HAND_MADE[0]]
    assert "not complete JSON" in caplog.text


@pytest.mark.slow
def test_resume_after_kill_loses_nothing(tmp_path):
    results = tmp_path / "results.jsonl"
    command = [
        sys.executable, "-m", "hf_dals.cli", "benchmark", "--profile", "tiny", "--results", str(results),
        "--work_dir", str(tmp_path / "work"), "--strategies", "dals", "fixed_sgd", "adamw", "cosine_sgd",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(load_records(results)) < 2:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = load_records(results)
    assert 2 <= len(first) < 5, "the kill should land after two runs and before the end of the grid"

    subprocess.run(command, env=environment, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    records = load_records(results)
    keys = [(r["task"], r["strategy"], r["seed"]) for r in records]
    assert len(keys) == len(set(keys)) == 5  # four strategies with seed 1, then the core strategy dals with seed 2
    assert records[: len(first)] == first
    assert all(r["status"] == "ok" for r in records)
    assert {json.dumps(r["epochs"]) != "[]" for r in records} == {True}


@pytest.mark.parametrize(("steps", "points", "expected_count"), [(12, 200, 12), (1000, 200, 200), (1, 200, 1)])
def test_lr_trace_spans_whole_run(steps, points, expected_count):
    recorder = RunRecorder()
    recorder.lr_steps = list(range(steps))
    recorder.lr_by_depth = {"head": [0.1 * step for step in range(steps)]}
    trace = recorder.lr_trace(points)
    assert len(trace["steps"]) == expected_count
    assert trace["steps"][0] == 0
    assert trace["steps"][-1] == steps - 1
    assert trace["depths"]["head"] == [0.1 * step for step in trace["steps"]]


def test_lr_heatmaps_skip_incomplete_traces(tmp_path):
    from hf_dals.plots import plot_lr_heatmaps

    cut = {"status": "ok", "strategy": "dals", "task": "trec", "seed": 1, "optimizer_steps": 50,
           "lr_trace": {"steps": [0, 1], "depths": {"head": [0.1, 0.2]}}}  # fmt: skip
    assert plot_lr_heatmaps([cut], tmp_path / "cut.png", families={"DALS": "dals"}) is None
    whole = {**cut, "optimizer_steps": 2}
    path = plot_lr_heatmaps([cut, whole], tmp_path / "whole.png", families={"DALS": "dals"})
    assert path is not None and path.stat().st_size > 0


def test_lr_trace_keeps_depth_order():
    from hf_dals.plots import depth_rows

    recorder = RunRecorder()
    recorder.lr_steps = [0, 1]
    recorder.lr_by_depth = {"embeddings": [0.1, 0.1], "layer_0": [0.2, 0.2], "layer_1": [0.3, 0.3], "head": [0.4, 0.4]}
    stored = json.loads(json.dumps({"lr_trace": recorder.lr_trace()}, sort_keys=True))["lr_trace"]
    assert list(stored["depths"]) == ["embeddings", "head", "layer_0", "layer_1"]
    assert depth_rows(stored) == ["embeddings", "layer_0", "layer_1", "head"]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["embeddings", "head", "layer_0", "layer_10", "layer_2"], ["embeddings", "layer_0", "layer_2", "layer_10", "head"]),
        (["classifier.0", "classifier.2", "features.0", "features.3"], ["features.0", "features.3", "classifier.0", "classifier.2"]),
        (["decay", "no_decay"], ["decay", "no_decay"]),
    ],
)
def test_depth_rows_of_traces_without_order(names, expected):
    from hf_dals.plots import depth_rows

    assert depth_rows({"steps": [0], "depths": {name: [0.1] for name in names}}) == expected
