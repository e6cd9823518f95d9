"""Learning-rate traces for plots: a strategy's schedule without training, and a finished run's logs.

:func:`schedule_table` builds a strategy's optimizer and scheduler on a model and steps the
scheduler, without gradients, so it records exactly the learning rates that ``DALSTrainer``
would use. :func:`load_log_history` and :func:`run_series` read what a finished run logged to
its ``trainer_state.json``.

Steps are counted as Trainer's ``global_step`` counts them: the value at step ``s`` is the
learning rate of the ``s``-th optimizer update (1-based), which is what ``DALSTrainer`` logs as
``lr/<depth name>`` at step ``s``.
"""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .strategies import Strategy, get_strategy
from .trainer import unwrap_optimizer
from .training_args import DALSTrainingArguments

__all__ = [
    "PHASE_NAMES",
    "assumed_phases",
    "find_trainer_state",
    "load_log_history",
    "logged_phases",
    "run_series",
    "schedule_table",
]

PHASE_NAMES = ("explore", "exploit", "refine")

# torch warns when a scheduler steps before its optimizer ever has; here that is the point.
_SCHEDULER_ORDER_WARNING = r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"


def _row_name(group: Mapping[str, Any], index: int) -> str:
    return group.get("depth_name") or group.get("name") or f"group_{index}"


def schedule_table(
    strategy: str | Strategy,
    model: nn.Module,
    num_training_steps: int,
    *,
    args: DALSTrainingArguments | None = None,
    steps_per_epoch: float | None = None,
) -> dict[str, Any]:
    """Record every parameter group's learning rate over ``num_training_steps`` optimizer steps.

    The strategy's optimizer and scheduler are built on ``model`` with ``args`` (default: the
    strategy's fine-tuning defaults), and the scheduler is stepped ``num_training_steps`` times.
    No gradient is computed and no weight changes. ``steps_per_epoch`` sets the epoch-based parts
    of some schedules (SGDR cycles, ULMFiT unfreezing); the default is the number of steps
    divided by ``args.num_train_epochs``.

    Returns a dictionary with ``strategy`` (the name), ``steps`` (``1..num_training_steps``),
    ``groups`` (group name -> learning rates) and ``depths`` (depth name -> learning rates, bottom
    to top, the largest rate among the depth's groups). Groups without a depth (strategies that
    treat all depths alike) appear in ``depths`` under their group name. The ``steps`` and
    ``depths`` entries are the trace that :func:`hf_dals.plots.draw_lr_heatmap` draws.

    Raises:
        ValueError: for an invalid step count, an unknown strategy, or arguments of another strategy.
    """
    if not isinstance(num_training_steps, int) or num_training_steps < 1:
        raise ValueError(f"invalid num_training_steps: {num_training_steps!r} (expected an integer >= 1)")
    strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
    with tempfile.TemporaryDirectory() as output_dir:
        if args is None:
            args = DALSTrainingArguments(output_dir=output_dir, lr_strategy=strategy.name, report_to="none", use_cpu=True)
        if args.lr_strategy != strategy.name:
            raise ValueError(
                f"args are for lr_strategy {args.lr_strategy!r} but the table is for {strategy.name!r}; "
                f"build the arguments with lr_strategy={strategy.name!r}"
            )
        optimizer = strategy.create_optimizer(model, args)
        scheduler = strategy.create_scheduler(optimizer, args, num_training_steps, steps_per_epoch=steps_per_epoch)

    groups = unwrap_optimizer(optimizer).param_groups
    names = [group.get("name") or f"group_{index}" for index, group in enumerate(groups)]
    per_group: list[list[float]] = [[] for _ in groups]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SCHEDULER_ORDER_WARNING, category=UserWarning)
        for _ in range(num_training_steps):
            for series, group in zip(per_group, groups):
                series.append(float(group["lr"]))
            scheduler.step()

    depths: dict[str, list[float]] = {}
    for index, (group, series) in enumerate(zip(groups, per_group)):
        row = _row_name(group, index)
        if row in depths:
            depths[row] = [max(a, b) for a, b in zip(depths[row], series)]
        else:
            depths[row] = list(series)
    return {
        "strategy": strategy.name,
        "steps": list(range(1, num_training_steps + 1)),
        "groups": dict(zip(names, per_group)),
        "depths": depths,
    }


def assumed_phases(num_training_steps: int, bounds: Sequence[float] = (1 / 3, 2 / 3)) -> dict[str, Any]:
    """Return an assumed DALS phase sequence: phase 1 from ``bounds[0]``, phase 2 from ``bounds[1]``.

    The bounds are fractions of the training steps. DALS picks the phase from the training loss,
    so no schedule can predict it. This sequence only shows what the phases mean on the step axis.
    Returns ``{"steps": [...], "phases": [...], "source": "assumed"}``.

    Raises:
        ValueError: unless ``0 <= bounds[0] <= bounds[1] <= 1``.
    """
    if len(bounds) != 2 or not 0.0 <= bounds[0] <= bounds[1] <= 1.0:
        raise ValueError(f"invalid phase bounds: {list(bounds)} (expected two fractions 0 <= first <= second <= 1)")
    steps = list(range(1, num_training_steps + 1))
    phases = [int(step > bounds[0] * num_training_steps) + int(step > bounds[1] * num_training_steps) for step in steps]
    return {"steps": steps, "phases": phases, "source": "assumed"}


def find_trainer_state(output_dir: str | Path) -> Path:
    """Return ``output_dir/trainer_state.json``, or that of the latest ``checkpoint-*`` folder.

    Raises:
        FileNotFoundError: when neither exists, naming the folder.
    """
    output_dir = Path(output_dir)
    direct = output_dir / "trainer_state.json"
    if direct.is_file():
        return direct
    checkpoints = []
    for folder in output_dir.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if match and (folder / "trainer_state.json").is_file():
            checkpoints.append((int(match.group(1)), folder / "trainer_state.json"))
    if not checkpoints:
        raise FileNotFoundError(
            f"no trainer_state.json in {output_dir} or its checkpoint-* folders; pass the output_dir of a "
            "finished run (Trainer writes the file at every checkpoint, and trainer.save_state() at the end)"
        )
    return max(checkpoints)[1]


def load_log_history(output_dir: str | Path) -> tuple[Path, list[dict[str, Any]]]:
    """Return the path of the run's ``trainer_state.json`` and its ``log_history``."""
    path = find_trainer_state(output_dir)
    state = json.loads(path.read_text(encoding="utf-8"))
    return path, list(state.get("log_history", []))


def _series(entries: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(int(entry["step"]), float(entry[key])) for entry in entries if key in entry and "step" in entry]
    return [step for step, _ in pairs], [value for _, value in pairs]


def _depth_order(name: str) -> tuple:
    # trainer_state.json stores each log entry with sorted keys, so the depth order is rebuilt
    # from hf-dals' depth names: embeddings, then layers by number, then head.
    rank = 1
    if name == "embeddings":
        rank = 0
    elif name == "head":
        rank = 2
    return (rank, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)])


def _prefixed(entries: Sequence[Mapping[str, Any]], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    names = {key[len(prefix) :] for entry in entries for key in entry if key.startswith(prefix)}
    return {name: _series(entries, prefix + name) for name in sorted(names, key=_depth_order)}


def logged_phases(log_history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Return the logged ``dals_phase`` as ``{"steps", "phases", "source": "logged"}``, or ``None``."""
    steps, phases = _series(log_history, "dals_phase")
    if not steps:
        return None
    return {"steps": steps, "phases": [int(phase) for phase in phases], "source": "logged"}


def run_series(log_history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collect the series of a run's log: learning rates, losses, DALS phase and trust ratios.

    Returns ``lr`` (depth name -> (steps, values), from ``lr/<depth>``, or Trainer's
    ``learning_rate`` when no depth was logged), ``loss`` and ``eval_loss`` (steps, values),
    ``phases`` (see :func:`logged_phases`) and ``trust_ratio`` (depth name -> (steps, values)).
    Depths are ordered embeddings, ``layer_<i>`` by number, head; other names sort naturally.

    Raises:
        ValueError: when the log has no training loss.
    """
    training = [entry for entry in log_history if "loss" in entry]
    if not training:
        raise ValueError(
            "the run logged no training loss; set logging_steps to at most the number of training steps "
            "and make sure training ran"
        )
    learning_rates = _prefixed(training, "lr/")
    if not learning_rates:
        learning_rates = {"learning_rate": _series(training, "learning_rate")}
    return {
        "lr": learning_rates,
        "loss": _series(training, "loss"),
        "eval_loss": _series(log_history, "eval_loss"),
        "phases": logged_phases(training),
        "trust_ratio": _prefixed(training, "trust_ratio/"),
    }
