"""The registry of named learning-rate strategies.

A strategy is a frozen record. It has a name, a generation, a one-line description, what it
needs from the training loop, its default hyperparameters per training regime, and two builders:
one for the optimizer and one for the scheduler. The generations are 1 fixed learning rate,
2 global schedules, 3 per-parameter adaptive methods, 4 layer-wise methods and 5 joint
layer-time methods. Variants are entries with other defaults, never subclasses.

``--lr_strategy`` choices, ``hf-dals strategies`` and the tests all read this registry, so a new
entry is documented and tested without further edits.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from . import schedules
from .grouping import decay_param_groups, depth_param_groups
from .optim import DALS, LARS, GrokfastSGD, Lamb, TwoPassSAM

if TYPE_CHECKING:
    from .training_args import DALSTrainingArguments

__all__ = [
    "GENERATIONS",
    "REGIMES",
    "Strategy",
    "TUNABLE_HYPERPARAMETERS",
    "get_strategy",
    "list_strategies",
    "register_strategy",
    "strategy_names",
]

REGIMES = ("finetune", "scratch")

# The five generations of the taxonomy of arXiv:2604.27295, for tables and model cards.
GENERATIONS = {
    1: "fixed learning rate",
    2: "global schedules",
    3: "per-parameter adaptive methods",
    4: "layer-wise methods",
    5: "joint layer-time methods",
}

# Hyperparameters a strategy may take from DALSTrainingArguments. A value of None in the
# arguments means "use the strategy's default for the training regime".
TUNABLE_HYPERPARAMETERS = (
    "learning_rate",
    "weight_decay",
    "layer_lr_decay",
    "momentum",
    "warmup_fraction",
    "min_lr_ratio",
    "trust_coefficient",
    "trust_clip_min",
    "trust_clip_max",
    "grokfast_alpha",
    "phase_threshold_explore",
    "phase_threshold_refine",
    "sgdr_cycle_epochs",
    "sgdr_cycle_steps",
    "sgdr_cycle_mult",
    "stlr_cut_frac",
    "stlr_ratio",
    "unfreeze_every_epochs",
    "unfreeze_every_fraction",
    "one_cycle_div_factor",
    "one_cycle_final_div_factor",
    "adabound_final_lr",
    "sam_rho",
    "lookahead_k",
    "lookahead_alpha",
    "grokfast_lambda",
)

OptimizerBuilder = Callable[[nn.Module, "DALSTrainingArguments", dict], Optimizer]
SchedulerBuilder = Callable[[Optimizer, "DALSTrainingArguments", dict, "StepPlan"], LRScheduler]


@dataclass(frozen=True)
class StepPlan:
    """The length of training, as the scheduler builders need it."""

    num_training_steps: int
    steps_per_epoch: float


@dataclass(frozen=True)
class Strategy:
    """A named learning-rate strategy.

    Attributes:
        name: the registry key and the value of ``--lr_strategy``.
        generation: 1 to 5, the generation of the taxonomy of arXiv:2604.27295.
        description: one line for tables and ``--help``.
        build_optimizer: ``(model, args, hyperparameters) -> Optimizer``.
        build_scheduler: ``(optimizer, args, hyperparameters, plan) -> LRScheduler``.
        defaults: per training regime (``finetune``, ``scratch``), the default of every
            hyperparameter the strategy reads. Only these keys may be set in the arguments.
        uses_depth_groups: parameters are grouped by depth (:func:`hf_dals.depth_param_groups`).
        needs_loss: the optimizer must be fed the training loss once per step (``observe_loss``).
        needs_two_passes: each step needs two forward/backward passes (SAM).
        uses_tensor_norms: the optimizer scales each tensor's step by a ratio of norms of the whole
            tensor (DALS, LARS, LAMB). Such norms are right on FSDP2 shards but not on the flat
            shards of DeepSpeed and FSDP1, which :mod:`hf_dals.parallel` rejects.
        lr_family: ``"sgd"`` or ``"adam"``: which family's learning rates the strategy takes, so a
            benchmark can rescale one family's rates (SGD-type rates are 10-100x Adam-type ones).
        implementation: which code backs the optimizer, for the docs.
    """

    name: str
    generation: int
    description: str
    build_optimizer: OptimizerBuilder
    build_scheduler: SchedulerBuilder
    defaults: Mapping[str, Mapping[str, Any]]
    uses_depth_groups: bool = False
    needs_loss: bool = False
    needs_two_passes: bool = False
    uses_tensor_norms: bool = False
    lr_family: str = "adam"
    implementation: str = ""
    delegates_to_trainer: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.lr_family not in ("sgd", "adam"):
            raise ValueError(f"invalid lr_family for strategy {self.name!r}: {self.lr_family!r} (expected 'sgd' or 'adam')")
        if not 1 <= self.generation <= 5:
            raise ValueError(f"invalid generation for strategy {self.name!r}: {self.generation} (expected 1 to 5)")
        missing = [regime for regime in REGIMES if regime not in self.defaults]
        if missing:
            raise ValueError(f"strategy {self.name!r} has no defaults for regimes {missing}")
        for regime, values in self.defaults.items():
            unknown = sorted(set(values) - set(TUNABLE_HYPERPARAMETERS))
            if unknown:
                raise ValueError(f"strategy {self.name!r} ({regime}) has unknown hyperparameters {unknown}")
        object.__setattr__(self, "defaults", MappingProxyType({k: MappingProxyType(dict(v)) for k, v in self.defaults.items()}))

    @property
    def hyperparameter_names(self) -> tuple[str, ...]:
        """The hyperparameters this strategy reads, in the order of ``TUNABLE_HYPERPARAMETERS``."""
        keys = set().union(*(values.keys() for values in self.defaults.values()))
        return tuple(name for name in TUNABLE_HYPERPARAMETERS if name in keys)

    def hyperparameters(self, args: DALSTrainingArguments) -> dict[str, Any]:
        """Resolve the hyperparameters: the regime's defaults, overridden by explicit arguments."""
        regime = getattr(args, "training_regime", "finetune")
        if regime not in REGIMES:
            raise ValueError(f"invalid training_regime: {regime!r} (expected one of {list(REGIMES)})")
        resolved = dict(self.defaults[regime])
        for name in resolved:
            explicit = getattr(args, name, None)
            if explicit is not None:
                resolved[name] = explicit
        for name, value in resolved.items():
            _check_hyperparameter(self.name, name, value)
        return resolved

    def create_optimizer(self, model: nn.Module, args: DALSTrainingArguments) -> Optimizer:
        """Build the optimizer for ``model`` with the hyperparameters resolved from ``args``."""
        return self.build_optimizer(model, args, self.hyperparameters(args))

    def create_scheduler(
        self,
        optimizer: Optimizer,
        args: DALSTrainingArguments,
        num_training_steps: int,
        steps_per_epoch: float | None = None,
    ) -> LRScheduler:
        """Build the scheduler; ``steps_per_epoch`` defaults to steps / ``args.num_train_epochs``."""
        if num_training_steps <= 0:
            raise ValueError(f"invalid num_training_steps: {num_training_steps} (expected > 0)")
        if steps_per_epoch is None:
            steps_per_epoch = num_training_steps / max(float(args.num_train_epochs), 1e-12)
        plan = StepPlan(num_training_steps=num_training_steps, steps_per_epoch=float(steps_per_epoch))
        return self.build_scheduler(optimizer, args, self.hyperparameters(args), plan)

    def build(
        self, model: nn.Module, args: DALSTrainingArguments, num_training_steps: int
    ) -> tuple[Optimizer, LRScheduler]:
        """Return the optimizer and the scheduler for ``model``, ``args`` and a training length."""
        optimizer = self.create_optimizer(model, args)
        return optimizer, self.create_scheduler(optimizer, args, num_training_steps)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# The valid range of each hyperparameter, checked for every strategy before anything is built, so
# that a value a backing optimizer would accept silently (SGD takes momentum 1.2) still raises.
_VALID_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "learning_rate": (lambda v: _finite(v) and v >= 0, "a finite value >= 0"),
    "weight_decay": (lambda v: _finite(v) and v >= 0, ">= 0"),
    "layer_lr_decay": (lambda v: _finite(v) and 0 < v <= 1, "0 < layer_lr_decay <= 1"),
    "momentum": (lambda v: _finite(v) and 0 <= v < 1, "0 <= momentum < 1"),
    "warmup_fraction": (lambda v: _finite(v) and 0 <= v < 1, "0 <= warmup_fraction < 1"),
    "min_lr_ratio": (lambda v: _finite(v) and 0 <= v <= 1, "0 <= min_lr_ratio <= 1"),
    "trust_coefficient": (lambda v: _finite(v) and v > 0, "> 0"),
    "trust_clip_min": (lambda v: _finite(v) and v > 0, "> 0"),
    "trust_clip_max": (lambda v: _finite(v) and v > 0, "> 0"),
    "grokfast_alpha": (lambda v: _finite(v) and 0 <= v < 1, "0 <= grokfast_alpha < 1"),
    "phase_threshold_explore": (_finite, "a finite number"),
    "phase_threshold_refine": (_finite, "a finite number"),
    "sgdr_cycle_epochs": (lambda v: _finite(v) and v >= 0, ">= 0"),
    "sgdr_cycle_steps": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "sgdr_cycle_mult": (lambda v: _finite(v) and v >= 1, ">= 1"),
    "stlr_cut_frac": (lambda v: _finite(v) and 0 < v < 1, "0 < stlr_cut_frac < 1"),
    "stlr_ratio": (lambda v: _finite(v) and v >= 1, ">= 1"),
    "unfreeze_every_epochs": (lambda v: _finite(v) and v > 0, "> 0"),
    "unfreeze_every_fraction": (lambda v: v is None or (_finite(v) and 0 < v <= 1), "0 < fraction <= 1, or unset"),
    "one_cycle_div_factor": (lambda v: _finite(v) and v >= 1, ">= 1"),
    "one_cycle_final_div_factor": (lambda v: _finite(v) and v >= 1, ">= 1"),
    "adabound_final_lr": (lambda v: _finite(v) and v > 0, "> 0"),
    "sam_rho": (lambda v: _finite(v) and v >= 0, ">= 0"),
    "lookahead_k": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "lookahead_alpha": (lambda v: _finite(v) and 0 <= v <= 1, "0 <= lookahead_alpha <= 1"),
    "grokfast_lambda": (lambda v: _finite(v) and v >= 0, ">= 0"),
}


def _check_hyperparameter(strategy: str, name: str, value: Any) -> None:
    valid, expectation = _VALID_RANGES[name]
    if not valid(value):
        raise ValueError(f"invalid {name}: {value!r} for lr_strategy {strategy!r} (expected {expectation})")


_REGISTRY: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    """Add ``strategy`` to the registry; a name can be registered once."""
    if strategy.name in _REGISTRY:
        raise ValueError(f"a strategy named {strategy.name!r} is already registered")
    _REGISTRY[strategy.name] = strategy
    return strategy


def strategy_names() -> list[str]:
    """Return the registered names in registration order (by generation, then as listed)."""
    return [s.name for s in list_strategies()]


def list_strategies(generation: int | None = None) -> list[Strategy]:
    """Return the registered strategies, optionally of one generation, ordered by generation."""
    if generation is not None and generation not in range(1, 6):
        raise ValueError(f"invalid generation: {generation} (expected 1 to 5 or None)")
    order = {name: index for index, name in enumerate(_REGISTRY)}
    chosen = [s for s in _REGISTRY.values() if generation is None or s.generation == generation]
    return sorted(chosen, key=lambda s: (s.generation, order[s.name]))


def get_strategy(name: str) -> Strategy:
    """Return the strategy called ``name``.

    Raises:
        ValueError: for an unknown name; the message lists the valid names and the closest one.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown lr_strategy {name!r}.{hint} Valid names: {', '.join(strategy_names())}")


# -- parameter groups --------------------------------------------------------------------------


def _depth_groups(model: nn.Module, args: DALSTrainingArguments, hp: dict) -> list[dict]:
    return depth_param_groups(
        model,
        lr=hp["learning_rate"],
        layer_lr_decay=hp.get("layer_lr_decay", 1.0),
        weight_decay=hp["weight_decay"],
        layer_pattern=getattr(args, "layer_pattern", None),
    )


def _flat_groups(model: nn.Module, args: DALSTrainingArguments, hp: dict) -> list[dict]:
    return decay_param_groups(model, lr=hp["learning_rate"], weight_decay=hp["weight_decay"])


def _adam_kwargs(args: DALSTrainingArguments) -> dict:
    return {"betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}


# -- optimizer builders ------------------------------------------------------------------------
# Each takes (model, args, hyperparameters) and returns an optimizer. Weight decay is set per
# group, so biases and norm weights never decay.


def _sgd(groups_fn):
    def build(model: nn.Module, args: DALSTrainingArguments, hp: dict) -> Optimizer:
        return torch.optim.SGD(groups_fn(model, args, hp), lr=hp["learning_rate"], momentum=hp["momentum"])

    return build


def _torch_adaptive(optimizer_cls, groups_fn=_flat_groups):
    def build(model: nn.Module, args: DALSTrainingArguments, hp: dict) -> Optimizer:
        return optimizer_cls(groups_fn(model, args, hp), lr=hp["learning_rate"], **_adam_kwargs(args))

    return build


def _adabound(model: nn.Module, args: DALSTrainingArguments, hp: dict) -> Optimizer:
    from pytorch_optimizer import AdaBound

    return AdaBound(
        _flat_groups(model, args, hp),
        lr=hp["learning_rate"],
        final_lr=hp["adabound_final_lr"],
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )


def _lars(model: nn.Module, args: DALSTrainingArguments, hp: dict) -> Optimizer:
    return LARS(
        _flat_groups(model, args, hp),
        lr=hp["learning_rate"],
        momentum=hp["momentum"],
        trust_coefficient=hp["trust_coefficient"],
    )


def _lamb(model: nn.Module, args: DALSTrainingArguments, hp: dict) -> Optimizer:
    groups = _flat_groups(model, args, hp)
    for group in groups:
        # Biases and norm weights (the no-decay group) step like Adam, without a trust ratio.
        group["adam"] = group["name"] == "no_decay"
    return Lamb(groups, lr=hp["learning_rate"], betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)


def _lion(model: nn.Module, args: DALSTrainingArguments, hp: dict) -> Optimizer:
    from pytorch_optimizer import Lion

    return Lion(_flat_groups(model, args, hp), lr=hp["learning_rate"])


def _lookahead_adamw(model: nn.Module, args: DALSTrainingArguments, hp: dict) -> Optimizer:
    from pytorch_optimizer import Lookahead

    inner = torch.optim.AdamW(_flat_groups(model, args, hp), lr=hp["learning_rate"], **_adam_kwargs(args))
    return Lookahead(inner, k=int(hp["lookahead_k"]), alpha=hp["lookahead_alpha"])


def _sam(groups_fn):
    def build(model: nn.Module, args: DALSTrainingArguments, hp: dict) -> Optimizer:
        return TwoPassSAM(
            groups_fn(model, args, hp),
            base_optimizer=torch.optim.SGD,
            rho=hp["sam_rho"],
            adaptive=True,
            lr=hp["learning_rate"],
            momentum=hp["momentum"],
        )

    return build


def _grokfast(model: nn.Module, args: DALSTrainingArguments, hp: dict) -> Optimizer:
    return GrokfastSGD(
        _flat_groups(model, args, hp),
        lr=hp["learning_rate"],
        momentum=hp["momentum"],
        alpha=hp["grokfast_alpha"],
        lamb=hp["grokfast_lambda"],
    )


def _dals(variant: str) -> OptimizerBuilder:
    def build(model: nn.Module, args: DALSTrainingArguments, hp: dict) -> Optimizer:
        return DALS(
            _depth_groups(model, args, hp),
            lr=hp["learning_rate"],
            momentum=hp["momentum"],
            weight_decay=hp["weight_decay"],
            trust_coefficient=hp["trust_coefficient"],
            trust_clip=(hp["trust_clip_min"], hp["trust_clip_max"]),
            grokfast_alpha=hp["grokfast_alpha"],
            variant=variant,
            phase_thresholds=(hp["phase_threshold_explore"], hp["phase_threshold_refine"]),
        )

    return build


def _trainer_optimizer(model: nn.Module, args: DALSTrainingArguments, hp: dict) -> Optimizer:
    # The same two groups and optimizer class that Trainer.create_optimizer builds; used when the
    # strategy is built outside DALSTrainer (inside it, Trainer's own methods run).
    from transformers import Trainer

    groups = decay_param_groups(model, lr=args.learning_rate, weight_decay=args.weight_decay)
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return optimizer_cls(groups, **optimizer_kwargs)


# -- scheduler builders ------------------------------------------------------------------------
# Each takes (optimizer, args, hyperparameters, plan) and returns a LambdaLR.


def _constant_schedule(optimizer: Optimizer, args, hp: dict, plan: StepPlan) -> LRScheduler:
    return schedules.lambda_scheduler(optimizer, schedules.constant)


def _stlr(hp: dict, plan: StepPlan):
    return schedules.bind(
        schedules.slanted_triangular,
        total_steps=plan.num_training_steps,
        cut_frac=hp["stlr_cut_frac"],
        ratio=hp["stlr_ratio"],
    )


def _stlr_schedule(optimizer: Optimizer, args, hp: dict, plan: StepPlan) -> LRScheduler:
    return schedules.lambda_scheduler(optimizer, _stlr(hp, plan))


def _warmup_cosine_schedule(optimizer: Optimizer, args, hp: dict, plan: StepPlan) -> LRScheduler:
    multiplier = schedules.bind(
        schedules.warmup_cosine,
        warmup_steps=schedules.warmup_steps_from_fraction(plan.num_training_steps, hp.get("warmup_fraction", 0.0)),
        total_steps=plan.num_training_steps,
        min_ratio=hp.get("min_lr_ratio", 0.0),
    )
    return schedules.lambda_scheduler(optimizer, multiplier)


def _sgdr_schedule(optimizer: Optimizer, args, hp: dict, plan: StepPlan) -> LRScheduler:
    from_epochs = round(hp.get("sgdr_cycle_epochs", 0.0) * plan.steps_per_epoch)
    cycle_steps = max(1, int(hp.get("sgdr_cycle_steps", 0)), from_epochs)
    multiplier = schedules.bind(
        schedules.sgdr,
        cycle_steps=cycle_steps,
        cycle_mult=hp["sgdr_cycle_mult"],
        min_ratio=hp.get("min_lr_ratio", 0.0),
    )
    return schedules.lambda_scheduler(optimizer, multiplier)


def _linear_schedule(optimizer: Optimizer, args, hp: dict, plan: StepPlan) -> LRScheduler:
    multiplier = schedules.bind(
        schedules.linear_warmup_decay,
        warmup_steps=schedules.warmup_steps_from_fraction(plan.num_training_steps, hp["warmup_fraction"]),
        total_steps=plan.num_training_steps,
    )
    return schedules.lambda_scheduler(optimizer, multiplier)


def _one_cycle_schedule(optimizer: Optimizer, args, hp: dict, plan: StepPlan) -> LRScheduler:
    multiplier = schedules.bind(
        schedules.one_cycle,
        total_steps=plan.num_training_steps,
        pct_start=hp["warmup_fraction"],
        div_factor=hp["one_cycle_div_factor"],
        final_div_factor=hp["one_cycle_final_div_factor"],
    )
    return schedules.lambda_scheduler(optimizer, multiplier)


def unfreeze_steps(optimizer: Optimizer, hp: dict, plan: StepPlan) -> list[int]:
    """Return the step at which each parameter group thaws under gradual unfreezing.

    The top depth trains from step 0 and one more depth joins every interval: every
    ``unfreeze_every_epochs`` epochs, or every ``unfreeze_every_fraction`` of the training steps
    when that is set.
    """
    fraction = hp.get("unfreeze_every_fraction")
    if fraction is not None:
        interval = fraction * plan.num_training_steps
    else:
        interval = hp["unfreeze_every_epochs"] * plan.steps_per_epoch
    depths = [group.get("depth") for group in optimizer.param_groups]
    if any(depth is None for depth in depths):
        raise ValueError("gradual unfreezing needs depth groups (each group's 'depth' key)")
    top = max(depths)
    return [int(round((top - depth) * interval)) for depth in depths]


def _ulmfit_schedule(optimizer: Optimizer, args, hp: dict, plan: StepPlan) -> LRScheduler:
    stlr = _stlr(hp, plan)
    multipliers = [
        schedules.bind(schedules.gated, start_step=start, inner=stlr) for start in unfreeze_steps(optimizer, hp, plan)
    ]
    return schedules.lambda_scheduler(optimizer, multipliers)


def _trainer_scheduler(optimizer: Optimizer, args: DALSTrainingArguments, hp: dict, plan: StepPlan) -> LRScheduler:
    from transformers import get_scheduler

    return get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.get_warmup_steps(plan.num_training_steps),
        num_training_steps=plan.num_training_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )


# -- defaults ----------------------------------------------------------------------------------
# From arXiv:2604.27295 and its authors' code: fine-tuning (their DistilBERT runs) uses lr 5e-5
# for the Adam family, 5e-4 for the SGD family and weight decay 0.01; training from scratch uses
# the settings of their synthetic and CIFAR-10 runs.

ADAM_FINETUNE_LR = 5e-5
SGD_FINETUNE_LR = 5e-4
FINETUNE_DECAY = 0.01
SCRATCH_DECAY = 5e-4
_ULMFIT_DECAY = 1 / 2.6
_TRUST = {"trust_coefficient": 0.02, "trust_clip_min": 0.2, "trust_clip_max": 5.0}
_PHASES = {"phase_threshold_explore": 0.01, "phase_threshold_refine": 0.002}
_STLR = {"stlr_cut_frac": 0.1, "stlr_ratio": 32.0}
_ETA_MIN = 1e-5  # the final lr of the reference cosine and SGDR schedules


def _regimes(finetune: dict, scratch: dict, **common) -> dict:
    return {"finetune": {**common, **finetune}, "scratch": {**common, **scratch}}


def _sgd_defaults(finetune_lr: float, scratch_lr: float, **common) -> dict:
    return _regimes(
        {"learning_rate": finetune_lr, "weight_decay": FINETUNE_DECAY},
        {"learning_rate": scratch_lr, "weight_decay": SCRATCH_DECAY},
        momentum=0.9,
        **common,
    )


def _adam_defaults(scratch_lr: float = 3e-4, finetune_lr: float = ADAM_FINETUNE_LR, weight_decay: float = 0.0, **common) -> dict:
    return _regimes(
        {"learning_rate": finetune_lr, "weight_decay": weight_decay},
        {"learning_rate": scratch_lr, "weight_decay": weight_decay},
        **common,
    )


def _dals_defaults(finetune: dict, scratch: dict, **common) -> dict:
    return _regimes(
        {"weight_decay": FINETUNE_DECAY, **finetune},
        {"weight_decay": SCRATCH_DECAY, **scratch},
        **_TRUST,
        **common,
    )


_STRATEGIES = [
    Strategy(
        name="hf_default",
        generation=3,
        description="Exactly plain Trainer: its optimizer (AdamW by default) and its lr_scheduler_type",
        build_optimizer=_trainer_optimizer,
        build_scheduler=_trainer_scheduler,
        defaults=_regimes({"learning_rate": 5e-5, "weight_decay": 0.0}, {"learning_rate": 5e-5, "weight_decay": 0.0}),
        implementation="transformers.Trainer (its optim and lr_scheduler_type arguments)",
        delegates_to_trainer=True,
    ),
    # Generation 1: a fixed learning rate.
    Strategy(
        name="fixed_sgd",
        generation=1,
        description="SGD with momentum 0.9 at a constant learning rate",
        build_optimizer=_sgd(_flat_groups),
        build_scheduler=_constant_schedule,
        defaults=_sgd_defaults(SGD_FINETUNE_LR, 0.01),
        lr_family="sgd",
        implementation="torch.optim.SGD",
    ),
    # Generation 2: one global schedule.
    Strategy(
        name="cosine_sgd",
        generation=2,
        description="SGD with momentum, cosine decay from the peak lr to 1e-5 over training",
        build_optimizer=_sgd(_flat_groups),
        build_scheduler=_warmup_cosine_schedule,
        defaults=_regimes(
            {"learning_rate": SGD_FINETUNE_LR, "weight_decay": FINETUNE_DECAY, "min_lr_ratio": _ETA_MIN / SGD_FINETUNE_LR},
            {"learning_rate": 0.03, "weight_decay": SCRATCH_DECAY, "min_lr_ratio": _ETA_MIN / 0.03},
            momentum=0.9,
        ),
        lr_family="sgd",
        implementation="torch.optim.SGD, hf_dals.schedules.warmup_cosine",
    ),
    Strategy(
        name="sgdr",
        generation=2,
        description="SGD with momentum, cosine annealing with warm restarts (cycles double in length)",
        build_optimizer=_sgd(_flat_groups),
        build_scheduler=_sgdr_schedule,
        defaults=_regimes(
            {
                "learning_rate": 2 * SGD_FINETUNE_LR,
                "weight_decay": FINETUNE_DECAY,
                "sgdr_cycle_epochs": 1.0,
                "sgdr_cycle_steps": 50,
                "min_lr_ratio": _ETA_MIN / (2 * SGD_FINETUNE_LR),
            },
            {
                "learning_rate": 0.05,
                "weight_decay": SCRATCH_DECAY,
                "sgdr_cycle_epochs": 0.0,
                "sgdr_cycle_steps": 10,
                "min_lr_ratio": _ETA_MIN / 0.05,
            },
            momentum=0.9,
            sgdr_cycle_mult=2.0,
        ),
        lr_family="sgd",
        implementation="torch.optim.SGD, hf_dals.schedules.sgdr",
    ),
    Strategy(
        name="one_cycle",
        generation=2,
        description="AdamW with the one-cycle schedule: cosine rise over 30% of training, then cosine decay",
        build_optimizer=_torch_adaptive(torch.optim.AdamW),
        build_scheduler=_one_cycle_schedule,
        defaults=_adam_defaults(
            scratch_lr=1e-3,
            weight_decay=FINETUNE_DECAY,
            warmup_fraction=0.3,
            one_cycle_div_factor=25.0,
            one_cycle_final_div_factor=1e4,
        ),
        implementation="torch.optim.AdamW, hf_dals.schedules.one_cycle",
    ),
    # Generation 3: per-parameter adaptive methods.
    Strategy(
        name="adam",
        generation=3,
        description="Adam at a constant learning rate",
        build_optimizer=_torch_adaptive(torch.optim.Adam),
        build_scheduler=_constant_schedule,
        defaults=_adam_defaults(),
        implementation="torch.optim.Adam",
    ),
    Strategy(
        name="adamw",
        generation=3,
        description="AdamW (decoupled weight decay 0.01) at a constant learning rate",
        build_optimizer=_torch_adaptive(torch.optim.AdamW),
        build_scheduler=_constant_schedule,
        defaults=_adam_defaults(weight_decay=0.01),
        implementation="torch.optim.AdamW",
    ),
    Strategy(
        name="adabound",
        generation=3,
        description="AdaBound: Adam whose per-parameter step is clipped into bounds that converge to SGD's",
        build_optimizer=_adabound,
        build_scheduler=_constant_schedule,
        defaults=_regimes(
            {"learning_rate": ADAM_FINETUNE_LR, "weight_decay": 0.0, "adabound_final_lr": SGD_FINETUNE_LR},
            {"learning_rate": 3e-4, "weight_decay": 0.0, "adabound_final_lr": 0.01},
        ),
        implementation="pytorch_optimizer.AdaBound",
    ),
    # Generation 4: layer-wise methods.
    Strategy(
        name="lars",
        generation=4,
        description="LARS: SGD with momentum, each weight tensor's step scaled by 0.02 ||w|| / (||g|| + wd ||w||)",
        build_optimizer=_lars,
        build_scheduler=_constant_schedule,
        defaults=_sgd_defaults(SGD_FINETUNE_LR, 0.03, trust_coefficient=0.02),
        lr_family="sgd",
        uses_tensor_norms=True,
        implementation=(
            "hf_dals.optim.LARS: pytorch_optimizer.LARS, plus a step for FSDP2 shards "
            "(You et al. 2017; biases and norm weights take plain SGD steps)"
        ),
    ),
    Strategy(
        name="lamb",
        generation=4,
        description="LAMB: Adam steps scaled per weight tensor by ||w|| / ||update||",
        build_optimizer=_lamb,
        build_scheduler=_constant_schedule,
        defaults=_regimes(
            {"learning_rate": 1e-3, "weight_decay": FINETUNE_DECAY},
            {"learning_rate": 1e-2, "weight_decay": FINETUNE_DECAY},
        ),
        uses_tensor_norms=True,
        implementation=(
            "hf_dals.optim.Lamb: pytorch_optimizer.Lamb, plus a step for FSDP2 shards "
            "(biases and norm weights take plain Adam steps)"
        ),
    ),
    Strategy(
        name="discriminative",
        generation=4,
        description="SGD with momentum; each lower depth trains at the lr of the one above / 2.6 (ULMFiT)",
        build_optimizer=_sgd(_depth_groups),
        build_scheduler=_constant_schedule,
        defaults=_sgd_defaults(SGD_FINETUNE_LR, 0.05, layer_lr_decay=_ULMFIT_DECAY),
        uses_depth_groups=True,
        lr_family="sgd",
        implementation="torch.optim.SGD on hf_dals depth groups",
    ),
    Strategy(
        name="llrd_adamw",
        generation=4,
        description="AdamW with layer-wise lr decay 0.9, linear warmup (10%) and linear decay: the usual BERT recipe",
        build_optimizer=_torch_adaptive(torch.optim.AdamW, _depth_groups),
        build_scheduler=_linear_schedule,
        defaults=_adam_defaults(weight_decay=FINETUNE_DECAY, layer_lr_decay=0.9, warmup_fraction=0.1),
        uses_depth_groups=True,
        implementation="torch.optim.AdamW on hf_dals depth groups, hf_dals.schedules.linear_warmup_decay",
    ),
    # Generation 5: joint layer-time methods and the optimizers of the paper's fifth generation.
    Strategy(
        name="radam",
        generation=5,
        description="RAdam: Adam with the variance of the adaptive lr rectified in early steps",
        build_optimizer=_torch_adaptive(torch.optim.RAdam),
        build_scheduler=_constant_schedule,
        defaults=_adam_defaults(),
        implementation="torch.optim.RAdam",
    ),
    Strategy(
        name="lion",
        generation=5,
        description="Lion: sign of an interpolated momentum, decoupled weight decay 0.01",
        build_optimizer=_lion,
        build_scheduler=_constant_schedule,
        defaults=_regimes(
            {"learning_rate": ADAM_FINETUNE_LR / 2, "weight_decay": FINETUNE_DECAY},
            {"learning_rate": 1e-4, "weight_decay": FINETUNE_DECAY},
        ),
        implementation="pytorch_optimizer.Lion",
    ),
    Strategy(
        name="lookahead_adamw",
        generation=5,
        description="Lookahead (k 5, alpha 0.5) around AdamW: slow weights pulled toward the fast ones",
        build_optimizer=_lookahead_adamw,
        build_scheduler=_constant_schedule,
        defaults=_adam_defaults(weight_decay=FINETUNE_DECAY, lookahead_k=5, lookahead_alpha=0.5),
        implementation="pytorch_optimizer.Lookahead around torch.optim.AdamW",
    ),
    Strategy(
        name="sam",
        generation=5,
        description="Adaptive SAM (rho 0.05) around SGD with momentum: two passes per step",
        build_optimizer=_sam(_flat_groups),
        build_scheduler=_constant_schedule,
        defaults=_sgd_defaults(SGD_FINETUNE_LR, 0.03, sam_rho=0.05),
        needs_two_passes=True,
        lr_family="sgd",
        implementation="pytorch_optimizer.SAM (adaptive=True) around torch.optim.SGD",
    ),
    Strategy(
        name="grokfast",
        generation=5,
        description="Grokfast: SGD on g + 2.0 x EMA(g) (alpha 0.98)",
        build_optimizer=_grokfast,
        build_scheduler=_constant_schedule,
        defaults=_sgd_defaults(SGD_FINETUNE_LR, 0.03, grokfast_alpha=0.98, grokfast_lambda=2.0),
        lr_family="sgd",
        implementation="hf_dals.optim.GrokfastSGD",
    ),
    Strategy(
        name="stlr_discriminative",
        generation=5,
        description="ULMFiT slanted triangular schedule on discriminative depth groups (decay 2.6, applied once)",
        build_optimizer=_sgd(_depth_groups),
        build_scheduler=_stlr_schedule,
        defaults=_sgd_defaults(SGD_FINETUNE_LR, 0.05, layer_lr_decay=_ULMFIT_DECAY, **_STLR),
        uses_depth_groups=True,
        lr_family="sgd",
        implementation="torch.optim.SGD on hf_dals depth groups, hf_dals.schedules.slanted_triangular",
    ),
    Strategy(
        name="sam_discriminative",
        generation=5,
        description="Adaptive SAM on discriminative depth groups (each lower depth / 2.6)",
        build_optimizer=_sam(_depth_groups),
        build_scheduler=_constant_schedule,
        defaults=_sgd_defaults(SGD_FINETUNE_LR, 0.05, layer_lr_decay=_ULMFIT_DECAY, sam_rho=0.05),
        uses_depth_groups=True,
        needs_two_passes=True,
        lr_family="sgd",
        implementation="pytorch_optimizer.SAM (adaptive=True) around torch.optim.SGD on hf_dals depth groups",
    ),
    Strategy(
        name="ulmfit",
        generation=5,
        description="ULMFiT: STLR + discriminative lr + gradual unfreezing (one more depth per epoch)",
        build_optimizer=_sgd(_depth_groups),
        build_scheduler=_ulmfit_schedule,
        defaults=_sgd_defaults(
            SGD_FINETUNE_LR,
            0.05,
            layer_lr_decay=_ULMFIT_DECAY,
            unfreeze_every_epochs=1.0,
            unfreeze_every_fraction=None,
            **_STLR,
        ),
        uses_depth_groups=True,
        lr_family="sgd",
        implementation="torch.optim.SGD on hf_dals depth groups, hf_dals.schedules.slanted_triangular and gated",
    ),
    Strategy(
        name="dals",
        generation=5,
        description="DALS: phase-adaptive Grokfast filter, depth blend, trust ratio, warmup + cosine",
        build_optimizer=_dals("dals"),
        build_scheduler=_warmup_cosine_schedule,
        defaults=_dals_defaults(
            {"learning_rate": SGD_FINETUNE_LR, "warmup_fraction": 0.1},
            {"learning_rate": 0.03, "warmup_fraction": 0.05},
            momentum=0.9,
            min_lr_ratio=0.0,
            grokfast_alpha=0.6,
            **_PHASES,
        ),
        uses_depth_groups=True,
        needs_loss=True,
        lr_family="sgd",
        uses_tensor_norms=True,
        implementation="hf_dals.DALS",
    ),
    Strategy(
        name="dals_fast",
        generation=5,
        description="DALS-Fast: higher lr, momentum 0.85, short warmup, raw gradient while exploring",
        build_optimizer=_dals("fast"),
        build_scheduler=_warmup_cosine_schedule,
        defaults=_dals_defaults(
            {"learning_rate": 2 * SGD_FINETUNE_LR, "warmup_fraction": 0.05},
            {"learning_rate": 0.05, "warmup_fraction": 0.02},
            momentum=0.85,
            min_lr_ratio=0.0,
            grokfast_alpha=0.6,
            **_PHASES,
        ),
        uses_depth_groups=True,
        needs_loss=True,
        lr_family="sgd",
        uses_tensor_norms=True,
        implementation="hf_dals.DALS(variant='fast')",
    ),
    Strategy(
        name="dals_acc",
        generation=5,
        description="DALS-Acc: SGDR warm restarts, stronger filter (alpha 0.7), refine threshold 0.001",
        build_optimizer=_dals("acc"),
        build_scheduler=_sgdr_schedule,
        defaults=_dals_defaults(
            {"learning_rate": SGD_FINETUNE_LR, "sgdr_cycle_epochs": 3.0, "sgdr_cycle_steps": 50},
            {"learning_rate": 0.03, "sgdr_cycle_epochs": 10.0, "sgdr_cycle_steps": 0},
            momentum=0.9,
            grokfast_alpha=0.7,
            sgdr_cycle_mult=2.0,
            phase_threshold_explore=0.01,
            phase_threshold_refine=0.001,
        ),
        uses_depth_groups=True,
        needs_loss=True,
        lr_family="sgd",
        uses_tensor_norms=True,
        implementation="hf_dals.DALS(variant='acc'), hf_dals.schedules.sgdr",
    ),
]

for _strategy in _STRATEGIES:
    register_strategy(_strategy)
