"""Sub-steps shared by the optimizers of hf-dals, written once and tested once.

Every function here works on tensors only and never reads a tensor value on the host, so an
optimizer step built from them causes no device synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ema_filter_", "phase_from_improvement", "trust_ratio"]


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
