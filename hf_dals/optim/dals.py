"""DALS: Discriminative Adaptive Layer Scaling, and its Fast and Acc variants."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._distributed import dtensor_class, full_tensor_norms, local_tensors
from ._functional import NormPlan, norm_plan, phase_from_improvement, tensor_norms, trust_ratio

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
        # Mean trust ratio of each parameter group at the last step, kept on the device for logging
        # (not part of the state dict): group index -> 0-d tensor, or a vector and the positions
        # of the groups in it for the multi-tensor path.
        self._trust_ratio_means: dict[int, Tensor] = {}
        self._trust_ratio_vector: tuple[Tensor, dict[int, int]] | None = None
        # Per-tensor tables and indices of the multi-tensor path, rebuilt when the set of tensors
        # with gradients or a group's filter settings change.
        self._batch_cache: dict[tuple, tuple] = {}

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

    @property
    def last_trust_ratio_mean(self) -> dict[int, Tensor]:
        """The mean trust ratio of each parameter group at the last step: group index -> 0-d tensor.

        The values stay on the device; converting one to a float synchronises, so read them when
        logging, not in the training hot path.
        """
        means = dict(self._trust_ratio_means)
        if self._trust_ratio_vector is not None:
            vector, positions = self._trust_ratio_vector
            means.update({group_index: vector[position] for group_index, position in positions.items()})
        return means

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        phase = self._global_state()["phase"]
        self._trust_ratio_means = {}
        self._trust_ratio_vector = None
        # The tensors of every group that takes the batched multi-tensor path, flattened.
        owners: list[int] = []
        flat_params: list[Tensor] = []
        flat_grads: list[Tensor] = []
        flat_states: list[dict] = []
        dtensor_type = dtensor_class()
        for group_index, group in enumerate(self.param_groups):
            params, grads, states = [], [], []
            sharded = False
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                sharded = sharded or isinstance(param, dtensor_type)
                if grad.is_sparse:
                    raise RuntimeError("DALS does not support sparse gradients")
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["slow_grad"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                params.append(param)
                grads.append(grad)
                states.append(state)
            if not params:
                continue
            if group["foreach"] is not False and not sharded:
                # The batched multi-tensor path takes plain tensors only.
                owners += [group_index] * len(params)
                flat_params += params
                flat_grads += grads
                flat_states += states
                continue

            momentum_buffers = [state["momentum_buffer"] for state in states]
            slow_grads = [state["slow_grad"] for state in states]
            device = params[0].device
            weights = self._weight_table(group, device)[phase.to(device)]
            if sharded and group["foreach"] is not False:
                # Step on the local shards; the norms are reduced over the mesh from the layouts.
                layouts = params
                params, grads, momentum_buffers, slow_grads = (
                    local_tensors(tensors) for tensors in (params, grads, momentum_buffers, slow_grads)
                )
                update = functools.partial(_sharded_multi_tensor_dals, layouts=layouts)
            else:
                update = _single_tensor_dals
            self._trust_ratio_means[group_index] = update(
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
        if flat_params:
            self._multi_tensor_step(owners, flat_params, flat_grads, flat_states, phase)
        return loss

    def _multi_tensor_step(
        self, owners: list[int], params: list[Tensor], grads: list[Tensor], states: list[dict], phase: Tensor
    ) -> None:
        """Update the tensors of several groups together, one set of kernels per device and dtype.

        ``owners`` contains the group index of each tensor, and ``states`` its optimizer state.

        The learning rate, momentum and weight decay enter as Python scalars, one multi-tensor call
        per distinct value (the learning rate changes every step). The filter and blend weights,
        the trust coefficient and the clip bounds are per-tensor device tensors, built once and cached.
        """
        momenta = [state["momentum_buffer"] for state in states]
        slows = [state["slow_grad"] for state in states]
        groups = self.param_groups

        buckets = Optimizer._group_tensors_by_device_and_dtype([params, grads, momenta, slows], with_indices=True)
        sums: Tensor | None = None
        counts: Tensor | None = None
        positions = {group_index: position for position, group_index in enumerate(sorted(set(owners)))}
        for (device, dtype), ((bucket_params, bucket_grads, bucket_momenta, bucket_slows), indices) in buckets.items():
            bucket_owners = [owners[i] for i in indices]
            tables = self._bucket_tables(bucket_owners, bucket_params, positions, device, dtype)
            # Refresh the per-tensor weights in place: the cached views then hold this phase's values.
            tables.weights.copy_(tables.by_phase[:, phase.to(device)])
            torch._foreach_lerp_(bucket_slows, bucket_grads, tables.filter_views)
            blended = torch._foreach_lerp(bucket_slows, bucket_grads, tables.raw_views)
            _add_weight_decay(blended, bucket_params, [groups[g]["weight_decay"] for g in bucket_owners])

            ratios = trust_ratio(
                tensor_norms(bucket_params, tables.norms),
                tensor_norms(blended, tables.norms),
                tables.coefficients,
                (tables.clip_low, tables.clip_high),
            )
            # The new momentum m' = blended + momentum * m is formed in the blended tensors, which
            # then replace the old buffers in the state: one pass over memory instead of two.
            for value, chosen in _indices_by_value([groups[g]["momentum"] for g in bucket_owners]):
                torch._foreach_add_(_pick(blended, chosen), _pick(bucket_momenta, chosen), alpha=value)
            for index, new_momentum in zip(indices, blended):
                states[index]["momentum_buffer"] = new_momentum
            tables.ratios.copy_(ratios)
            for value, chosen in _indices_by_value([groups[g]["lr"] for g in bucket_owners]):
                torch._foreach_addcmul_(
                    _pick(bucket_params, chosen), _pick(blended, chosen), _pick(tables.ratio_views, chosen), value=-value
                )

            bucket_sums = torch.zeros(len(positions), dtype=torch.float32, device=device)
            bucket_sums.index_add_(0, tables.owner_positions, ratios.float())
            first_device = sums.device if sums is not None else device
            sums = bucket_sums.to(first_device) if sums is None else sums + bucket_sums.to(first_device)
            counts = tables.counts.to(first_device) if counts is None else counts + tables.counts.to(first_device)
        self._trust_ratio_vector = (sums / counts.clamp_min(1), positions)

    def _bucket_tables(
        self, owners: list[int], params: list[Tensor], positions: dict[int, int], device, dtype
    ) -> _BucketTables:
        """Return the cached per-tensor tables of one device/dtype bucket, building them when needed."""
        groups = self.param_groups
        settings = tuple(
            (g, groups[g]["grokfast_alpha"], groups[g]["depth_ratio"], groups[g]["trust_coefficient"], groups[g]["trust_clip"])
            for g in dict.fromkeys(owners)
        )
        # The key includes the parameters themselves, because the tensors of a group that have
        # gradients can change between steps, and the norm plan depends on their shapes.
        key = (device, dtype, tuple(owners), tuple(map(id, params)), settings)
        cached = self._batch_cache.get(key)
        if cached is None:
            shapes = tuple(param.shape for param in params)
            cached = _BucketTables.build(self.variant, groups, owners, shapes, positions, device, dtype)
            if len(self._batch_cache) > 8:
                self._batch_cache.clear()
            self._batch_cache[key] = cached
        return cached


@dataclass
class _BucketTables:
    """Per-tensor constants and scratch buffers of one device/dtype bucket of the multi-tensor step.

    ``by_phase`` has shape (tensors, phases, 2): the filter update weight ``1 - alpha`` and the
    raw-gradient weight. ``weights`` receives the current phase's rows each step; ``filter_views``
    and ``raw_views`` are one-element views into it, so the multi-tensor kernels read per-tensor
    weights without a list being rebuilt. ``ratios`` and ``ratio_views`` do the same for the trust
    ratios. Without clipping the bounds are 0 and infinity. ``norms`` plans the per-tensor norms
    (small tensors of one shape are stacked and reduced together).
    """

    by_phase: Tensor
    weights: Tensor
    filter_views: list[Tensor]
    raw_views: list[Tensor]
    coefficients: Tensor
    clip_low: Tensor
    clip_high: Tensor
    ratios: Tensor
    ratio_views: list[Tensor]
    owner_positions: Tensor
    counts: Tensor
    norms: NormPlan

    @classmethod
    def build(
        cls,
        variant: DALSVariant,
        groups: list[dict],
        owners: list[int],
        shapes: tuple[torch.Size, ...],
        positions: dict[int, int],
        device,
        dtype,
    ):
        table_dtype = torch.float32 if device.type == "mps" else torch.float64
        rows = {
            g: dals_phase_weights(variant, groups[g]["grokfast_alpha"], groups[g]["depth_ratio"]) for g in dict.fromkeys(owners)
        }
        by_phase = torch.tensor(
            [[[1.0 - row[0], row[1]] for row in rows[g]] for g in owners], dtype=table_dtype, device=device
        ).to(dtype)
        weights = torch.empty(len(owners), 2, dtype=dtype, device=device)
        ratios = torch.empty(len(owners), dtype=dtype, device=device)
        clips = [groups[g]["trust_clip"] or (0.0, math.inf) for g in owners]
        owner_positions = torch.tensor([positions[g] for g in owners], dtype=torch.long, device=device)
        counts = torch.zeros(len(positions), dtype=torch.float32, device=device)
        counts.index_add_(0, owner_positions, torch.ones(len(owners), dtype=torch.float32, device=device))
        return cls(
            by_phase=by_phase,
            weights=weights,
            filter_views=[weights[i, 0] for i in range(len(owners))],
            raw_views=[weights[i, 1] for i in range(len(owners))],
            coefficients=torch.tensor([groups[g]["trust_coefficient"] for g in owners], dtype=table_dtype, device=device).to(dtype),
            clip_low=torch.tensor([c[0] for c in clips], dtype=table_dtype, device=device).to(dtype),
            clip_high=torch.tensor([c[1] for c in clips], dtype=table_dtype, device=device).to(dtype),
            ratios=ratios,
            ratio_views=[ratios[i] for i in range(len(owners))],
            owner_positions=owner_positions,
            counts=counts,
            norms=norm_plan(list(shapes), device),
        )


def _indices_by_value(values: list[float]) -> list[tuple[float, list[int] | None]]:
    """Group tensor positions by a per-tensor hyperparameter, so each value is one multi-tensor call.

    A Python scalar per call is much cheaper than a list of scalars: on the CPU,
    ``torch._foreach_mul_(tensors, scalars)`` runs several operations per tensor. ``None`` stands
    for all positions (the usual case of one value).
    """
    distinct = list(dict.fromkeys(values))
    if len(distinct) == 1:
        return [(distinct[0], None)]
    return [(value, [i for i, v in enumerate(values) if v == value]) for value in distinct]


def _pick(tensors: list[Tensor], chosen: list[int] | None) -> list[Tensor]:
    return tensors if chosen is None else [tensors[i] for i in chosen]


def _add_weight_decay(blended: list[Tensor], params: list[Tensor], weight_decays: list[float]) -> None:
    """Add ``weight_decay * param`` to each blended gradient, one multi-tensor call per decay value."""
    for value, chosen in _indices_by_value(weight_decays):
        if value != 0:
            torch._foreach_add_(_pick(blended, chosen), _pick(params, chosen), alpha=value)


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
        # The filter update weight 1 - alpha is formed in the table's precision, as in the
        # multi-tensor path, so both paths round alike.
        slow_grad.lerp_(grad, (1 - filter_weight).to(dtype))
        blended = torch.lerp(slow_grad, grad, raw_weight.to(dtype))
        if weight_decay != 0:
            blended.add_(param, alpha=weight_decay)
        ratio = trust_ratio(
            torch.linalg.vector_norm(param),
            torch.linalg.vector_norm(blended),
            trust_coefficient,
            trust_clip,
        )
        # m' = blended + momentum * m and p' = p - lr * (m' * r), rounded as in the multi-tensor path.
        torch.add(blended, momentum_buffer, alpha=momentum, out=momentum_buffer)
        param.addcmul_(momentum_buffer, ratio.to(param.dtype), value=-lr)
        ratios.append(ratio.float().to(params[0].device))
    return torch.stack(ratios).mean()


def _sharded_multi_tensor_dals(
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
    layouts: list[Tensor],
) -> Tensor:
    """Apply the DALS update to the local shards of one group's ``DTensor`` parameters.

    ``layouts`` are the ``DTensor`` parameters and the other lists their local shards; the norms
    are those of the full tensors, reduced over the device mesh in one collective for the group.
    The elementwise operations are those of the other two paths. Returns the mean trust ratio.
    """
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, momentum_buffers, slow_grads], with_indices=True
    )
    update_weight, raw_weight = 1 - weights[0], weights[1]
    all_ratios = []
    for (device_params, device_grads, device_momenta, device_slows), indices in grouped.values():
        dtype = device_params[0].dtype
        torch._foreach_lerp_(device_slows, device_grads, update_weight.to(dtype))
        blended = torch._foreach_lerp(device_slows, device_grads, raw_weight.to(dtype))
        if weight_decay != 0:
            torch._foreach_add_(blended, device_params, alpha=weight_decay)

        param_norms, update_norms = full_tensor_norms([layouts[index] for index in indices], device_params, blended)
        ratios = trust_ratio(param_norms, update_norms, trust_coefficient, trust_clip)
        torch._foreach_add_(blended, device_momenta, alpha=momentum)
        torch._foreach_copy_(device_momenta, blended)
        torch._foreach_addcmul_(device_params, device_momenta, ratios.unbind(), value=-lr)
        all_ratios.append(ratios.float().to(params[0].device))
    return torch.cat(all_ratios).mean()
