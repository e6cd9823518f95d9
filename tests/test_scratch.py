"""The from-scratch tasks: data generation, loaders and models."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_dals import layer_depths
from hf_dals.scratch import (
    ConvNet,
    ScratchArguments,
    SyntheticMLP,
    load_cifar10,
    make_synthetic,
    make_synthetic_argmax10,
    prepare_scratch_task,
    random_crop_and_flip,
)

DATA = Path(__file__).resolve().parent / "data"


def test_synthetic_matches_its_definition():
    data = make_synthetic(42)
    x, y = data["train"]
    assert x.shape == (20_000, 20)
    assert torch.equal(y[:10_000], (x[:10_000, :5].sum(dim=1) > 0).long())
    part_b = x[10_000:]
    assert torch.equal(y[10_000:], ((part_b[:, 0] * part_b[:, 1] + part_b[:, 2] * part_b[:, 3]) > 0).long())
    assert part_b.std().item() == pytest.approx(0.5, abs=0.01)
    x_test, y_test = data["test"]
    assert x_test.shape == (2_000, 20)
    assert torch.equal(y_test, (x_test[:, :5].sum(dim=1) > 0).long())
    assert torch.equal(make_synthetic(42)["train"][0], x)


def test_synthetic_argmax10_shapes_and_labels():
    data = make_synthetic_argmax10(42)
    assert data["train"][0].shape == (6_400, 64)
    assert data["test"][0].shape == (1_600, 64)
    assert set(data["train"][1].tolist()) == set(range(10))


def test_cifar10_from_npz_and_python_batches(tmp_path):
    from_npz = load_cifar10(DATA / "cifar10")
    x, y = from_npz["train"]
    assert x.shape == (100, 32, 32, 3) and x.dtype == np.uint8
    assert y.tolist()[:10] == list(range(10))

    planar = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    for index in range(1, 6):
        part = slice((index - 1) * 20, index * 20)
        with open(tmp_path / f"data_batch_{index}", "wb") as handle:
            pickle.dump({b"data": planar[part], b"labels": y[part].tolist()}, handle)
    test_x, test_y = from_npz["test"]
    with open(tmp_path / "test_batch", "wb") as handle:
        pickle.dump({b"data": test_x.transpose(0, 3, 1, 2).reshape(len(test_x), -1), b"labels": test_y.tolist()}, handle)
    from_batches = load_cifar10(tmp_path)
    assert np.array_equal(from_batches["train"][0], x)
    assert np.array_equal(from_batches["test"][1], test_y)


def test_cifar10_missing_data_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 train data"):
        load_cifar10(tmp_path)


def test_convnet_shapes_and_depths():
    model = ConvNet()
    out = model(torch.zeros(2, 3, 32, 32), labels=torch.tensor([0, 1]))
    assert out["logits"].shape == (2, 10)
    assert out["loss"].ndim == 0
    depths = layer_depths(model)
    assert sorted(set(depths.values())) == [0, 1, 2, 3, 4]
    assert depths["features.0.weight"] == 0
    assert depths["classifier.2.bias"] == 4


def test_synthetic_mlp_has_one_depth_per_linear_layer():
    depths = layer_depths(SyntheticMLP(20, 256))
    assert depths == {f"layer{i}.{p}": i - 1 for i in range(1, 5) for p in ("weight", "bias")}


def test_crop_and_flip_keep_shape_and_content():
    torch.manual_seed(0)
    image = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(3, 32, 32)
    assert random_crop_and_flip(image).shape == image.shape
    # Without padding the crop is the whole image, so only the flip can change it.
    outcomes = {torch.equal(random_crop_and_flip(image, padding=0), image) for _ in range(20)}
    assert outcomes == {True, False}
    flipped = [out for out in (random_crop_and_flip(image, padding=0) for _ in range(20)) if not torch.equal(out, image)]
    assert all(torch.equal(out, image.flip(-1)) for out in flipped)


def test_prepared_cifar10_is_normalised_on_train():
    prepared = prepare_scratch_task(ScratchArguments(task="cifar10", data_dir=str(DATA / "cifar10")), seed=0)
    assert len(prepared.train) + len(prepared.validation) == 100
    assert len(prepared.test) == 50
    train = torch.stack([prepared.train[i]["pixel_values"] for i in range(len(prepared.train))])
    assert train.mean(dim=(0, 2, 3)).abs().max().item() < 1e-4
    assert train.std(dim=(0, 2, 3)).sub(1).abs().max().item() < 1e-3


def test_unknown_scratch_task():
    with pytest.raises(ValueError, match="unknown task 'mnist'; expected one of cifar10, synthetic"):
        prepare_scratch_task(ScratchArguments(task="mnist"), seed=0)
