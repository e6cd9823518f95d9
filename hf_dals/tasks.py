"""Task data: loading from the Hugging Face Hub or from local files, and honest splits.

Every loader returns a ``datasets.DatasetDict`` with ``train`` and ``test`` splits, the text
columns of the task and an integer ``label`` column. :func:`make_splits` then holds out a seeded,
stratified part of ``train`` as ``validation``, so that model selection never looks at ``test``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict

__all__ = [
    "PACKAGED_TREC_DIR",
    "TREC_COARSE_LABELS",
    "TextTask",
    "get_text_task",
    "load_trec",
    "make_splits",
    "read_trec_file",
    "stratified_indices",
]

logger = logging.getLogger(__name__)

# The Hub dataset CogComp/trec orders its coarse labels this way; local files use the same ids,
# so a model fine-tuned on either source has the same id2label.
TREC_COARSE_LABELS = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")
TREC_FILES = {"train": "train_5500.label", "test": "TREC_10.label"}
PACKAGED_TREC_DIR = Path(__file__).resolve().parent / "data" / "trec"


@dataclass(frozen=True)
class TextTask:
    """A text classification task: its text columns, label names and loader."""

    name: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    hub_id: str
    loader: Callable[[str | os.PathLike | None], DatasetDict]

    def load(self, data_dir: str | os.PathLike | None = None) -> DatasetDict:
        """Load ``train`` and ``test`` from ``data_dir``, or from the Hub when it is ``None``."""
        return self.loader(data_dir)


def read_trec_file(path: str | os.PathLike) -> tuple[list[str], list[int], list[str]]:
    """Read one TREC question file (``COARSE:fine question ...`` per line).

    The files are latin-1 encoded (the training file has one non-ASCII byte). Returns the
    questions, the coarse label ids (in :data:`TREC_COARSE_LABELS` order) and the fine labels.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file and line number of a malformed line.
    """
    path = Path(path)
    texts, coarse, fine = [], [], []
    label_ids = {name: index for index, name in enumerate(TREC_COARSE_LABELS)}
    with path.open(encoding="latin-1") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            label, _, question = line.partition(" ")
            coarse_label, colon, fine_label = label.partition(":")
            if not colon or coarse_label not in label_ids or not fine_label or not question.strip():
                raise ValueError(
                    f"{path}:{line_number}: malformed TREC line {line[:80]!r}; expected 'COARSE:fine question' "
                    f"with COARSE one of {', '.join(TREC_COARSE_LABELS)}, e.g. 'DESC:manner How did serfdom develop ?'"
                )
            texts.append(question.strip())
            coarse.append(label_ids[coarse_label])
            fine.append(fine_label)
    if not texts:
        raise ValueError(f"{path}: no questions found; expected lines of the form 'COARSE:fine question'")
    return texts, coarse, fine


def _load_trec_local(data_dir: str | os.PathLike) -> DatasetDict:
    data_dir = Path(data_dir)
    splits = {}
    for split, filename in TREC_FILES.items():
        path = data_dir / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"TREC file {path} not found; --data_dir must contain {TREC_FILES['train']} and {TREC_FILES['test']}"
            )
        texts, labels, fine = read_trec_file(path)
        splits[split] = Dataset.from_dict({"text": texts, "label": labels, "fine_label": fine})
    return DatasetDict(splits)


def _load_trec_hub(_: None = None) -> DatasetDict:
    from datasets import load_dataset

    try:
        raw = load_dataset("CogComp/trec")
    except Exception as error:  # the Hub raises many types: connection, offline mode, missing repo
        raise RuntimeError(
            f"could not load CogComp/trec from the Hugging Face Hub ({type(error).__name__}: {error}). "
            f"Offline, pass --data_dir with {TREC_FILES['train']} and {TREC_FILES['test']}; "
            f"hf-dals ships them in {PACKAGED_TREC_DIR}"
        ) from error
    names = tuple(raw["train"].features["coarse_label"].names)
    if names != TREC_COARSE_LABELS:
        raise RuntimeError(f"CogComp/trec coarse labels are {names}, expected {TREC_COARSE_LABELS}")
    return DatasetDict(
        {split: raw[split].rename_column("coarse_label", "label").select_columns(["text", "label"]) for split in ("train", "test")}
    )


def load_trec(data_dir: str | os.PathLike | None = None) -> DatasetDict:
    """Load TREC-6 (coarse labels): from ``data_dir`` if given, else from the Hub (``CogComp/trec``)."""
    if data_dir is None:
        return _load_trec_hub()
    return _load_trec_local(data_dir)


_TASKS = {
    "trec": TextTask(
        name="trec", text_columns=("text",), label_names=TREC_COARSE_LABELS, hub_id="CogComp/trec", loader=load_trec
    ),
}


def get_text_task(name: str) -> TextTask:
    """Return the task called ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def stratified_indices(labels: Sequence[int], size: int | float, seed: int) -> np.ndarray:
    """Return sorted indices of a seeded, class-stratified sample of ``labels``.

    ``size`` is a count (int) or a fraction in (0, 1) (float). Each class contributes in proportion
    to its frequency (largest remainders fill the rounding gap), so rare classes keep their share.
    """
    labels = np.asarray(labels)
    n = len(labels)
    count = int(round(size * n)) if isinstance(size, float) else int(size)
    if not 0 < count <= n:
        raise ValueError(f"invalid sample size {size!r} for {n} examples (expected 0 < size <= {n})")
    rng = np.random.default_rng(seed)
    classes, class_counts = np.unique(labels, return_counts=True)
    exact = class_counts * count / n
    quotas = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - quotas), kind="stable")[: count - quotas.sum()]:
        quotas[index] += 1
    chosen = []
    for label, quota in zip(classes, quotas):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.permutation(members)[:quota])
    return np.sort(np.concatenate(chosen))


def make_splits(
    raw: DatasetDict,
    *,
    validation_fraction: float = 0.1,
    split_seed: int = 42,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    max_test_samples: int | None = None,
) -> DatasetDict:
    """Hold out a stratified ``validation`` split of ``train``; optionally shrink each split.

    The validation split depends only on ``split_seed``, not on the training seed, so runs with
    several seeds select models on the same examples. Shrinking keeps the class proportions.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"invalid validation_fraction: {validation_fraction} (expected 0 < fraction < 1)")
    train = raw["train"]
    validation_idx = stratified_indices(train["label"], validation_fraction, split_seed)
    train_idx = np.setdiff1d(np.arange(len(train)), validation_idx)
    splits = {"train": train.select(train_idx), "validation": train.select(validation_idx), "test": raw["test"]}
    limits = {"train": max_train_samples, "validation": max_eval_samples, "test": max_test_samples}
    for split, limit in limits.items():
        if limit is not None and limit < len(splits[split]):
            keep = stratified_indices(splits[split]["label"], int(limit), split_seed + 1)
            splits[split] = splits[split].select(keep)
    logger.info("splits: %s", {name: len(ds) for name, ds in splits.items()})
    return DatasetDict(splits)
