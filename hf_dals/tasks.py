"""Text task data: loading from the Hugging Face Hub or from local files, and honest splits.

Every loader returns a ``datasets.DatasetDict`` with ``train`` and ``test`` splits, the text
columns of the task and an integer ``label`` column. :func:`make_splits` then holds out a seeded,
stratified part of ``train`` as ``validation``, so that model selection never looks at ``test``.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict

__all__ = [
    "IMDB_LABELS",
    "PACKAGED_TREC_DIR",
    "RTE_LABELS",
    "TREC_COARSE_LABELS",
    "TextTask",
    "get_text_task",
    "load_imdb",
    "load_rte",
    "load_trec",
    "make_splits",
    "read_glue_tsv",
    "read_trec_file",
    "stratified_indices",
    "text_task_names",
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
    raw = _load_from_hub(
        "CogComp/trec",
        None,
        hint=f"--data_dir with {TREC_FILES['train']} and {TREC_FILES['test']}; hf-dals ships them in {PACKAGED_TREC_DIR}",
    )
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


RTE_LABELS = ("entailment", "not_entailment")
RTE_FILES = {"train": "train.tsv", "test": "dev.tsv"}


def read_glue_tsv(path: str | os.PathLike, label_names: Sequence[str]) -> dict[str, list]:
    """Read a labelled GLUE pair file (``index  sentence1  sentence2  label``, tab-separated).

    Fields may contain unescaped double quotes, so lines are split on tabs with no CSV quoting.

    Raises:
        ValueError: naming the file and line number of a line with the wrong field count or an
            unknown label.
    """
    path = Path(path)
    label_ids = {name: index for index, name in enumerate(label_names)}
    columns: dict[str, list] = {"sentence1": [], "sentence2": [], "label": []}
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        expected = ["index", "sentence1", "sentence2", "label"]
        if header != expected:
            raise ValueError(f"{path}:1: header {header} is not the GLUE pair header {expected}")
        for line_number, line in enumerate(handle, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 4 or fields[3] not in label_ids:
                raise ValueError(
                    f"{path}:{line_number}: malformed line {line[:80]!r}; expected 4 tab-separated fields "
                    f"ending in one of {', '.join(label_names)}"
                )
            columns["sentence1"].append(fields[1])
            columns["sentence2"].append(fields[2])
            columns["label"].append(label_ids[fields[3]])
    return columns


def load_rte(data_dir: str | os.PathLike | None = None) -> DatasetDict:
    """Load GLUE RTE: ``train`` and, as ``test``, GLUE's dev split (GLUE's test labels are hidden).

    From ``data_dir`` (GLUE's ``train.tsv`` and ``dev.tsv``) if given, else from the Hub
    (``nyu-mll/glue``, config ``rte``). Labels: 0 entailment, 1 not_entailment, as on the Hub.
    """
    if data_dir is None:
        raw = _load_from_hub("nyu-mll/glue", "rte", hint=f"--data_dir with {RTE_FILES['train']} and {RTE_FILES['test']}")
        return DatasetDict(
            {
                "train": raw["train"].select_columns(["sentence1", "sentence2", "label"]),
                "test": raw["validation"].select_columns(["sentence1", "sentence2", "label"]),
            }
        )
    data_dir = Path(data_dir)
    splits = {}
    for split, filename in RTE_FILES.items():
        path = data_dir / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"RTE file {path} not found; --data_dir must contain GLUE's {RTE_FILES['train']} and {RTE_FILES['test']}"
            )
        splits[split] = Dataset.from_dict(read_glue_tsv(path, RTE_LABELS))
    return DatasetDict(splits)


IMDB_LABELS = ("neg", "pos")


def _read_jsonl(paths: list[Path]) -> dict[str, list]:
    columns: dict[str, list] = {"text": [], "label": []}
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    text, label = record["text"], int(record["label"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                    raise ValueError(
                        f"{path}:{line_number}: expected a JSON object with 'text' and an integer 'label' ({error})"
                    ) from None
                if label not in (0, 1):
                    raise ValueError(f"{path}:{line_number}: invalid label {label!r}; expected 0 (neg) or 1 (pos)")
                columns["text"].append(text)
                columns["label"].append(label)
    return columns


def _read_acl_imdb_split(split_dir: Path) -> dict[str, list]:
    columns: dict[str, list] = {"text": [], "label": []}
    for label, name in enumerate(IMDB_LABELS):
        folder = split_dir / name
        if not folder.is_dir():
            raise FileNotFoundError(f"IMDb folder {folder} not found; the aclImdb layout has {split_dir}/neg and /pos")
        for path in sorted(folder.glob("*.txt"), key=lambda p: p.name):
            columns["text"].append(path.read_text(encoding="utf-8"))
            columns["label"].append(label)
    return columns


def load_imdb(data_dir: str | os.PathLike | None = None) -> DatasetDict:
    """Load the IMDb reviews (0 negative, 1 positive) with their ``train`` and ``test`` splits.

    ``data_dir`` may hold the aclImdb layout (``train/pos/*.txt``, ``train/neg/*.txt``, ``test/...``)
    or JSON Lines files with ``text`` and ``label``, plain or gzipped, whose names start with
    ``train`` and ``test`` (``train.jsonl``, ``train-00-of-05.jsonl.gz``, ...). Without it the
    reviews come from the Hub (``stanfordnlp/imdb``).
    """
    if data_dir is None:
        raw = _load_from_hub("stanfordnlp/imdb", None, hint="--data_dir with the aclImdb folders or JSON Lines files")
        return DatasetDict({split: raw[split].select_columns(["text", "label"]) for split in ("train", "test")})
    data_dir = Path(data_dir)
    splits = {}
    for split in ("train", "test"):
        if (data_dir / split / "pos").is_dir():
            columns = _read_acl_imdb_split(data_dir / split)
        else:
            files = sorted(p for p in data_dir.iterdir() if p.name.startswith(split) and p.name.endswith((".jsonl", ".jsonl.gz")))
            if not files:
                raise FileNotFoundError(
                    f"no IMDb {split} data in {data_dir}: expected {split}/pos and {split}/neg folders "
                    f"or {split}*.jsonl[.gz] files"
                )
            columns = _read_jsonl(files)
        splits[split] = Dataset.from_dict(columns)
    return DatasetDict(splits)


def _load_from_hub(name: str, config: str | None, *, hint: str) -> DatasetDict:
    from datasets import load_dataset

    try:
        return load_dataset(name, config) if config else load_dataset(name)
    except Exception as error:  # the Hub raises many types: connection, offline mode, missing repo
        raise RuntimeError(
            f"could not load {name} from the Hugging Face Hub ({type(error).__name__}: {error}). Offline, pass {hint}"
        ) from error


_TASKS = {
    "trec": TextTask(
        name="trec", text_columns=("text",), label_names=TREC_COARSE_LABELS, hub_id="CogComp/trec", loader=load_trec
    ),
    "rte": TextTask(
        name="rte", text_columns=("sentence1", "sentence2"), label_names=RTE_LABELS, hub_id="nyu-mll/glue", loader=load_rte
    ),
    "imdb": TextTask(
        name="imdb", text_columns=("text",), label_names=IMDB_LABELS, hub_id="stanfordnlp/imdb", loader=load_imdb
    ),
}


def text_task_names() -> list[str]:
    """Return the names of the text tasks, for ``--task`` choices."""
    return sorted(_TASKS)


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
