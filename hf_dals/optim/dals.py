"""DALS: Discriminative Adaptive Layer Scaling, and its Fast and Acc variants."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._distributed import full_tensor_norms, has_dtensor, local_tensors
from ._functional import ema_filter_, phase_from_improvement, trust_ratio

__all__ = ["DALS", "DALSVariant", "DALS_VARIANTS", "dals_phase_weights"]

# Keys of the optimizer-wide state. They live in the state of the first parameter (the anchor),
# so every checkpoint format that saves per-parameter state saves them too.
_GLOBAL_KEYS = ("phase", "loss_ema", "loss_initialized")


@dataclass(frozen=True)
class DALSVariant:
    """Defaults and phase rules of one DALS variant.

    ``explore_floor`` and ``explore_offset`` give the phase-0 filter weight
    ``max(explore_floor, alpha_0 - explore_offset)``; ``raw_gradient_in_explore`` makes phase 0
    use the raw gradient and freeze the filter (DALS-Fast).
    """

    name: str
    lr: float
    momentum: float
    weight_decay: float
    grokfast_alpha: float
    phase_thresholds: tuple[float, float]
    explore_floor: float
    explore_offset: float
    raw_gradient_in_explore: bool = False


# Defaults of the authors' code (arXiv:2604.27295): the base rule, DALS-Fast (higher lr, lower
# momentum, no filtering while exploring) and DALS-Acc (stronger filter, lower refine threshold).
# DALS-Acc's SGDR schedule belongs to the strategy, not to the optimizer.
DALS_VARIANTS: dict[str, DALSVariant] = {
    "dals": DALSVariant("dals", 0.03, 0.9, 1e-4, 0.6, (0.01, 0.002), 0.3, 0.3),
    "fast": DALSVariant("fast", 0.05, 0.85, 1e-4, 0.6, (0.01, 0.002), 0.3, 0.3, raw_gradient_in_explore=True),
    "acc": DALSVariant("acc", 0.03, 0.9, 5e-4, 0.7, (0.01, 0.001), 0.4, 0.15),
}

_REFINE_CAP = 0.9
_REFINE_OFFSET = 0.1


def dals_phase_weights(variant: DALSVariant, grokfast_alpha: float, depth_ratio: float) -> list[tuple[float, float, float]]:
    """Return ``(filter_weight, raw_weight, slow_weight)`` for phases 0, 1 and 2.

    The slow gradient is updated as ``slow <- filter_weight * slow + (1 - filter_weight) * g``
    and the blended gradient is ``raw_weight * g + slow_weight * slow``. The depth blend is
    ``raw_weight = 0.3 + 0.4 d`` and ``slow_weight = 0.7 - 0.4 d`` for depth ratio ``d``.
    """
    # raw + slow = 1 for every depth, which lets the step compute the blend as one lerp.
    raw = 0.3 + 0.4 * depth_ratio
    slow = 1.0 - raw
    explore_alpha = max(variant.explore_floor, grokfast_alpha - variant.explore_offset)
    refine_alpha = min(_REFINE_CAP, grokfast_alpha + _REFINE_OFFSET)
    if variant.raw_gradient_in_explore:
        explore = (1.0, 1.0, 0.0)
    else:
        explore = (explore_alpha, raw, slow)
    return [explore, (grokfast_alpha, raw, slow), (refine_alpha, raw, slow)]


def _check_unit_interval(name: str, value: float, *, closed_high: bool = False) -> None:
    ok = 0.0 <= value <= 1.0 if closed_high else 0.0 <= value < 1.0
    if not ok:
        bound = "<=" if closed_high else "<"
        raise ValueError(f"invalid {name}: {value} (expected 0 <= {name} {bound} 1)")


class DALS(Optimizer):
    r"""Discriminative Adaptive Layer Scaling (Wei, Wang, Wang et al., arXiv:2604.27295).

    For each parameter tensor :math:`\theta` with gradient :math:`g`, in a group of depth ratio
    :math:`d \in [0, 1]` (0 at the embeddings, 1 at the head) and with the training phase
    :math:`\phi \in \{0, 1, 2\}` set by :meth:`observe_loss`:

    .. math::

        \bar g &\leftarrow \alpha_\phi \bar g + (1 - \alpha_\phi)\, g
            && \text{Grokfast EMA filter, } \bar g_0 = 0 \\
        \hat g &= (0.3 + 0.4 d)\, g + (0.7 - 0.4 d)\, \bar g + \lambda \theta
            && \text{depth blend, coupled L2 decay} \\
        r &= \operatorname{clip}\!\left(\gamma \frac{\lVert\theta\rVert}{\lVert\hat g\rVert},
            r_{\min}, r_{\max}\right) \quad (r = 1 \text{ if a norm is } 0)
            && \text{trust ratio} \\
        m &\leftarrow \mu m + \hat g, \qquad \theta \leftarrow \theta - \eta_t\, r\, m
            && \text{momentum without dampening}

    The filter weight depends on the phase: :math:`\alpha_0 = \max(0.3, \alpha - 0.3)` while
    exploring, :math:`\alpha_1 = \alpha`, :math:`\alpha_2 = \min(0.9, \alpha + 0.1)` while
    refining. The bottom of the network takes more of the slow, filtered gradient and the top
    more of the raw one.

    Phase detection (:meth:`observe_loss`, once per optimizer step) keeps an EMA of the training
    loss, :math:`\ell_{ema} \leftarrow 0.95\,\ell_{ema} + 0.05\,\ell` (the first call only
    initialises it), and its relative improvement
    :math:`\delta = (\ell_{ema}^{old} - \ell_{ema}^{new}) / |\ell_{ema}^{old}|`: phase 0 if
    :math:`\delta > 0.01`, phase 1 if :math:`0.002 < \delta \le 0.01`, phase 2 otherwise. A
    non-finite loss is ignored. Before the second observed loss the phase is 0.

    Variants (``variant``):

    * ``"dals"``: as above; lr 0.03, momentum 0.9, weight decay 1e-4, alpha 0.6.
    * ``"fast"``: lr 0.05, momentum 0.85. In phase 0 it steps on the raw gradient
      (:math:`\hat g = g + \lambda\theta`) and leaves the filter untouched.
    * ``"acc"``: alpha 0.7, weight decay 5e-4, phase-0 weight :math:`\max(0.4, \alpha - 0.15)`,
      refine threshold 0.001. Its warm-restart schedule is a separate ``LRScheduler``.

    The learning rate :math:`\eta_t` is the group's ``lr``: the warmup + cosine or SGDR schedule
    is an ``LRScheduler`` (see :mod:`hf_dals.schedules`), so the first update under warmup uses
    lr 0, as in the authors' code.

    Args:
        params: parameters or parameter groups. A group's ``depth_ratio`` key sets :math:`d`
            (0.5 when absent); :func:`hf_dals.depth_param_groups` sets it.
        lr: peak learning rate :math:`\eta_0`. ``None`` takes the variant's default.
        momentum: :math:`\mu`, in [0, 1). ``None`` takes the variant's default.
        weight_decay: :math:`\lambda`, added to the blended gradient (coupled, not decoupled).
            ``None`` takes the variant's default.
        trust_coefficient: :math:`\gamma` > 0.
        trust_clip: ``(r_min, r_max)`` with ``0 < r_min <= r_max``, or ``None`` for no clipping.
        grokfast_alpha: the nominal filter weight :math:`\alpha` in [0, 1). ``None`` takes the
            variant's default.
        variant: ``"dals"``, ``"fast"`` or ``"acc"``.
        phase_thresholds: ``(explore, refine)`` improvement thresholds with
            ``explore >= refine``. ``None`` takes the variant's default.
        loss_ema_decay: decay of the loss EMA used for phase detection, in [0, 1).
        foreach: use the multi-tensor (``torch._foreach_*``) implementation, which groups the
            tensors of a parameter group by device and dtype and computes all their norms and
            trust ratios at once. ``None`` (the default) and ``True`` use it; ``False`` runs the
            per-tensor reference implementation. Both give the same result up to float rounding.

    Sharded parameters (FSDP2's ``fully_shard``, or any ``DTensor`` that is sharded or
    replicated) take the multi-tensor step on their local shards. The norms in the trust ratio
    are still those of the full tensors: the squared shard norms are summed over the device mesh
    with one ``all_reduce`` per parameter group and step
    (:func:`hf_dals.optim._distributed.full_tensor_norms`). With ``foreach=False`` the per-tensor
    step runs on the ``DTensor`` objects themselves. Its norms are also full-tensor norms, but
    DTensor reduces each one separately, two collectives per tensor.

    State: ``momentum_buffer`` and ``slow_grad`` per parameter, each the size of the parameter
    (twice the parameter memory in all; ``DTensor`` shards for a sharded parameter), created at
    the first step in which the parameter has a gradient. The phase, the loss EMA and whether it
    was initialised are 0-d plain tensors stored in the state of the first parameter, so they are
    saved and restored with ``state_dict()``. They have the same value on every process as long
    as every process observes the same loss (``DALSTrainer`` averages it over processes).
    NOTE: saving them through FSDP2's distributed checkpoint (``Trainer`` with FSDP2) is untested.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        trust_coefficient: float = 0.02,
        trust_clip: tuple[float, float] | None = (0.2, 5.0),
        grokfast_alpha: float | None = None,
        variant: str = "dals",
        phase_thresholds: tuple[float, float] | None = None,
        loss_ema_decay: float = 0.95,
        foreach: bool | None = None,
    ) -> None:
        if variant not in DALS_VARIANTS:
            raise ValueError(f"invalid variant: {variant!r} (expected one of {sorted(DALS_VARIANTS)})")
        spec = DALS_VARIANTS[variant]
        lr = spec.lr if lr is None else lr
        momentum = spec.momentum if momentum is None else momentum
        weight_decay = spec.weight_decay if weight_decay is None else weight_decay
        grokfast_alpha = spec.grokfast_alpha if grokfast_alpha is None else grokfast_alpha
        phase_thresholds = spec.phase_thresholds if phase_thresholds is None else tuple(phase_thresholds)

        if not (isinstance(lr, (int, float)) and lr >= 0 and math.isfinite(lr)):
            raise ValueError(f"invalid learning rate: {lr} (expected a finite lr >= 0)")
        _check_unit_interval("momentum", momentum)
        if not weight_decay >= 0:
            raise ValueError(f"invalid weight_decay: {weight_decay} (expected weight_decay >= 0)")
        if not trust_coefficient > 0:
            raise ValueError(f"invalid trust_coefficient: {trust_coefficient} (expected trust_coefficient > 0)")
        if trust_clip is not None:
            if len(trust_clip) != 2 or not 0 < trust_clip[0] <= trust_clip[1]:
                raise ValueError(
                    f"invalid trust_clip: {trust_clip} (expected (low, high) with 0 < low <= high, or None)"
                )
            trust_clip = (float(trust_clip[0]), float(trust_clip[1]))
        _check_unit_interval("grokfast_alpha", grokfast_alpha)
        if len(phase_thresholds) != 2 or not phase_thresholds[0] >= phase_thresholds[1]:
            raise ValueError(
                f"invalid phase_thresholds: {phase_thresholds} (expected (explore, refine) with explore >= refine)"
            )
        _check_unit_interval("loss_ema_decay", loss_ema_decay)

        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            trust_clip=trust_clip,
            grokfast_alpha=grokfast_alpha,
            depth_ratio=0.5,
            foreach=foreach,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            ratio = group["depth_ratio"]
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"invalid depth_ratio: {ratio} in group {group.get('name', '?')} (expected 0 <= d <= 1)")
        self.variant = spec
        self.phase_thresholds = (float(phase_thresholds[0]), float(phase_thresholds[1]))
        self.loss_ema_decay = float(loss_ema_decay)
        # Per-group tables of phase weights, kept on the device so that step() can pick the row of
        # the current phase without reading the phase on the host.
        self._weight_tables: dict[tuple, Tensor] = {}
        # The mean trust ratio of each parameter group at the last step, as 0-d tensors; for
        # logging only, so it is not part of the state dict.
        self.last_trust_ratio_mean: dict[int, Tensor] = {}

    # -- optimizer-wide state ------------------------------------------------------------------

    def _anchor(self) -> Tensor:
        return self.param_groups[0]["params"][0]

    def _global_state(self) -> dict:
        anchor = self._anchor()
        state = self.state[anchor]
        if "phase" not in state:
            # MPS has no float64; elsewhere the loss EMA is kept in float64, as in the reference
            # implementation, so phase decisions do not depend on the model's dtype.
            ema_dtype = torch.float32 if anchor.device.type == "mps" else torch.float64
            state["phase"] = torch.zeros((), dtype=torch.long, device=anchor.device)
            state["loss_ema"] = torch.zeros((), dtype=ema_dtype, device=anchor.device)
            state["loss_initialized"] = torch.zeros((), dtype=torch.bool, device=anchor.device)
        return state

    @property
    def phase(self) -> int:
        """The current phase: 0 explore, 1 exploit, 2 refine. Reading it synchronises the device."""
        return int(self._global_state()["phase"])

    @property
    def loss_ema(self) -> float | None:
        """The EMA of the observed training loss, or ``None`` before the first observation."""
        state = self._global_state()
        return float(state["loss_ema"]) if bool(state["loss_initialized"]) else None

    @torch.no_grad()
    def observe_loss(self, loss: Tensor | float) -> None:
        """Feed one training loss to phase detection; call it once per optimizer step.

        Pass the loss averaged over gradient-accumulation micro-batches and over processes, so
        that every data-parallel replica reaches the same phase. A tensor input is used on the
        device without synchronisation; a non-finite loss is ignored.
        """
        state = self._global_state()
        ema, initialized, phase = state["loss_ema"], state["loss_initialized"], state["phase"]
        if isinstance(loss, Tensor):
            loss = loss.detach().to(device=ema.device, dtype=ema.dtype).reshape(())
        else:
            loss = torch.tensor(float(loss), dtype=ema.dtype, device=ema.device)
        finite = torch.isfinite(loss)
        new_ema = ema * self.loss_ema_decay + loss * (1.0 - self.loss_ema_decay)
        improvement = (ema - new_ema) / ema.abs().clamp_min(torch.finfo(ema.dtype).tiny)
        new_phase = phase_from_improvement(improvement, *self.phase_thresholds)

        update = initialized & finite
        first = finite & ~initialized
        phase.copy_(torch.where(update, new_phase, phase))
        ema.copy_(torch.where(update, new_ema, torch.where(first, loss, ema)))
        initialized.copy_(initialized | finite)

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts floating state to the parameter's dtype on load. Restore the loss EMA in the
        # dtype it was saved in, so that a bf16 model keeps full phase precision on resume.
        saved_state = state_dict.get("state", {})
        anchor_key = next(iter(saved_state), None)
        saved_globals = {}
        if anchor_key is not None:
            saved_globals = {k: v for k, v in saved_state[anchor_key].items() if k in _GLOBAL_KEYS}
        super().load_state_dict(state_dict)
        self._weight_tables.clear()
        if saved_globals:
            anchor = self._anchor()
            for key, value in saved_globals.items():
                self.state[anchor][key] = value.detach().clone().to(device=anchor.device)

    # -- the step ------------------------------------------------------------------------------

    def _weight_table(self, group: dict, device: torch.device) -> Tensor:
        key = (id(group), device, group["grokfast_alpha"], group["depth_ratio"])
        table = self._weight_tables.get(key)
        if table is None:
            rows = dals_phase_weights(self.variant, group["grokfast_alpha"], group["depth_ratio"])
            # float64 so that float64 parameters see the exact weights; each tensor casts it to its dtype.
            dtype = torch.float32 if device.type == "mps" else torch.float64
            table = torch.tensor(rows, dtype=dtype, device=device)
            self._weight_tables = {k: v for k, v in self._weight_tables.items() if k[0] != id(group)}
            self._weight_tables[key] = table
        return table

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        phase = self._global_state()["phase"]
        for group_index, group in enumerate(self.param_groups):
            params, grads, momentum_buffers, slow_grads = [], [], [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("DALS does not support sparse gradients")
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["slow_grad"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                params.append(param)
                grads.append(param.grad)
                momentum_buffers.append(state["momentum_buffer"])
                slow_grads.append(state["slow_grad"])
            if not params:
                continue

            device = params[0].device
            weights = self._weight_table(group, device)[phase.to(device)]
            layouts = None
            if group["foreach"] is False:
                update = _single_tensor_dals
            elif has_dtensor(params):
                # Step on the local shards; the norms are reduced over the mesh from the layouts.
                layouts = params
                params, grads, momentum_buffers, slow_grads = (
                    local_tensors(tensors) for tensors in (params, grads, momentum_buffers, slow_grads)
                )
                update = functools.partial(_multi_tensor_dals, layouts=layouts)
            else:
                update = _multi_tensor_dals
            self.last_trust_ratio_mean[group_index] = update(
                params,
                grads,
                momentum_buffers,
                slow_grads,
                weights=weights,
                lr=group["lr"],
                momentum=group["momentum"],
                weight_decay=group["weight_decay"],
                trust_coefficient=group["trust_coefficient"],
                trust_clip=group["trust_clip"],
            )
        return loss


def _single_tensor_dals(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    slow_grads: list[Tensor],
    *,
    weights: Tensor,
    lr: float,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
    trust_clip: tuple[float, float] | None,
) -> Tensor:
    """Apply the DALS update tensor by tensor; return the mean trust ratio of the tensors.

    ``weights`` contains the (filter, raw, slow) weights. The blend uses ``raw + slow = 1``:
    ``raw * g + slow * g_slow`` is ``lerp(g_slow, g, raw)``.
    """
    filter_weight, raw_weight, _ = weights.unbind()
    ratios = []
    for param, grad, momentum_buffer, slow_grad in zip(params, grads, momentum_buffers, slow_grads):
        dtype = grad.dtype
        ema_filter_(slow_grad, grad, filter_weight.to(dtype))
        blended = torch.lerp(slow_grad, grad, raw_weight.to(dtype))
        if weight_decay != 0:
            blended.add_(param, alpha=weight_decay)
        ratio = trust_ratio(
            torch.linalg.vector_norm(param),
            torch.linalg.vector_norm(blended),
            trust_coefficient,
            trust_clip,
        )
        momentum_buffer.mul_(momentum).add_(blended)
        param.addcmul_(momentum_buffer, ratio.to(param.dtype), value=-lr)
        ratios.append(ratio.float().to(params[0].device))
    return torch.stack(ratios).mean()


def _multi_tensor_dals(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    slow_grads: list[Tensor],
    *,
    weights: Tensor,
    lr: float,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
    trust_clip: tuple[float, float] | None,
    layouts: list[Tensor] | None = None,
) -> Tensor:
    """Apply the DALS update with multi-tensor kernels, one call per device and dtype.

    With ``layouts`` (the ``DTensor`` parameters), the other lists hold their local shards and
    the norms are those of the full tensors, reduced over the device mesh. Returns the mean
    trust ratio of the tensors.
    """
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, momentum_buffers, slow_grads], with_indices=layouts is not None
    )
    all_ratios = []
    for (device_params, device_grads, device_momenta, device_slows), indices in grouped.values():
        dtype_weights = weights.to(device=device_params[0].device, dtype=device_params[0].dtype)
        filter_weight, raw_weight, _ = dtype_weights.unbind()

        torch._foreach_lerp_(device_slows, device_grads, 1 - filter_weight)
        blended = torch._foreach_lerp(device_slows, device_grads, raw_weight)
        if weight_decay != 0:
            torch._foreach_add_(blended, device_params, alpha=weight_decay)

        device_layouts = device_params if layouts is None else [layouts[index] for index in indices]
        param_norms, update_norms = full_tensor_norms(device_layouts, device_params, blended)
        ratios = trust_ratio(param_norms, update_norms, trust_coefficient, trust_clip)
        torch._foreach_mul_(device_momenta, momentum)
        torch._foreach_add_(device_momenta, blended)
        torch._foreach_addcmul_(device_params, device_momenta, ratios.unbind(), value=-lr)
        all_ratios.append(ratios.float().to(params[0].device))
    return torch.cat(all_ratios).mean()
