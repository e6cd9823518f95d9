"""The evaluation protocol shared by the recipes: select on validation, test once.

A task is first turned into a :class:`PreparedTask` (model, splits, collator); :func:`fit_and_test`
then trains it with ``DALSTrainer``, evaluates the validation split after every epoch, reloads the
checkpoint with the best validation accuracy, and evaluates the test split once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset
from transformers import PrinterCallback, ProgressCallback
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from .grouping import check_param_coverage
from .metrics import compute_accuracy
from .trainer import DALSTrainer
from .training_args import DALSTrainingArguments

__all__ = ["PreparedTask", "ProtocolTrainingArguments", "build_trainer", "fit_and_test"]

logger = logging.getLogger(__name__)


@dataclass
class ProtocolTrainingArguments(DALSTrainingArguments):
    """``DALSTrainingArguments`` whose defaults implement the protocol of :func:`fit_and_test`."""

    eval_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to evaluate on the validation split."})
    save_strategy: SaveStrategy | str = field(default="epoch", metadata={"help": "When to save a checkpoint."})
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Reload the checkpoint with the best validation accuracy before testing."}
    )
    metric_for_best_model: str | None = field(default="accuracy", metadata={"help": "Model selection metric."})
    save_total_limit: int | None = field(default=1, metadata={"help": "Keep at most this many checkpoints."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size per device for evaluation."})
    logging_steps: float = field(default=50, metadata={"help": "Log every this many optimizer steps."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Loggers to report to."})


@dataclass
class PreparedTask:
    """A model and the three splits of a task, ready for ``DALSTrainer``."""

    name: str
    model: nn.Module
    train: Dataset
    validation: Dataset
    test: Dataset
    data_collator: Any = None
    processing_class: Any = None
    # Some heads take **kwargs but ignore num_items_in_batch; see build_trainer.
    loss_is_batch_mean: bool = True
    info: dict[str, Any] = field(default_factory=dict)


def build_trainer(
    task: PreparedTask,
    training_args: DALSTrainingArguments,
    *,
    eval_dataset: Dataset | dict[str, Dataset] | None = None,
    callbacks: list | None = None,
    quiet: bool = False,
) -> DALSTrainer:
    """Build the ``DALSTrainer`` for ``task``; ``quiet=True`` removes progress bars and printed logs."""
    trainer = DALSTrainer(
        model=task.model,
        args=training_args,
        train_dataset=task.train,
        eval_dataset=task.validation if eval_dataset is None else eval_dataset,
        processing_class=task.processing_class,
        data_collator=task.data_collator,
        compute_metrics=compute_accuracy,
        callbacks=callbacks,
    )
    if task.loss_is_batch_mean:
        # Classification heads of transformers 5.25 take **kwargs but ignore num_items_in_batch, so
        # Trainer would skip dividing each micro-batch loss by the accumulation steps
        # (huggingface/transformers issue 47688). Their loss is a per-batch mean, so dividing is right.
        trainer.model_accepts_loss_kwargs = False
    if quiet:
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    return trainer


def fit_and_test(
    task: PreparedTask,
    training_args: DALSTrainingArguments,
    *,
    quiet: bool = False,
) -> tuple[dict[str, float], DALSTrainer]:
    """Train, select the checkpoint on validation accuracy, test once; return metrics and trainer.

    The metrics (``eval_accuracy`` of the selected checkpoint, ``test_accuracy``, the training
    statistics, the split sizes and ``wall_time_seconds``) are also written, the Trainer way, to
    ``output_dir/all_results.json``. The selection needs ``eval_strategy`` and ``save_strategy`` set
    to the same interval and ``load_best_model_at_end=True``, as ``FinetuneTrainingArguments`` has.
    """
    started = time.perf_counter()
    trainer = build_trainer(task, training_args, quiet=quiet)
    train_result = trainer.train()
    check_param_coverage(trainer.model, trainer.optimizer)
    trainer.save_model()

    metrics = dict(train_result.metrics)
    metrics.update(trainer.evaluate(metric_key_prefix="eval"))
    metrics.update(trainer.evaluate(task.test, metric_key_prefix="test"))
    metrics["train_samples"] = len(task.train)
    metrics["eval_samples"] = len(task.validation)
    metrics["test_samples"] = len(task.test)
    metrics["wall_time_seconds"] = time.perf_counter() - started
    trainer.save_metrics("all", metrics)
    trainer.save_state()
    logger.info("results in %s", Path(training_args.output_dir) / "all_results.json")
    return metrics, trainer
