"""Grokfast: SGD on gradients amplified by their slow (EMA) component."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._functional import ema_filter_

__all__ = ["GrokfastSGD"]


class GrokfastSGD(Optimizer):
    r"""SGD with the Grokfast EMA gradient filter (Lee et al., arXiv:2405.20233).

    For each parameter :math:`\theta` with gradient :math:`g`:

    .. math::

        \bar g &\leftarrow \alpha \bar g + (1 - \alpha) g, \qquad \bar g_0 = 0 \\
        u &= g + \lambda \bar g \\
        m &\leftarrow \mu m + (1 - \mu) u \\
        \theta &\leftarrow \theta - \eta m - \eta w \theta

    The filter amplifies the slow-varying part of the gradient by :math:`\lambda`. Momentum is an
    EMA (dampening :math:`1 - \mu`) and weight decay :math:`w` is decoupled, as in the Grokfast
    baseline of arXiv:2604.27295's code, so its learning rates carry over.

    A parameter without a gradient at a step is skipped and its filter keeps its value. The
    filter (``grokfast_ema``) and the momentum (``momentum_buffer``) live in ``optimizer.state``
    and are saved with ``state_dict()``; the optimizer never keeps a reference to ``p.grad``.

    hf-dals has its own implementation because pytorch-optimizer 4.1 offers the filter only
    inside AdamW (``GrokFastAdamW``), while this baseline filters an SGD step.

    Args:
        params: parameters or parameter groups.
        lr: learning rate :math:`\eta` > 0.
        momentum: :math:`\mu` in [0, 1).
        weight_decay: decoupled weight decay :math:`w` >= 0.
        alpha: filter weight :math:`\alpha` in [0, 1).
        lamb: amplification :math:`\lambda` >= 0.
        foreach: use multi-tensor (``torch._foreach_*``) kernels, one call per device and dtype;
            ``None`` (the default) uses them. ``False`` runs the per-tensor loop. Both apply the
            same operations and give the same result.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 0.03,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        alpha: float = 0.98,
        lamb: float = 2.0,
        foreach: bool | None = None,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"invalid learning rate: {lr} (expected lr >= 0)")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"invalid momentum: {momentum} (expected 0 <= momentum < 1)")
        if not weight_decay >= 0:
            raise ValueError(f"invalid weight_decay: {weight_decay} (expected weight_decay >= 0)")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"invalid alpha: {alpha} (expected 0 <= alpha < 1)")
        if not lamb >= 0:
            raise ValueError(f"invalid lamb: {lamb} (expected lamb >= 0)")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, alpha=alpha, lamb=lamb, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, filters, momenta = [], [], [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("GrokfastSGD does not support sparse gradients")
                state = self.state[param]
                if "grokfast_ema" not in state:
                    state["grokfast_ema"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                params.append(param)
                grads.append(param.grad)
                filters.append(state["grokfast_ema"])
                momenta.append(state["momentum_buffer"])
            if not params:
                continue
            update = _single_tensor_grokfast if group["foreach"] is False else _multi_tensor_grokfast
            update(
                params,
                grads,
                filters,
                momenta,
                lr=group["lr"],
                momentum=group["momentum"],
                weight_decay=group["weight_decay"],
                alpha=group["alpha"],
                lamb=group["lamb"],
            )
        return loss


def _single_tensor_grokfast(params, grads, filters, momenta, *, lr, momentum, weight_decay, alpha, lamb) -> None:
    """Apply the Grokfast SGD update tensor by tensor."""
    for param, grad, ema, momentum_buffer in zip(params, grads, filters, momenta):
        ema_filter_(ema, grad, alpha)
        update = grad.add(ema, alpha=lamb)
        momentum_buffer.mul_(momentum).add_(update, alpha=1.0 - momentum)
        if weight_decay != 0:
            param.mul_(1.0 - lr * weight_decay)
        param.add_(momentum_buffer, alpha=-lr)


def _multi_tensor_grokfast(params, grads, filters, momenta, *, lr, momentum, weight_decay, alpha, lamb) -> None:
    """Apply the Grokfast SGD update with multi-tensor kernels, one call per device and dtype."""
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, filters, momenta])
    for (device_params, device_grads, device_filters, device_momenta), _ in grouped.values():
        torch._foreach_lerp_(device_filters, device_grads, 1 - alpha)
        updates = torch._foreach_add(device_grads, device_filters, alpha=lamb)
        torch._foreach_mul_(device_momenta, momentum)
        torch._foreach_add_(device_momenta, updates, alpha=1.0 - momentum)
        if weight_decay != 0:
            torch._foreach_mul_(device_params, 1.0 - lr * weight_decay)
        torch._foreach_add_(device_params, device_momenta, alpha=-lr)
