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

__all__ = ["PreparedTask", "ProtocolTrainingArguments", "build_trainer", "fit_and_test", "save_with_model_card"]

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
    # For the model card: the Hub id of the dataset (its "datasets" metadata) and of the
    # pretrained model that was fine-tuned (its "base_model"); None when there is none.
    hub_dataset: str | None = None
    base_model: str | None = None


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
    The model is saved last, with its model card, and pushed to the Hub when ``push_to_hub`` is
    set (see :func:`save_with_model_card`).

    Raises:
        ValueError: when ``push_to_hub`` is set for a model without a config.
    """
    if training_args.push_to_hub and not _has_model_card(task.model):
        raise ValueError(
            f"push_to_hub=True needs a Transformers or PEFT model, which has a config for the model card; "
            f"{type(task.model).__name__} has none. Remove --push_to_hub and upload output_dir yourself"
        )
    started = time.perf_counter()
    trainer = build_trainer(task, training_args, quiet=quiet)
    train_result = trainer.train()
    check_param_coverage(trainer.model, trainer.optimizer)

    metrics = dict(train_result.metrics)
    metrics.update(trainer.evaluate(metric_key_prefix="eval"))
    metrics.update(trainer.evaluate(task.test, metric_key_prefix="test"))
    metrics["train_samples"] = len(task.train)
    metrics["eval_samples"] = len(task.validation)
    metrics["test_samples"] = len(task.test)
    metrics["wall_time_seconds"] = time.perf_counter() - started
    trainer.save_metrics("all", metrics)
    trainer.save_state()
    save_with_model_card(trainer, task)
    logger.info("results in %s", Path(training_args.output_dir) / "all_results.json")
    return metrics, trainer


def _has_model_card(model: nn.Module) -> bool:
    # Trainer's model card reads model.config; PeftModel forwards the attribute to its base model.
    return hasattr(model, "config")


def save_with_model_card(trainer: DALSTrainer, task: PreparedTask) -> None:
    """Save the model to ``output_dir`` with its model card, and push the folder when ``push_to_hub`` is set.

    With ``push_to_hub`` set, ``Trainer.save_model`` would push on its own, before the card has
    the test metrics. ``Trainer.push_to_hub`` saves the model, writes the card and uploads
    ``output_dir`` once. Models without a config (plain ``nn.Module``) are saved without a card.
    """
    if not _has_model_card(trainer.model):
        trainer.save_model()
        return
    card = {"dataset_tags": task.hub_dataset, "dataset": task.hub_dataset, "finetuned_from": task.base_model}
    if trainer.args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training", **card)
    else:
        trainer.save_model()
        trainer.create_model_card(**card)
