"""LARS and LAMB from ``pytorch_optimizer``, extended to parameters sharded by FSDP2.

Both optimizers scale each tensor's step by a trust ratio built from the norm of the whole
tensor. Measured with pytorch-optimizer 4.1 and torch 2.13 on two CPU processes with
``fully_shard`` (``tests/test_distributed.py``), the library's classes cannot step on ``DTensor``
parameters: the multi-tensor step of ``LARS`` raises ``NotImplementedError`` (DTensor has no
sharding rule for ``aten._foreach_copy_``), and both steps of ``Lamb`` raise ``RuntimeError``
(an in-place ``clamp_`` on a norm whose DTensor placement is a partial sum). The per-tensor step of
``LARS`` (``foreach=False``) is correct, but DTensor reduces every norm separately.

The subclasses below keep the library's update rule, arguments and state. Without ``DTensor``
parameters they run the library's own ``step``. With them, they run a multi-tensor step of the
same rule on the local shards, with the norms of the full tensors from one ``all_reduce`` per
parameter group, device and dtype (:func:`hf_dals.optim._distributed.full_tensor_norms`).
"""

from __future__ import annotations

import torch
from pytorch_optimizer import LARS as _LibraryLARS
from pytorch_optimizer import Lamb as _LibraryLamb
from torch import Tensor
from torch.optim import Optimizer

from ._distributed import full_tensor_norms, has_dtensor, local_tensors

__all__ = ["LARS", "Lamb"]


def _all_params(optimizer: Optimizer) -> list[Tensor]:
    return [param for group in optimizer.param_groups for param in group["params"]]


def _by_device_and_dtype(layouts: list[Tensor], *tensor_lists: list[Tensor]):
    """Yield ``(layouts, *local lists)`` for each device and dtype, the shards taken locally."""
    local_lists = [local_tensors(tensors) for tensors in tensor_lists]
    grouped = Optimizer._group_tensors_by_device_and_dtype(local_lists, with_indices=True)
    for lists, indices in grouped.values():
        yield [layouts[index] for index in indices], *lists


class _ShardedStep:
    """Run the library's ``step`` on plain tensors and ``_step_group_on_shards`` on DTensors.

    Mixed in before a ``pytorch_optimizer`` class, whose ``init_group`` creates the state.
    """

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        if not has_dtensor(_all_params(self)):
            return super().step(closure)
        self._check_shard_support()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self.init_group(group)
            group["step"] += 1
            self._step_group_on_shards(group)
        return loss

    def _check_shard_support(self) -> None:
        """Raise ``NotImplementedError`` for options the shard step does not implement."""

    def _step_group_on_shards(self, group: dict) -> None:
        """Step one parameter group on the local shards; each optimizer class implements it."""
        raise NotImplementedError


class LARS(_ShardedStep, _LibraryLARS):
    r"""LARS (You et al., arXiv:1708.03888): ``pytorch_optimizer.LARS``, also on FSDP2 shards.

    For each parameter :math:`\theta` with two or more dimensions and gradient :math:`g`:

    .. math::

        r &= \frac{\gamma \lVert\theta\rVert}{\lVert g\rVert + \lambda \lVert\theta\rVert}
            \quad (r = 1 \text{ if } \lVert\theta\rVert = 0 \text{ or the denominator is } 0) \\
        u &= r\,(g + \lambda\theta) \\
        m &\leftarrow \mu m + (1 - \tau)\, u, \qquad
            \theta \leftarrow \theta - \eta\, m \quad (\theta - \eta\,(u + \mu m)
            \text{ with Nesterov})

    Scalars and vectors (biases, norm weights) take :math:`u = g`: no decay and no trust ratio.
    The arguments, defaults and state (``momentum_buffer``, the group's ``step``) are those of
    ``pytorch_optimizer.LARS``. Sharded (``DTensor``) parameters always take the multi-tensor
    step on their local shards, with full-tensor norms. The module docstring explains why the
    library's step cannot be used there.
    """

    def _step_group_on_shards(self, group: dict) -> None:
        state_keys = ["momentum_buffer"] if group["momentum"] > 0.0 else []
        params, grads, state = self.collect_trainable_params(group, self.state, state_keys=state_keys)
        if not params:
            return
        momentum_buffers = state.get("momentum_buffer", [])
        tensor_lists = (params, grads, momentum_buffers) if momentum_buffers else (params, grads)
        for device_layouts, *device_lists in _by_device_and_dtype(params, *tensor_lists):
            device_params, device_grads = device_lists[0], device_lists[1]
            device_momenta = device_lists[2] if momentum_buffers else []
            _lars_on_shards(group, device_layouts, device_params, device_grads, device_momenta, self.maximize)


def _lars_on_shards(
    group: dict,
    layouts: list[Tensor],
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    maximize: bool,
) -> None:
    """Apply one LARS step to local shards; the norms are taken over the full tensors."""
    weight_decay = group["weight_decay"]
    # Work on new tensors: the gradients stay as the backward pass left them.
    updates = list(torch._foreach_neg(grads)) if maximize else list(grads)

    matrices = [index for index, layout in enumerate(layouts) if layout.ndim > 1]
    if matrices:
        matrix_params = [params[index] for index in matrices]
        matrix_updates = [updates[index] for index in matrices]
        matrix_layouts = [layouts[index] for index in matrices]
        param_norms, grad_norms = full_tensor_norms(matrix_layouts, matrix_params, matrix_updates)
        denominator = grad_norms + weight_decay * param_norms
        ratios = torch.where(
            param_norms > 0.0,
            torch.where(denominator > 0.0, group["trust_coefficient"] * param_norms / denominator, 1.0),
            1.0,
        )
        scaled = torch._foreach_add(matrix_updates, matrix_params, alpha=weight_decay)
        torch._foreach_mul_(scaled, ratios.unbind())
        for index, update in zip(matrices, scaled):
            updates[index] = update

    if group["momentum"] > 0.0:
        torch._foreach_mul_(momentum_buffers, group["momentum"])
        torch._foreach_add_(momentum_buffers, updates, alpha=1.0 - group["dampening"])
        if group["nesterov"]:
            updates = torch._foreach_add(updates, momentum_buffers, alpha=group["momentum"])
        else:
            updates = momentum_buffers
    torch._foreach_add_(params, updates, alpha=-group["lr"])


class Lamb(_ShardedStep, _LibraryLamb):
    r"""LAMB (You et al., arXiv:1904.00962): ``pytorch_optimizer.Lamb``, also on FSDP2 shards.

    With the library's defaults (decoupled weight decay :math:`w`), at step :math:`t` and for
    each parameter :math:`\theta` with gradient :math:`g`:

    .. math::

        \theta &\leftarrow (1 - \eta w)\,\theta \\
        m &\leftarrow \beta_1 m + (1 - \beta_1)\, g, \qquad
            v \leftarrow \beta_2 v + (1 - \beta_2)\, g^2 \\
        u &= m / (\sqrt{v} + \epsilon) \\
        r &= \frac{\min(\lVert\theta\rVert, 10)}{\lVert u\rVert + \epsilon}
            \quad (r = 1 \text{ if a norm is } 0), \qquad
            \theta \leftarrow \theta - \frac{\eta}{1 - \beta_1^t}\, r\, u

    The step size is :math:`\eta` without the :math:`1 - \beta_1^t` factor when
    ``adam_debias=True``.

    A group with ``adam=True`` uses :math:`r = 1`. The arguments, defaults and state
    (``exp_avg``, ``exp_avg_sq``, and the last ``weight_norm``, ``adam_norm`` and
    ``trust_ratio``) are those of ``pytorch_optimizer.Lamb``.

    Sharded (``DTensor``) parameters always take a multi-tensor step on their local shards, with
    full-tensor norms. The module docstring explains why the library's step cannot be used there.
    That step implements the rule above with ``weight_decouple``, ``fixed_decay``,
    ``grad_averaging``, ``adam_debias`` and ``maximize``. The options that change the rule
    further (``rectify``, ``pre_norm``, ``adanorm``) raise ``NotImplementedError`` there.
    """

    _UNSUPPORTED_ON_SHARDS = ("rectify", "adanorm")

    def _step_group_on_shards(self, group: dict) -> None:
        params, grads, state = self.collect_trainable_params(group, self.state, state_keys=["exp_avg", "exp_avg_sq"])
        if not params:
            return
        # The library's step size: lr / (1 - beta1^t), or lr with adam_debias=True.
        bias_correction1 = self.debias(group["betas"][0], group["step"])
        step_size = self.apply_adam_debias(group.get("adam_debias", False), group["lr"], bias_correction1)
        tensor_lists = (params, grads, state["exp_avg"], state["exp_avg_sq"])
        for device_layouts, *device_lists in _by_device_and_dtype(params, *tensor_lists):
            ratios = _lamb_on_shards(
                group, device_layouts, *device_lists, step_size=step_size, clamp=self.clamp, maximize=self.maximize
            )
            for layout, weight_norm, adam_norm, ratio in zip(device_layouts, *ratios):
                self.state[layout].update(weight_norm=weight_norm, adam_norm=adam_norm, trust_ratio=ratio)

    def _check_shard_support(self) -> None:
        if self.pre_norm:
            raise NotImplementedError(
                "Lamb(pre_norm=True) is not supported on sharded (DTensor) parameters; use pre_norm=False "
                "and clip gradients in the training loop (Trainer's max_grad_norm does)"
            )
        for group in self.param_groups:
            enabled = [option for option in self._UNSUPPORTED_ON_SHARDS if group.get(option)]
            if enabled:
                raise NotImplementedError(
                    f"Lamb option {enabled[0]}=True is not supported on sharded (DTensor) parameters; "
                    f"set {enabled[0]}=False or train without FSDP"
                )


def _lamb_on_shards(
    group: dict,
    layouts: list[Tensor],
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    step_size: float,
    clamp: float,
    maximize: bool,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Apply one LAMB step to local shards; return the weight norms, update norms and ratios."""
    beta1, beta2 = group["betas"]
    eps = group["eps"]
    weight_decay = group["weight_decay"]
    beta3 = 1.0 - beta1 if group["grad_averaging"] else 1.0
    grads = torch._foreach_neg(grads) if maximize else grads

    if group["weight_decouple"] and weight_decay != 0.0:
        factor = 1.0 - weight_decay if group["fixed_decay"] else 1.0 - weight_decay * group["lr"]
        torch._foreach_mul_(params, factor)

    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=beta3)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)

    # The same order of operations as the library, so that both give the same bits.
    updates = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(updates, eps)
    torch._foreach_reciprocal_(updates)
    torch._foreach_mul_(updates, exp_avgs)
    if not group["weight_decouple"] and weight_decay > 0.0:
        torch._foreach_add_(updates, params, alpha=weight_decay)

    weight_norms, update_norms = full_tensor_norms(layouts, params, updates)
    weight_norms = weight_norms.clamp(max=clamp)
    ratios = torch.where((weight_norms != 0) & (update_norms != 0), weight_norms / (update_norms + eps), 1.0)
    if not group["adam"]:
        torch._foreach_mul_(updates, ratios.unbind())
    torch._foreach_add_(params, updates, alpha=-step_size)
    return list(weight_norms.unbind()), list(update_norms.unbind()), list(ratios.unbind())
