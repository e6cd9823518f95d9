"""Tasks trained from random initialisation: CIFAR-10, two synthetic tasks, and TREC-6.

The models are plain PyTorch modules (or a small BERT built from a config), so their depth groups
come from module order or from the layer stack. Every model returns Trainer's output format
(``{"loss", "logits"}``), so ``DALSTrainer`` and every strategy apply unchanged.

Tasks:

- ``cifar10``: the ConvNet of arXiv:2604.27295 (3x3 convolutions with 32, 64 and 128 channels,
  each followed by ReLU and 2x2 max pooling, then 2048 -> 256 -> 10) on CIFAR-10, from the Hub
  (``uoft-cs/cifar10``), ``.npz`` shards with ``x`` (uint8, N x 32 x 32 x 3) and ``y``, or the
  CIFAR python batches (``data_batch_1`` ... ``test_batch``). Optional random crop and flip.
- ``synthetic``: the task behind the paper's synthetic column, as the authors' code builds it.
  Part A (seed 42): 10,000 points from N(0, I_20), label 1 when the first five coordinates sum
  to more than 0. Part B (seed 43): 10,000 points from 0.5 N(0, I_20), label 1 when
  x1 x2 + x3 x4 > 0. Training set A + B; test set 2,000 more points drawn like A. MLP
  20 -> 256 -> 256 -> 256 -> 10 with ReLU (10 outputs for 2 labels, as in that code).
- ``synthetic_argmax10``: the 10-class task of the paper's text, as the authors' earlier script
  builds it. 8,000 points from N(0, I_64) (seed 42), label the argmax of the first 10
  coordinates, plus N(0, 0.01) noise on every coordinate; the first 6,400 points train and the
  last 1,600 test. MLP 64 -> 128 -> 128 -> 128 -> 10 with ReLU.
- ``trec_scratch``: a 4-layer BERT (hidden size 128) with random weights on TREC-6, tokenized
  with the packaged MiniLM vocabulary: the regime where the paper reports STLR + discriminative
  learning rates failing.

As for fine-tuning, a seeded, stratified slice of the training set is the validation split.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .protocol import PreparedTask, ProtocolTrainingArguments
from .tasks import make_splits, stratified_indices

__all__ = [
    "CIFAR10_CLASSES",
    "ConvNet",
    "ScratchArguments",
    "ScratchTrainingArguments",
    "SyntheticMLP",
    "TensorClassificationDataset",
    "load_cifar10",
    "make_synthetic",
    "make_synthetic_argmax10",
    "prepare_scratch_task",
    "scratch_task_names",
]

logger = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# -- models --------------------------------------------------------------------------------------


def _classifier_output(logits: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
    output = {"logits": logits}
    if labels is not None:
        output["loss"] = F.cross_entropy(logits, labels)
    return output


class ConvNet(nn.Module):
    """The CIFAR-10 ConvNet of arXiv:2604.27295: three conv + pool stages, then two linear layers."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, num_classes))

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.classifier(self.features(pixel_values).flatten(1))
        return _classifier_output(logits, labels)


class SyntheticMLP(nn.Module):
    """An MLP with three hidden ReLU layers, one depth per linear layer."""

    def __init__(self, in_features: int, hidden: int, num_outputs: int = 10) -> None:
        super().__init__()
        self.layer1 = nn.Linear(in_features, hidden)
        self.layer2 = nn.Linear(hidden, hidden)
        self.layer3 = nn.Linear(hidden, hidden)
        self.layer4 = nn.Linear(hidden, num_outputs)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        hidden = F.relu(self.layer1(inputs))
        hidden = F.relu(self.layer2(hidden))
        hidden = F.relu(self.layer3(hidden))
        return _classifier_output(self.layer4(hidden), labels)


# -- datasets ------------------------------------------------------------------------------------


class TensorClassificationDataset(Dataset):
    """Examples ``{input_key: x[i], "labels": y[i]}`` with an optional per-example transform."""

    def __init__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        *,
        input_key: str,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if len(inputs) != len(labels):
            raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
        self.inputs = inputs
        self.labels = labels
        self.input_key = input_key
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        inputs = self.inputs[index]
        if self.transform is not None:
            inputs = self.transform(inputs)
        return {self.input_key: inputs, "labels": self.labels[index]}


def random_crop_and_flip(image: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Zero-pad by ``padding``, crop a random 32 x 32 window, and flip left-right with probability 0.5."""
    _, height, width = image.shape
    padded = F.pad(image, (padding, padding, padding, padding))
    top = int(torch.randint(0, 2 * padding + 1, ()))
    left = int(torch.randint(0, 2 * padding + 1, ()))
    image = padded[:, top : top + height, left : left + width]
    if torch.rand(()) < 0.5:
        image = image.flip(-1)
    return image


# -- CIFAR-10 ------------------------------------------------------------------------------------


def _cifar_from_npz(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in files:
        with np.load(path) as archive:
            if "x" not in archive or "y" not in archive:
                raise ValueError(f"{path}: expected arrays 'x' (N x 32 x 32 x 3, uint8) and 'y' (N)")
            images.append(archive["x"])
            labels.append(archive["y"])
    x, y = np.concatenate(images), np.concatenate(labels).astype(np.int64)
    if x.shape[1:] != (32, 32, 3):
        raise ValueError(f"CIFAR-10 images in {files[0].parent} have shape {x.shape[1:]}, expected (32, 32, 3)")
    return x, y


def _cifar_from_python_batches(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name in names:
            with open(folder / name, "rb") as handle:
                batch = pickle.load(handle, encoding="bytes")  # the official format is a pickle
            images.append(batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(batch[b"labels"])
        return np.concatenate(images), np.asarray(labels, dtype=np.int64)

    return {"train": read([f"data_batch_{i}" for i in range(1, 6)]), "test": read(["test_batch"])}


def load_cifar10(data_dir: str | os.PathLike | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return ``{"train": (x, y), "test": (x, y)}`` with uint8 images of shape N x 32 x 32 x 3.

    ``data_dir`` may hold ``.npz`` shards named ``train*.npz`` and ``test*.npz``, or the CIFAR
    python batches (directly or in ``cifar-10-batches-py``). Without it the images come from the
    Hub (``uoft-cs/cifar10``).
    """
    if data_dir is None:
        from .tasks import _load_from_hub

        raw = _load_from_hub("uoft-cs/cifar10", None, hint="--data_dir with .npz shards or the CIFAR python batches")
        return {
            split: (np.stack([np.asarray(image.convert("RGB")) for image in raw[split]["img"]]), np.asarray(raw[split]["label"]))
            for split in ("train", "test")
        }
    data_dir = Path(data_dir)
    for folder in (data_dir, data_dir / "cifar-10-batches-py"):
        if (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file():
            return _cifar_from_python_batches(folder)
    splits = {}
    for split in ("train", "test"):
        files = sorted(data_dir.glob(f"{split}*.npz"))
        if not files:
            raise FileNotFoundError(
                f"no CIFAR-10 {split} data in {data_dir}: expected {split}*.npz shards or the CIFAR python batches"
            )
        splits[split] = _cifar_from_npz(files)
    return splits


# -- synthetic data ------------------------------------------------------------------------------


def make_synthetic(seed: int = 42) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Build the synthetic task of the authors' code (see the module docstring); 20,000 train, 2,000 test."""
    generator = torch.Generator().manual_seed(seed)
    x_a = torch.randn(10_000, 20, generator=generator)
    y_a = (x_a[:, :5].sum(dim=1) > 0).long()
    x_test = torch.randn(2_000, 20, generator=generator)
    y_test = (x_test[:, :5].sum(dim=1) > 0).long()
    generator = torch.Generator().manual_seed(seed + 1)
    x_b = torch.randn(10_000, 20, generator=generator) * 0.5
    y_b = ((x_b[:, 0] * x_b[:, 1] + x_b[:, 2] * x_b[:, 3]) > 0).long()
    return {"train": (torch.cat([x_a, x_b]), torch.cat([y_a, y_b])), "test": (x_test, y_test)}


def make_synthetic_argmax10(seed: int = 42) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Build the 10-class task of the paper's text (see the module docstring); 6,400 train, 1,600 test."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(8_000, 64, generator=generator)
    y = (x[:, :10] * 3.0).argmax(dim=1)
    x = x + torch.randn(x.shape, generator=generator) * 0.1
    return {"train": (x[:6_400], y[:6_400]), "test": (x[6_400:], y[6_400:])}


# -- preparing a task ----------------------------------------------------------------------------


@dataclass
class ScratchArguments:
    task: str = field(
        default="cifar10",
        metadata={
            "help": "cifar10, synthetic (the authors' task behind the paper's 98.0%), synthetic_argmax10 (the "
            "10-class task of the paper's text) or trec_scratch (a small random BERT on TREC-6)."
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Folder with the task's files; without it CIFAR-10 and TREC come from the Hub."}
    )
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of the training set held out for model selection."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the validation split (and of the synthetic data)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on a stratified subset of this size."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Validate on a stratified subset of this size."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Test on a stratified subset of this size."})
    augment: bool = field(default=False, metadata={"help": "CIFAR-10: random crop (padding 4) and horizontal flip."})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "trec_scratch: tokenizer to use (default: the packaged MiniLM's)."}
    )
    max_seq_length: int = field(default=64, metadata={"help": "trec_scratch: inputs are cut at this many tokens."})


@dataclass
class ScratchTrainingArguments(ProtocolTrainingArguments):
    """Training arguments with the defaults of the from-scratch runs."""

    output_dir: str | None = field(default="outputs/from_scratch", metadata={"help": "Where checkpoints and results go."})
    training_regime: str = field(default="scratch", metadata={"help": "Strategy defaults: 'scratch' or 'finetune'."})
    per_device_train_batch_size: int = field(default=128, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=512, metadata={"help": "Batch size per device for evaluation."})
    num_train_epochs: float = field(default=10.0, metadata={"help": "Number of training epochs."})


def _split_tensors(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    args: ScratchArguments,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    x, y = train
    validation_idx = stratified_indices(y.numpy(), args.validation_fraction, args.split_seed)
    train_idx = np.setdiff1d(np.arange(len(y)), validation_idx)
    splits = {"train": (x[train_idx], y[train_idx]), "validation": (x[validation_idx], y[validation_idx]), "test": test}
    limits = {"train": args.max_train_samples, "validation": args.max_eval_samples, "test": args.max_test_samples}
    for split, limit in limits.items():
        x_split, y_split = splits[split]
        if limit is not None and limit < len(y_split):
            keep = torch.as_tensor(stratified_indices(y_split.numpy(), int(limit), args.split_seed + 1))
            splits[split] = (x_split[keep], y_split[keep])
    return splits


def _prepare_cifar10(args: ScratchArguments) -> PreparedTask:
    raw = load_cifar10(args.data_dir)
    tensors = {split: (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)) for split, (x, y) in raw.items()}
    splits = _split_tensors(tensors["train"], tensors["test"], args)
    train_images = splits["train"][0].float() / 255.0
    mean = train_images.mean(dim=(0, 2, 3), keepdim=True)[0]
    std = train_images.std(dim=(0, 2, 3), keepdim=True)[0]

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - mean) / std

    transform = random_crop_and_flip if args.augment else None
    datasets = {
        split: TensorClassificationDataset(
            normalise(x), y, input_key="pixel_values", transform=transform if split == "train" else None
        )
        for split, (x, y) in splits.items()
    }
    return PreparedTask(
        name="cifar10",
        model=ConvNet(),
        info={"augment": args.augment, "classes": CIFAR10_CLASSES},
        **datasets,
    )


def _prepare_synthetic(args: ScratchArguments, *, argmax10: bool) -> PreparedTask:
    data = make_synthetic_argmax10(args.split_seed) if argmax10 else make_synthetic(args.split_seed)
    splits = _split_tensors(data["train"], data["test"], args)
    model = SyntheticMLP(64, 128) if argmax10 else SyntheticMLP(20, 256)
    datasets = {split: TensorClassificationDataset(x, y, input_key="inputs") for split, (x, y) in splits.items()}
    return PreparedTask(name="synthetic_argmax10" if argmax10 else "synthetic", model=model, **datasets)


def _prepare_trec_scratch(args: ScratchArguments) -> PreparedTask:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, DataCollatorWithPadding

    from .finetune import packaged_model_path
    from .tasks import TREC_COARSE_LABELS, load_trec

    splits = make_splits(
        load_trec(args.data_dir),
        validation_fraction=args.validation_fraction,
        split_seed=args.split_seed,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        max_test_samples=args.max_test_samples,
    )
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or packaged_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=max(128, args.max_seq_length),
        num_labels=len(TREC_COARSE_LABELS),
        id2label=dict(enumerate(TREC_COARSE_LABELS)),
        label2id={name: index for index, name in enumerate(TREC_COARSE_LABELS)},
    )
    model = BertForSequenceClassification(config)
    tokenized = splits.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=args.max_seq_length),
        batched=True,
        remove_columns=[c for c in splits["train"].column_names if c != "label"],
    )
    return PreparedTask(
        name="trec_scratch",
        model=model,
        train=tokenized["train"],
        validation=tokenized["validation"],
        test=tokenized["test"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        hub_dataset="CogComp/trec",
    )


_PREPARERS: dict[str, Callable[[ScratchArguments], PreparedTask]] = {
    "cifar10": _prepare_cifar10,
    "synthetic": lambda args: _prepare_synthetic(args, argmax10=False),
    "synthetic_argmax10": lambda args: _prepare_synthetic(args, argmax10=True),
    "trec_scratch": _prepare_trec_scratch,
}


def scratch_task_names() -> list[str]:
    """Return the names of the from-scratch tasks."""
    return list(_PREPARERS)


def prepare_scratch_task(args: ScratchArguments, seed: int) -> PreparedTask:
    """Load or generate the data and build a freshly initialised model (seeded with ``seed``)."""
    if args.task not in _PREPARERS:
        raise ValueError(f"unknown task {args.task!r}; expected one of {', '.join(_PREPARERS)}")
    from transformers import set_seed

    set_seed(seed)
    return _PREPARERS[args.task](args)
