"""Schedule multipliers at their boundary steps."""

from __future__ import annotations

import math

import pytest
import torch

from hf_dals import schedules


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),  # the first update under warmup uses lr 0, as in the reference code
        (5, 0.5),
        (9, 0.9),
        (10, 1.0),  # end of warmup
        (55, 0.5),  # half way through the cosine
        (100, 0.0),  # last step
        (150, 0.0),  # past the end, clamped
    ],
)
def test_warmup_cosine(step, expected):
    assert schedules.warmup_cosine(step, warmup_steps=10, total_steps=100) == pytest.approx(expected, abs=1e-12)


def test_warmup_cosine_min_ratio_and_no_warmup():
    assert schedules.warmup_cosine(0, warmup_steps=0, total_steps=10) == 1.0
    assert schedules.warmup_cosine(10, warmup_steps=0, total_steps=10, min_ratio=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1.0),
        (5, 0.5),
        (9, 0.5 * (1 + math.cos(math.pi * 0.9))),
        (10, 1.0),  # first restart, the second cycle lasts 20 steps
        (20, 0.5),
        (30, 1.0),  # second restart, the third cycle lasts 40 steps
        (50, 0.5),
        (70, 1.0),
    ],
)
def test_sgdr_restart_points(step, expected):
    assert schedules.sgdr(step, cycle_steps=10, cycle_mult=2.0) == pytest.approx(expected, abs=1e-12)


def test_sgdr_constant_cycles_and_min_ratio():
    assert schedules.sgdr(10, cycle_steps=10, cycle_mult=1.0) == 1.0
    assert schedules.sgdr(25, cycle_steps=10, cycle_mult=1.0) == pytest.approx(0.5)
    assert schedules.sgdr(5, cycle_steps=10, cycle_mult=1.0, min_ratio=0.2) == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1 / 32),  # lowest lr: eta_max / ratio
        (5, (1 + 0.5 * 31) / 32),
        (10, 1.0),  # the cut: peak lr
        (55, (1 + 0.5 * 31) / 32),
        (100, 1 / 32),  # last step
        (120, 1 / 32),  # past the end, clamped
    ],
)
def test_slanted_triangular(step, expected):
    assert schedules.slanted_triangular(step, total_steps=100, cut_frac=0.1, ratio=32) == pytest.approx(expected)


@pytest.mark.parametrize(("step", "expected"), [(0, 0.0), (5, 0.5), (10, 1.0), (55, 0.5), (100, 0.0)])
def test_linear_warmup_decay(step, expected):
    assert schedules.linear_warmup_decay(step, warmup_steps=10, total_steps=100) == pytest.approx(expected)


def test_linear_warmup_decay_matches_transformers():
    from transformers import get_linear_schedule_with_warmup

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    reference = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=7, num_training_steps=50)
    for step in range(50):
        assert schedules.linear_warmup_decay(step, warmup_steps=7, total_steps=50) == pytest.approx(
            reference.get_last_lr()[0]
        )
        optimizer.step()
        reference.step()


def test_warmup_steps_from_fraction():
    assert schedules.warmup_steps_from_fraction(1000, 0.05) == 50
    assert schedules.warmup_steps_from_fraction(99, 0.1) == 9
    with pytest.raises(ValueError, match=r"invalid warmup fraction: 1\.5"):
        schedules.warmup_steps_from_fraction(10, 1.5)


def test_lambda_scheduler_keeps_group_ratios_and_round_trips():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.SGD([{"params": [params[0]], "lr": 1.0}, {"params": [params[1]], "lr": 0.25}], lr=1.0)
    multiplier = schedules.bind(schedules.warmup_cosine, warmup_steps=2, total_steps=10)
    scheduler = schedules.lambda_scheduler(optimizer, multiplier)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs[1] / lrs[0] == pytest.approx(0.25)
    state = scheduler.state_dict()

    fresh = torch.optim.SGD([{"params": [params[0]], "lr": 1.0}, {"params": [params[1]], "lr": 0.25}], lr=1.0)
    restored = schedules.lambda_scheduler(fresh, multiplier)
    restored.load_state_dict(state)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        fresh.step()
        restored.step()
    assert scheduler.get_last_lr() == restored.get_last_lr()


def test_lambda_scheduler_needs_one_multiplier_per_group():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="got 2 multipliers for 1 parameter groups"):
        schedules.lambda_scheduler(optimizer, [schedules.constant, schedules.constant])


def test_one_cycle_matches_torch_one_cycle_lr():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=1.0, total_steps=40, pct_start=0.3, cycle_momentum=False, anneal_strategy="cos"
    )
    for step in range(40):
        ours = schedules.one_cycle(step, total_steps=40, pct_start=0.3, div_factor=25.0, final_div_factor=1e4)
        assert ours == pytest.approx(reference.get_last_lr()[0], rel=1e-9, abs=1e-12), step
        optimizer.step()
        reference.step()


@pytest.mark.parametrize(("step", "expected"), [(0, 1 / 25), (11, 1.0), (39, 1 / 25 / 1e4)])
def test_one_cycle_boundaries(step, expected):
    assert schedules.one_cycle(step, total_steps=40) == pytest.approx(expected)


def test_gated_is_zero_before_its_start():
    inner = schedules.bind(schedules.slanted_triangular, total_steps=100)
    assert schedules.gated(4, start_step=5, inner=inner) == 0.0
    assert schedules.gated(5, start_step=5, inner=inner) == inner(5)
