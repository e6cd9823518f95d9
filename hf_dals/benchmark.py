"""The benchmark: a grid of strategies x tasks x seeds, run with an honest protocol.

Each run trains with ``DALSTrainer``, evaluates validation and test accuracy after every epoch,
selects the epoch with the best validation accuracy and reports the test accuracy of that epoch.
The best test accuracy over epochs is recorded too, labelled as the protocol of arXiv:2604.27295,
only so that our numbers can be set beside the paper's Table 2.

Results go to an append-only JSON Lines file, one line per finished run, written and flushed as
soon as the run ends; a restart skips the runs already in the file. ``hf-dals report`` turns the
file into Markdown and plots.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import TrainerCallback

from .finetune import DataArguments, ModelArguments, prepare_text_task
from .protocol import PreparedTask, build_trainer
from .scratch import ScratchArguments, prepare_scratch_task
from .strategies import get_strategy, list_strategies
from .tasks import PACKAGED_TREC_DIR
from .training_args import DALSTrainingArguments

__all__ = [
    "CORE_STRATEGIES",
    "PROFILES",
    "Profile",
    "RunRecorder",
    "RunSpec",
    "TaskSettings",
    "load_records",
    "plan_grid",
    "run_benchmark",
    "run_one",
]

logger = logging.getLogger(__name__)

CORE_STRATEGIES = (
    "hf_default",
    "llrd_adamw",
    "adamw",
    "fixed_sgd",
    "stlr_discriminative",
    "ulmfit",
    "dals",
    "dals_fast",
    "dals_acc",
)
TEXT_TASKS = ("trec", "rte", "imdb")
LR_TRACE_POINTS = 200


@dataclass(frozen=True)
class TaskSettings:
    """How one task is run in a profile.

    ``lr_multiplier`` scales each strategy's default peak learning rate by its ``lr_family``
    (``{"sgd": 40.0}`` multiplies the SGD-type rates by 40). ``targets`` are validation accuracies
    for the epochs-to-target columns.
    """

    task: str
    epochs: float
    batch_size: int
    eval_batch_size: int = 64
    train_samples: int | None = None
    eval_samples: int | None = None
    test_samples: int | None = None
    max_seq_length: int = 128
    model: str | None = None
    augment: bool = False
    targets: tuple[float, ...] = ()
    lr_multiplier: Mapping[str, float] = field(default_factory=dict)

    @property
    def regime(self) -> str:
        return "finetune" if self.task in TEXT_TASKS else "scratch"


@dataclass(frozen=True)
class Profile:
    """A named grid: tasks with their settings, strategies, seeds, and extra seeds for a core set."""

    name: str
    description: str
    tasks: Mapping[str, TaskSettings]
    seeds: tuple[int, ...] = (1,)
    core_strategies: tuple[str, ...] = CORE_STRATEGIES
    core_extra_seeds: tuple[int, ...] = ()


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    profile: str
    task: str
    strategy: str
    seed: int

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.profile, self.task, self.strategy, self.seed)


# The quick profile fits 2 CPU cores: about a minute per run. It fine-tunes the packaged
# all-MiniLM-L6-v2 (6 layers) on subsets and trains the from-scratch models on reduced data. The
# SGD-type fine-tuning rates of the paper (5e-4, for 10 epochs of DistilBERT) barely move MiniLM
# in a few hundred steps, so the quick profile multiplies them by 40 (the rate DALS and STLR +
# discriminative needed on TREC-6 validation in a trial); Adam-type rates stay as in the paper.
_QUICK_SGD = {"sgd": 40.0}
_QUICK = Profile(
    name="quick",
    description="sized for 2 CPU cores: subsets, short inputs, few epochs",
    tasks={
        "synthetic": TaskSettings("synthetic", epochs=8, batch_size=128, eval_batch_size=1024, targets=(0.9, 0.95)),
        "cifar10": TaskSettings(
            "cifar10", epochs=6, batch_size=128, eval_batch_size=1000, test_samples=5000, targets=(0.4, 0.5)
        ),
        "rte": TaskSettings(
            "rte", epochs=2, batch_size=16, train_samples=300, max_seq_length=128, targets=(0.55, 0.6),
            lr_multiplier=_QUICK_SGD,
        ),
        "trec": TaskSettings(
            "trec", epochs=3, batch_size=32, train_samples=800, max_seq_length=64, targets=(0.8, 0.9),
            lr_multiplier=_QUICK_SGD,
        ),
        "imdb": TaskSettings(
            "imdb", epochs=2, batch_size=16, train_samples=400, eval_samples=200, test_samples=500,
            max_seq_length=128, targets=(0.7, 0.8), lr_multiplier=_QUICK_SGD,
        ),
    },  # fmt: skip
    seeds=(1,),
    core_extra_seeds=(2, 3),
)

# The paper profile: the models, epochs, batch sizes, input lengths and learning rates of
# arXiv:2604.27295 (DistilBERT fine-tuning: Adam family 5e-5, SGD family 5e-4, TREC-6 3e-5 / 3e-4,
# batch 32, max length 128, IMDb 256; 10 / 10 / 5 epochs for RTE / TREC-6 / IMDb; from scratch:
# 80 epochs of the synthetic task, 50 of CIFAR-10, batch 128). Sized for a GPU.
_PAPER = Profile(
    name="paper",
    description="the paper's models, epochs, batch sizes and learning rates (for a GPU)",
    tasks={
        "synthetic": TaskSettings("synthetic", epochs=80, batch_size=128, eval_batch_size=2048, targets=(0.9, 0.95)),
        "cifar10": TaskSettings("cifar10", epochs=50, batch_size=128, eval_batch_size=1000, targets=(0.6, 0.7)),
        "rte": TaskSettings("rte", epochs=10, batch_size=32, max_seq_length=128, model="distilbert-base-uncased", targets=(0.55, 0.6)),
        "trec": TaskSettings(
            "trec", epochs=10, batch_size=32, max_seq_length=128, model="distilbert-base-uncased", targets=(0.9, 0.95),
            lr_multiplier={"sgd": 0.6, "adam": 0.6},
        ),
        "imdb": TaskSettings("imdb", epochs=5, batch_size=32, max_seq_length=256, model="distilbert-base-uncased", targets=(0.85, 0.9)),
    },  # fmt: skip
    seeds=(1, 2, 3),
)

# A seconds-long profile for the tests of the runner itself.
_TINY = Profile(
    name="tiny",
    description="a few seconds per run, for tests of the runner",
    tasks={
        "synthetic": TaskSettings(
            "synthetic", epochs=2, batch_size=64, eval_batch_size=512, train_samples=256, eval_samples=128,
            test_samples=128, targets=(0.6,),
        ),
    },  # fmt: skip
    seeds=(1,),
    core_strategies=("dals",),
    core_extra_seeds=(2,),
)

PROFILES: dict[str, Profile] = {profile.name: profile for profile in (_QUICK, _PAPER, _TINY)}


def plan_grid(
    profile: Profile,
    *,
    tasks: Sequence[str] | None = None,
    strategies: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[RunSpec]:
    """List the runs of a profile: every strategy with the profile's seeds, then the core extra seeds.

    ``tasks``, ``strategies`` and ``seeds`` restrict the grid; unknown names raise ``ValueError``.
    Runs are ordered seed by seed, so that a partial run already covers every strategy once.
    """
    task_names = list(profile.tasks) if tasks is None else list(tasks)
    unknown = [t for t in task_names if t not in profile.tasks]
    if unknown:
        raise ValueError(f"tasks {unknown} are not in profile {profile.name!r}; it has {', '.join(profile.tasks)}")
    all_names = [s.name for s in list_strategies()]
    strategy_names = all_names if strategies is None else list(strategies)
    for name in strategy_names:
        get_strategy(name)  # raises with the valid names
    runs: list[RunSpec] = []
    seed_plan = [(seed, strategy_names) for seed in (profile.seeds if seeds is None else seeds)]
    if seeds is None:
        core = [name for name in strategy_names if name in profile.core_strategies]
        seed_plan += [(seed, core) for seed in profile.core_extra_seeds]
    for seed, names in seed_plan:
        for task in task_names:
            runs.extend(RunSpec(profile.name, task, name, seed) for name in names)
    return runs


# -- one run -------------------------------------------------------------------------------------


class RunRecorder(TrainerCallback):
    """Record the optimizer step time and the learning rate of every depth at every step."""

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        self.lr_steps: list[int] = []
        self.lr_by_depth: dict[str, list[float]] = {}
        self._started: float | None = None

    @staticmethod
    def _synchronize() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._synchronize()
        self._started = time.perf_counter()

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self._synchronize()
        if self._started is not None:
            self.step_seconds.append(time.perf_counter() - self._started)
        if optimizer is not None:
            self.lr_steps.append(state.global_step)
            for index, group in enumerate(optimizer.param_groups):
                name = group.get("depth_name", group.get("name", f"group_{index}"))
                series = self.lr_by_depth.setdefault(name, [])
                if len(series) < len(self.lr_steps):
                    series.append(float(group["lr"]))

    def mean_step_seconds(self) -> float | None:
        """Return the mean optimizer step time without the first step, which pays one-off set-up."""
        timed = self.step_seconds[1:] if len(self.step_seconds) > 1 else self.step_seconds
        return sum(timed) / len(timed) if timed else None

    def lr_trace(self, points: int = LR_TRACE_POINTS) -> dict:
        """Return at most ``points`` evenly spaced samples of the per-depth learning rates."""
        total = len(self.lr_steps)
        if total == 0:
            return {"steps": [], "depths": {}, "order": []}
        samples = min(points, total)
        keep = sorted({round(i * (total - 1) / max(samples - 1, 1)) for i in range(samples)})
        return {
            "steps": [self.lr_steps[i] for i in keep],
            "depths": {name: [series[i] for i in keep] for name, series in self.lr_by_depth.items()},
            # Bottom to top, in the order of the optimizer's groups. The results file sorts the keys above.
            "order": list(self.lr_by_depth),
        }


def _prepare(settings: TaskSettings, seed: int, data_root: Path | None) -> PreparedTask:
    data_dir = None
    if data_root is not None and settings.task not in ("synthetic", "synthetic_argmax10"):
        data_dir = str(data_root / ("trec" if settings.task == "trec_scratch" else settings.task))
    elif settings.task in ("trec", "trec_scratch"):
        data_dir = str(PACKAGED_TREC_DIR)
    if settings.regime == "finetune":
        return prepare_text_task(
            ModelArguments(model_name_or_path=settings.model, max_seq_length=settings.max_seq_length),
            DataArguments(
                task=settings.task,
                data_dir=data_dir,
                max_train_samples=settings.train_samples,
                max_eval_samples=settings.eval_samples,
                max_test_samples=settings.test_samples,
            ),
            seed,
        )
    return prepare_scratch_task(
        ScratchArguments(
            task=settings.task,
            data_dir=data_dir,
            max_train_samples=settings.train_samples,
            max_eval_samples=settings.eval_samples,
            max_test_samples=settings.test_samples,
            augment=settings.augment,
            max_seq_length=settings.max_seq_length,
        ),
        seed,
    )


def _epoch_table(log_history: list[dict]) -> list[dict]:
    by_epoch: dict[float, dict] = {}
    for entry in log_history:
        for split in ("validation", "test"):
            key = f"eval_{split}_accuracy"
            if key in entry:
                by_epoch.setdefault(round(entry["epoch"], 6), {})[split] = entry[key]
    return [
        {"epoch": epoch, "validation_accuracy": values.get("validation"), "test_accuracy": values.get("test")}
        for epoch, values in sorted(by_epoch.items())
    ]


def summarize_epochs(epochs: list[dict], targets: Iterable[float]) -> dict:
    """Select the epoch with the best validation accuracy (the earliest on ties) and summarise.

    Returns ``selected_epoch``, ``validation_accuracy`` and ``test_accuracy`` of that epoch,
    ``best_test_accuracy_over_epochs`` (the paper's protocol, for comparison only) and
    ``epochs_to_target``: for each target, the first epoch whose validation accuracy reaches it,
    or ``None``.
    """
    if not epochs:
        raise ValueError("no evaluation results: the run must evaluate validation and test after each epoch")
    best = max(epochs, key=lambda row: (row["validation_accuracy"], -row["epoch"]))
    return {
        "selected_epoch": best["epoch"],
        "validation_accuracy": best["validation_accuracy"],
        "test_accuracy": best["test_accuracy"],
        "best_test_accuracy_over_epochs": max(row["test_accuracy"] for row in epochs),
        "epochs_to_target": {
            f"{target:g}": next((row["epoch"] for row in epochs if row["validation_accuracy"] >= target), None)
            for target in targets
        },
    }


def training_arguments_for(spec: RunSpec, settings: TaskSettings, output_dir: Path) -> DALSTrainingArguments:
    """Build the training arguments of one run; the peak lr is the strategy default times the multiplier."""
    strategy = get_strategy(spec.strategy)
    default_lr = strategy.defaults[settings.regime]["learning_rate"]
    multiplier = settings.lr_multiplier.get(strategy.lr_family, 1.0)
    return DALSTrainingArguments(
        output_dir=str(output_dir),
        lr_strategy=spec.strategy,
        training_regime=settings.regime,
        learning_rate=default_lr * multiplier,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="epoch",
        report_to="none",
        seed=spec.seed,
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def run_one(spec: RunSpec, settings: TaskSettings, *, data_root: Path | None, work_dir: Path) -> dict:
    """Train one cell of the grid and return its record (see the module docstring)."""
    output_dir = work_dir / f"{spec.task}-{spec.strategy}-seed{spec.seed}"
    training_args = training_arguments_for(spec, settings, output_dir)
    prepared = _prepare(settings, spec.seed, data_root)
    recorder = RunRecorder()
    trainer = build_trainer(
        prepared,
        training_args,
        eval_dataset={"validation": prepared.validation, "test": prepared.test},
        callbacks=[recorder],
        quiet=True,
    )
    started = time.perf_counter()
    train_result = trainer.train()
    wall = time.perf_counter() - started

    epochs = _epoch_table(trainer.state.log_history)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    record = {
        **asdict(spec),
        "status": "ok",
        "generation": get_strategy(spec.strategy).generation,
        "hyperparameters": training_args.strategy_hyperparameters(),
        "settings": {k: v for k, v in asdict(settings).items() if k != "lr_multiplier"},
        "lr_multiplier": settings.lr_multiplier.get(get_strategy(spec.strategy).lr_family, 1.0),
        "train_samples": len(prepared.train),
        "validation_samples": len(prepared.validation),
        "test_samples": len(prepared.test),
        "epochs": epochs,
        **summarize_epochs(epochs, settings.targets),
        "train_loss": train_result.training_loss,
        "epoch_losses": losses,
        "optimizer_steps": trainer.state.global_step,
        "wall_time_seconds": wall,
        "mean_optimizer_step_seconds": recorder.mean_step_seconds(),
        "lr_trace": recorder.lr_trace(),
    }
    return record


# -- the results file ----------------------------------------------------------------------------


def load_records(path: str | os.PathLike) -> list[dict]:
    """Read a results file; a last line cut short by a killed run is skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s:%d: skipping a line that is not complete JSON (an interrupted write)", path, line_number)
    return records


def append_record(path: Path, record: dict) -> None:
    """Append one record as a JSON line and force it to disk before returning.

    An exclusive lock on the file keeps lines whole when several shards write to the same file.
    """
    import fcntl

    line = json.dumps(record, sort_keys=True)
    with path.open("a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _environment() -> dict:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_benchmark(
    profile: Profile | str,
    results_path: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    work_dir: str | os.PathLike = "outputs/benchmark",
    tasks: Sequence[str] | None = None,
    strategies: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    retry_failed: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run every cell of the grid that is not in ``results_path`` yet; return the new records.

    A run that raises is recorded with ``status: "failed"`` and its error, so that one broken cell
    does not stop the grid; ``retry_failed=True`` runs such cells again. ``shard=(k, n)`` runs
    only the pending cells ``k, k + n, k + 2n, ...``, so that ``n`` processes (each started with
    one CPU thread, say) can share the grid and the results file.
    """
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
        profile = PROFILES[profile]
    results_path = Path(results_path)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    grid = plan_grid(profile, tasks=tasks, strategies=strategies, seeds=seeds)
    done = {
        (r["profile"], r["task"], r["strategy"], r["seed"])
        for r in load_records(results_path)
        if r.get("status") == "ok" or not retry_failed
    }
    pending = [spec for spec in grid if spec.key not in done]
    if shard is not None:
        index, count = shard
        if not (count >= 1 and 0 <= index < count):
            raise ValueError(f"invalid shard {index}/{count} (expected 0 <= k < n)")
        pending = pending[index::count]
        grid = [spec for spec in grid if spec.key in done] + pending
    logger.info("%d of %d runs already in %s; %d to go", len(grid) - len(pending), len(grid), results_path, len(pending))

    from tqdm.auto import tqdm

    bar = tqdm(total=len(grid), initial=len(grid) - len(pending), unit="run", disable=not progress, dynamic_ncols=True)
    environment = _environment()
    new_records = []
    root = Path(data_root) if data_root is not None else None
    for spec in pending:
        bar.set_postfix_str(f"{spec.task} {spec.strategy} seed {spec.seed}")
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            record = run_one(spec, profile.tasks[spec.task], data_root=root, work_dir=Path(work_dir))
        except Exception as error:  # one broken cell must not stop the grid; it is recorded
            logger.error("run %s failed: %s", spec, error)
            record = {**asdict(spec), "status": "failed", "error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc(limit=5)}  # fmt: skip
        record.update(started_at=started, environment=environment)
        append_record(results_path, record)
        new_records.append(record)
        bar.update(1)
    bar.close()
    return new_records

