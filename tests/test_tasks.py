"""TREC loading from the original files, bad lines, and the stratified splits."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, DatasetDict

from hf_dals.metrics import compute_accuracy
from hf_dals.tasks import (
    PACKAGED_TREC_DIR,
    TREC_COARSE_LABELS,
    get_text_task,
    load_trec,
    make_splits,
    read_trec_file,
    stratified_indices,
)

SHARED_TREC = Path(__file__).resolve().parents[2] / "shared" / "data" / "trec"


def test_packaged_trec_has_the_canonical_split():
    raw = load_trec(PACKAGED_TREC_DIR)
    assert len(raw["train"]) == 5452
    assert len(raw["test"]) == 500
    counts = Counter(TREC_COARSE_LABELS[label] for label in raw["train"]["label"])
    assert counts == {"ABBR": 86, "DESC": 1162, "ENTY": 1250, "HUM": 1223, "LOC": 835, "NUM": 896}
    test_counts = Counter(TREC_COARSE_LABELS[label] for label in raw["test"]["label"])
    assert test_counts == {"ABBR": 9, "DESC": 138, "ENTY": 94, "HUM": 65, "LOC": 81, "NUM": 113}


def test_latin1_byte_is_read():
    texts, _, _ = read_trec_file(PACKAGED_TREC_DIR / "train_5500.label")
    assert "sister\xf0city" in texts[65]


@pytest.mark.skipif(not SHARED_TREC.is_dir(), reason="the shared data folder is not next to this checkout")
def test_packaged_trec_matches_the_shared_copy():
    for name in ("train_5500.label", "TREC_10.label"):
        packaged = hashlib.sha256((PACKAGED_TREC_DIR / name).read_bytes()).hexdigest()
        shared = hashlib.sha256((SHARED_TREC / name).read_bytes()).hexdigest()
        assert packaged == shared, name


@pytest.mark.parametrize(
    "bad_line",
    [
        "DESC How did serfdom develop ?",  # no fine label
        "QUESTION:manner How did serfdom develop ?",  # unknown coarse label
        "DESC:manner",  # no question
        ":manner How ?",  # empty coarse label
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line):
    path = tmp_path / "train_5500.label"
    path.write_text("NUM:dist How far is it from Denver to Aspen ?\n" + bad_line + "\n", encoding="latin-1")
    with pytest.raises(ValueError, match=rf"{path}:2: malformed TREC line"):
        read_trec_file(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_5500.label not found"):
        load_trec(tmp_path)


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'sst5'; expected one of imdb, rte, trec"):
        get_text_task("sst5")


def test_stratified_indices_keep_class_shares():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    chosen = stratified_indices(labels, 0.1, seed=3)
    assert len(chosen) == 100
    assert Counter(labels[chosen].tolist()) == {0: 90, 1: 9, 2: 1}
    assert np.array_equal(chosen, stratified_indices(labels, 0.1, seed=3))
    assert not np.array_equal(chosen, stratified_indices(labels, 0.1, seed=4))


@pytest.mark.parametrize("size", [0, 1001, 0.0])
def test_stratified_indices_reject_bad_sizes(size):
    with pytest.raises(ValueError, match="invalid sample size"):
        stratified_indices(np.zeros(1000, dtype=int), size, seed=0)


def test_make_splits_holds_out_validation_from_train():
    raw = load_trec(PACKAGED_TREC_DIR)
    splits = make_splits(raw, validation_fraction=0.1, split_seed=42)
    assert len(splits["validation"]) == 545
    assert len(splits["train"]) == 5452 - 545
    assert splits["test"]["text"] == raw["test"]["text"]
    assert not set(splits["train"]["text"]) & set(splits["validation"]["text"]) - set(
        t for t, n in Counter(raw["train"]["text"]).items() if n > 1
    )
    shares = Counter(splits["validation"]["label"])
    full = Counter(raw["train"]["label"])
    for label, count in full.items():
        assert abs(shares[label] - 0.1 * count) <= 1


def test_make_splits_shrinks_each_split():
    raw = load_trec(PACKAGED_TREC_DIR)
    splits = make_splits(raw, max_train_samples=200, max_eval_samples=100, max_test_samples=50)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [200, 100, 50]
    assert len(set(splits["train"]["label"])) == 6


def test_make_splits_rejects_bad_fraction():
    raw = DatasetDict({"train": Dataset.from_dict({"label": [0, 1]}), "test": Dataset.from_dict({"label": [0]})})
    with pytest.raises(ValueError, match="invalid validation_fraction: 1.0"):
        make_splits(raw, validation_fraction=1.0)


def test_compute_accuracy():
    from transformers import EvalPrediction

    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([1, 0, 0, 0])
    assert compute_accuracy(EvalPrediction(predictions=logits, label_ids=labels)) == {"accuracy": 0.75}
    with pytest.raises(ValueError, match="do not match labels"):
        compute_accuracy(EvalPrediction(predictions=logits, label_ids=labels[:3]))
