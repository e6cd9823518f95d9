"""``DALSTrainingArguments``: ``TrainingArguments`` plus the choice of learning-rate strategy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from .strategies import REGIMES, TUNABLE_HYPERPARAMETERS, get_strategy, strategy_names

__all__ = ["DALSTrainingArguments"]


def _knob(help_text: str) -> Any:
    return field(default=None, metadata={"help": help_text + " Default: the strategy's own value."})


@dataclass
class DALSTrainingArguments(TrainingArguments):
    """Training arguments with a learning-rate strategy from the hf-dals registry.

    ``learning_rate`` and ``weight_decay`` default to ``None``, which means the chosen strategy's
    default for the training regime (for ``hf_default``: Trainer's 5e-5 and 0.0). After
    construction both hold the resolved numbers, so Trainer and loggers see real values. Every
    other strategy knob is ``None`` unless set; setting a knob the strategy does not read raises
    ``ValueError`` instead of being ignored.
    """

    lr_strategy: str = field(
        default="hf_default",
        metadata={
            "help": "Learning-rate strategy from the hf-dals registry (run `hf-dals strategies` for the table).",
            "choices": strategy_names(),
        },
    )
    training_regime: str = field(
        default="finetune",
        metadata={
            "help": "Which defaults the strategy uses: 'finetune' (a pretrained model) or 'scratch' "
            "(random initialisation, the paper's CIFAR-10 and synthetic settings).",
            "choices": list(REGIMES),
        },
    )
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate of the top depth. Default: the strategy's own value."},
    )
    weight_decay: float | None = field(
        default=None,
        metadata={"help": "Weight decay for weights (never for biases and norm weights). Default: the strategy's own value."},
    )
    layer_lr_decay: float | None = _knob(
        "Learning-rate multiplier per depth below the top, in (0, 1]; 1/2.6 = 0.3846 is ULMFiT's rule."
    )
    momentum: float | None = _knob("Momentum of the SGD-family optimizers and DALS, in [0, 1).")
    warmup_fraction: float | None = _knob("Fraction of the training steps spent in linear warmup, in [0, 1).")
    min_lr_ratio: float | None = _knob("Final learning rate of cosine schedules, as a fraction of the peak.")
    trust_coefficient: float | None = _knob("DALS trust coefficient gamma in r = gamma * ||theta|| / ||update||.")
    trust_clip_min: float | None = _knob("Lower clip of the DALS trust ratio.")
    trust_clip_max: float | None = _knob("Upper clip of the DALS trust ratio.")
    grokfast_alpha: float | None = _knob("Nominal weight alpha of the Grokfast EMA gradient filter, in [0, 1).")
    phase_threshold_explore: float | None = _knob(
        "DALS: relative loss-EMA improvement per step above which training is in phase 0 (explore)."
    )
    phase_threshold_refine: float | None = _knob(
        "DALS: relative loss-EMA improvement per step at or below which training is in phase 2 (refine)."
    )
    sgdr_cycle_epochs: float | None = _knob("Length of the first SGDR cycle, in epochs.")
    sgdr_cycle_steps: int | None = _knob(
        "Minimum length of the first SGDR cycle, in optimizer steps (the cycle is the longer of the two)."
    )
    sgdr_cycle_mult: float | None = _knob("Factor by which each SGDR cycle is longer than the previous one.")
    stlr_cut_frac: float | None = _knob("Slanted triangular schedule: fraction of the steps spent increasing the lr.")
    stlr_ratio: float | None = _knob("Slanted triangular schedule: ratio of the peak lr to the lowest lr.")
    unfreeze_every_epochs: float | None = _knob(
        "Gradual unfreezing: one more depth (from the top) starts training every this many epochs."
    )
    unfreeze_every_fraction: float | None = _knob(
        "Gradual unfreezing: one more depth starts training every this fraction of the steps; overrides "
        "unfreeze_every_epochs."
    )
    one_cycle_div_factor: float | None = _knob("One-cycle schedule: the first lr is the peak lr / this.")
    one_cycle_final_div_factor: float | None = _knob("One-cycle schedule: the last lr is the first lr / this.")
    adabound_final_lr: float | None = _knob("AdaBound: the SGD learning rate that the bounds converge to.")
    sam_rho: float | None = _knob("SAM: radius of the weight perturbation.")
    lookahead_k: int | None = _knob("Lookahead: number of inner steps between slow-weight updates.")
    lookahead_alpha: float | None = _knob("Lookahead: interpolation factor from the slow toward the fast weights.")
    grokfast_lambda: float | None = _knob("Grokfast: amplification of the slow (EMA) gradient, g + lambda * EMA(g).")
    layer_pattern: str | None = field(
        default=None,
        metadata={
            "help": "Regular expression whose first group captures the layer index, for models whose layer "
            r"stack is not found automatically, e.g. '\.blocks\.(\d+)\.'."
        },
    )

    def __post_init__(self) -> None:
        strategy = get_strategy(self.lr_strategy)
        if self.training_regime not in REGIMES:
            raise ValueError(f"invalid training_regime: {self.training_regime!r} (expected one of {list(REGIMES)})")
        used = set(strategy.hyperparameter_names)
        ignored = [
            name
            for name in TUNABLE_HYPERPARAMETERS
            if name not in ("learning_rate", "weight_decay") and getattr(self, name) is not None and name not in used
        ]
        if ignored:
            raise ValueError(
                f"lr_strategy {self.lr_strategy!r} does not use {', '.join(ignored)}; remove "
                f"{'it' if len(ignored) == 1 else 'them'}. It reads: {', '.join(strategy.hyperparameter_names)}"
            )
        strategy.hyperparameters(self)  # raises ValueError on an out-of-range value
        defaults = strategy.defaults[self.training_regime]
        if self.learning_rate is None:
            self.learning_rate = defaults["learning_rate"]
        if self.weight_decay is None:
            self.weight_decay = defaults.get("weight_decay", 0.0)
        super().__post_init__()

    def __getstate__(self) -> dict:
        # Trainer pickles the arguments into training_args.bin, which push_to_hub uploads, and
        # TrainingArguments keeps hub_token in clear text. Pickled (and copied) arguments carry
        # no token, so a token given with --hub_token never reaches the Hub or a checkpoint.
        state = self.__dict__.copy()
        state["hub_token"] = None
        return state

    def strategy_hyperparameters(self) -> dict:
        """Return the resolved hyperparameters of the chosen strategy."""
        return get_strategy(self.lr_strategy).hyperparameters(self)
