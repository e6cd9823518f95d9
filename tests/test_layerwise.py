"""hf_dals.optim.LARS and Lamb: the library's step on plain tensors, the shard step's rule and limits.

The shard step normally runs only on DTensor parameters (tested on two processes in
test_distributed.py). Here it is forced onto plain tensors, where the full-tensor norms need no
communication, and must give the library's result bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import pytorch_optimizer
import torch

import hf_dals.optim.layerwise as layerwise
from hf_dals.optim import LARS, Lamb


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))


def groups(model: torch.nn.Module, **no_decay) -> list[dict]:
    matrices = [p for p in model.parameters() if p.ndim > 1]
    vectors = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": matrices}, {"params": vectors, "weight_decay": 0.0, **no_decay}]


def train(optimizer_factory, model: torch.nn.Module, steps: int = 6) -> torch.nn.Module:
    optimizer = optimizer_factory(model)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(5, 6, generator=generator)
        y = torch.randint(0, 3, (5,), generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


def shard_step_forced(monkeypatch) -> None:
    monkeypatch.setattr(layerwise, "has_dtensor", lambda tensors: True)


LARS_SETTINGS = [
    dict(lr=0.1, momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02),
    dict(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=True, dampening=0.1),
    dict(lr=0.1, momentum=0.0, weight_decay=1e-3, maximize=True),
]
LAMB_SETTINGS = [
    dict(lr=1e-2, weight_decay=1e-2),
    dict(lr=1e-2, weight_decay=1e-2, weight_decouple=False, grad_averaging=False),
    dict(lr=1e-2, weight_decay=1e-2, fixed_decay=True, adam_debias=True, maximize=True),
]


@pytest.mark.parametrize("settings", LARS_SETTINGS)
def test_lars_shard_step_matches_library(settings, monkeypatch):
    reference = train(lambda m: pytorch_optimizer.LARS(groups(m), **settings), small_model())
    shard_step_forced(monkeypatch)
    ours = train(lambda m: LARS(groups(m), **settings), small_model())
    for (name, a), (_, b) in zip(reference.named_parameters(), ours.named_parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("settings", LAMB_SETTINGS)
@pytest.mark.parametrize("adam_vectors", [False, True])
def test_lamb_shard_step_matches_library(settings, adam_vectors, monkeypatch):
    reference = train(lambda m: pytorch_optimizer.Lamb(groups(m, adam=adam_vectors), **settings), small_model())
    shard_step_forced(monkeypatch)
    ours = train(lambda m: Lamb(groups(m, adam=adam_vectors), **settings), small_model())
    for (name, a), (_, b) in zip(reference.named_parameters(), ours.named_parameters()):
        assert torch.equal(a, b), name


def test_shard_step_leaves_gradients_alone(monkeypatch):
    shard_step_forced(monkeypatch)
    model = small_model()
    optimizer = LARS(groups(model), lr=0.1, weight_decay=1e-2, maximize=True)
    model(torch.randn(4, 6)).sum().backward()
    before = [copy.deepcopy(p.grad) for p in model.parameters()]
    optimizer.step()
    for grad, param in zip(before, model.parameters()):
        assert torch.equal(grad, param.grad)


def test_plain_tensors_take_the_library_step(monkeypatch):
    calls = []
    monkeypatch.setattr(layerwise, "_lars_on_shards", lambda *args: calls.append(args))
    model = small_model()
    optimizer = LARS(groups(model), lr=0.1)
    model(torch.randn(4, 6)).sum().backward()
    optimizer.step()
    assert calls == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(pre_norm=True), r"Lamb\(pre_norm=True\) is not supported on sharded \(DTensor\) parameters"),
        (dict(rectify=True), r"Lamb option rectify=True is not supported on sharded"),
        (dict(adanorm=True), r"Lamb option adanorm=True is not supported on sharded"),
    ],
)
def test_lamb_shard_step_rejects_other_rules(settings, message, monkeypatch):
    shard_step_forced(monkeypatch)
    model = small_model()
    optimizer = Lamb(groups(model), lr=1e-2, **settings)
    model(torch.randn(4, 6)).sum().backward()
    with pytest.raises(NotImplementedError, match=message):
        optimizer.step()
