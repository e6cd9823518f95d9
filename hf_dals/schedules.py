"""Learning-rate schedules as pure multiplier functions of the optimizer step.

Each function maps a step ``t`` (0 for the first update) to a multiplier of the group's peak
learning rate. :func:`lambda_scheduler` binds one function per parameter group and wraps them in
``torch.optim.lr_scheduler.LambdaLR``, so Trainer steps, logs, saves and restores the schedule like
any other, and per-group ratios (discriminative learning rates) survive every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "bind",
    "constant",
    "gated",
    "lambda_scheduler",
    "linear_warmup_decay",
    "one_cycle",
    "sgdr",
    "slanted_triangular",
    "warmup_cosine",
    "warmup_steps_from_fraction",
]

Multiplier = Callable[[int], float]


def warmup_steps_from_fraction(total_steps: int, fraction: float) -> int:
    """Return ``floor(fraction * total_steps)``, the warmup length the reference code uses."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"invalid warmup fraction: {fraction} (expected 0 <= fraction < 1)")
    return int(fraction * total_steps)


def constant(step: int) -> float:
    """Return 1.0 at every step."""
    return 1.0


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warmup from 0 over ``warmup_steps``, then half a cosine down to ``min_ratio``.

    ``s = t / W`` for ``t < W``, then ``s = min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * p))``
    with ``p = (t - W) / (T - W)`` clamped to [0, 1]. Step 0 gives 0 when there is a warmup.
    """
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear_warmup_decay(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 0 to 1 over ``warmup_steps``, then linear decay to 0 at ``total_steps``.

    This is the multiplier of ``transformers.get_linear_schedule_with_warmup``.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def sgdr(step: int, *, cycle_steps: int, cycle_mult: float = 2.0, min_ratio: float = 0.0) -> float:
    """Cosine annealing with warm restarts (Loshchilov and Hutter, arXiv:1608.03983).

    Cycle ``k`` lasts ``T_k = cycle_steps * cycle_mult ** k`` steps; within it
    ``s = min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * t_cycle / T_k))``, so the multiplier
    is 1 at the first step of every cycle. There is no warmup.
    """
    t_cycle = step
    length = float(cycle_steps)
    # NOTE: the loop runs once per finished cycle, which is at most a few dozen iterations for
    # cycle_mult >= 2; cycle_mult == 1 gives a closed form.
    if cycle_mult == 1.0:
        t_cycle = step % cycle_steps
    else:
        while t_cycle >= length:
            t_cycle -= length
            length *= cycle_mult
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t_cycle / length))


def slanted_triangular(step: int, *, total_steps: int, cut_frac: float = 0.1, ratio: float = 32.0) -> float:
    """ULMFiT's slanted triangular multiplier (Howard and Ruder, arXiv:1801.06146, eq. 3).

    With ``cut = floor(T * cut_frac)``: ``p = t / cut`` for ``t < cut``, else
    ``p = 1 - (t - cut) / (cut * (1 / cut_frac - 1))``; the multiplier is
    ``(1 + p * (ratio - 1)) / ratio``, rising from ``1 / ratio`` to 1 at the cut and falling back.
    ``p`` is clamped at 0 so that steps past ``T`` stay at ``1 / ratio``.
    """
    cut = max(1, math.floor(total_steps * cut_frac))
    if step < cut:
        p = step / cut
    else:
        p = max(0.0, 1.0 - (step - cut) / (cut * (1.0 / cut_frac - 1.0)))
    return (1.0 + p * (ratio - 1.0)) / ratio


def lambda_scheduler(optimizer: Optimizer, multipliers: Multiplier | Sequence[Multiplier]) -> LambdaLR:
    """Wrap one multiplier per parameter group (or one for all) in ``LambdaLR``."""
    if callable(multipliers):
        multipliers = [multipliers] * len(optimizer.param_groups)
    multipliers = list(multipliers)
    if len(multipliers) != len(optimizer.param_groups):
        raise ValueError(
            f"got {len(multipliers)} multipliers for {len(optimizer.param_groups)} parameter groups; "
            "pass one per group or a single one for all"
        )
    return LambdaLR(optimizer, lr_lambda=multipliers)


def bind(function: Callable[..., float], **kwargs) -> Multiplier:
    """Bind keyword arguments of a schedule function, giving a picklable ``step -> multiplier``."""
    return partial(function, **kwargs)


def _cosine_between(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def one_cycle(
    step: int,
    *,
    total_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> float:
    """The one-cycle multiplier (Smith and Topin, arXiv:1708.07120), as ``torch.optim.lr_scheduler.OneCycleLR``.

    The multiplier rises from ``1 / div_factor`` to 1 along a cosine until step
    ``pct_start * T - 1``, then falls along a cosine to ``1 / (div_factor * final_div_factor)`` at
    step ``T - 1``. Momentum is not cycled.
    """
    start = 1.0 / div_factor
    end = start / final_div_factor
    peak_step = pct_start * total_steps - 1.0
    if step <= peak_step:
        return _cosine_between(start, 1.0, step / peak_step if peak_step > 0 else 1.0)
    fraction = (step - peak_step) / max(total_steps - 1.0 - peak_step, 1e-12)
    return _cosine_between(1.0, end, min(1.0, fraction))


def gated(step: int, *, start_step: int, inner: Multiplier) -> float:
    """Return 0 before ``start_step`` and ``inner(step)`` from then on (gradual unfreezing)."""
    return inner(step) if step >= start_step else 0.0
