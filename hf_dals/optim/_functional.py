"""Sub-steps shared by the optimizers of hf-dals, written once and tested once.

Every function here works on tensors only and never reads a tensor value on the host, so an
optimizer step built from them causes no device synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["NormPlan", "ema_filter_", "norm_plan", "phase_from_improvement", "tensor_norms", "trust_ratio"]


def trust_ratio(
    param_norm: Tensor,
    update_norm: Tensor,
    coefficient: float | Tensor,
    clip: tuple[float, float] | tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Return the LARS-style trust ratio ``coefficient * ||theta|| / ||update||``.

    With ``clip = (low, high)`` the ratio is clamped to ``[low, high]``. The coefficient and the
    bounds may be tensors of the norms' shape, one value per tensor. The ratio is exactly 1
    where either norm is zero (a fresh zero-initialised bias, or a parameter whose update
    vanished), so such tensors step with the plain learning rate instead of 0 or infinity.
    Works elementwise, so ``param_norm`` and ``update_norm`` may hold one norm per tensor.
    """
    ratio = coefficient * param_norm / update_norm
    if clip is not None:
        ratio = ratio.clamp(clip[0], clip[1])
    valid = (param_norm > 0) & (update_norm > 0)
    return torch.where(valid, ratio, torch.ones_like(ratio))


def ema_filter_(slow: Tensor, grad: Tensor, alpha: float | Tensor) -> Tensor:
    """Update the Grokfast EMA in place: ``slow <- alpha * slow + (1 - alpha) * grad``.

    ``alpha`` may be a Python float or a 0-d tensor (a weight chosen on the device, for example
    by the DALS phase). Computed as ``slow.lerp_(grad, 1 - alpha)``, one pass over memory; with
    ``alpha == 1`` the filter keeps its value exactly.
    """
    return slow.lerp_(grad, 1 - alpha)


def phase_from_improvement(improvement: Tensor, explore_threshold: float, refine_threshold: float) -> Tensor:
    """Classify a relative loss improvement into a DALS training phase.

    Returns 0 (explore) where ``improvement > explore_threshold``, 1 where
    ``refine_threshold < improvement <= explore_threshold``, and 2 (refine) elsewhere, which
    includes a NaN improvement. The result is an int64 tensor of the input's shape.
    """
    explore = torch.zeros_like(improvement, dtype=torch.long)
    middle = torch.ones_like(explore)
    refine = torch.full_like(explore, 2)
    return torch.where(
        improvement > explore_threshold,
        explore,
        torch.where(improvement > refine_threshold, middle, refine),
    )


#: Tensors with at most this many elements get their norms from one stacked copy per shape.
#: On the CPU (torch 2.13, one thread) each norm in ``torch._foreach_norm`` cost about 2 us of
#: fixed overhead in our measurements, far more than copying a small tensor once.
STACK_NORM_MAX_NUMEL = 4096


@dataclass(frozen=True)
class NormPlan:
    """A plan for computing the norms of a fixed list of tensors with few kernels.

    ``stacked`` lists the positions of small tensors that share a shape: each list becomes one
    stacked copy and one batched norm. ``rest`` lists the other positions, whose norms come from
    ``torch._foreach_norm``. ``order`` maps each tensor to its norm in the concatenated result;
    ``None`` means the result is already in input order.
    """

    stacked: tuple[tuple[int, ...], ...]
    rest: tuple[int, ...]
    order: Tensor | None


def norm_plan(shapes: list[torch.Size], device: torch.device, max_numel: int = STACK_NORM_MAX_NUMEL) -> NormPlan:
    """Plan the norms of tensors with the given ``shapes``: stack the small ones that share a shape."""
    by_shape: dict[torch.Size, list[int]] = {}
    for position, shape in enumerate(shapes):
        if math.prod(shape) <= max_numel:
            by_shape.setdefault(shape, []).append(position)
    stacked = tuple(tuple(positions) for positions in by_shape.values() if len(positions) > 1)
    stacked_positions = {position for positions in stacked for position in positions}
    rest = tuple(position for position in range(len(shapes)) if position not in stacked_positions)
    if not stacked:
        return NormPlan(stacked=(), rest=rest, order=None)
    computed = [position for positions in stacked for position in positions] + list(rest)
    order = torch.empty(len(shapes), dtype=torch.long)
    order[torch.tensor(computed, dtype=torch.long)] = torch.arange(len(shapes))
    return NormPlan(stacked=stacked, rest=rest, order=order.to(device))


def tensor_norms(tensors: list[Tensor], plan: NormPlan | None = None) -> Tensor:
    """Return the 2-norm of each tensor as one 1-d tensor, following ``plan`` when given.

    Without a plan this is ``torch.stack(torch._foreach_norm(tensors))``. A plan from
    :func:`norm_plan` gives the same values up to rounding (bitwise equal in our float32 CPU
    checks) with one kernel per stacked shape in place of one per tensor.
    """
    if plan is None or not plan.stacked:
        return torch.stack(torch._foreach_norm(tensors))
    pieces = [
        torch.linalg.vector_norm(torch.stack([tensors[i] for i in positions]).view(len(positions), -1), dim=1)
        for positions in plan.stacked
    ]
    if plan.rest:
        pieces.append(torch.stack(torch._foreach_norm([tensors[i] for i in plan.rest])))
    return torch.cat(pieces)[plan.order]
