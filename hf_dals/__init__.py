"""hf-dals: layer- and time-aware learning rates for Hugging Face training.

``DALSTrainer`` replaces ``transformers.Trainer`` and builds its optimizer and schedule from a
named strategy (``DALSTrainingArguments.lr_strategy``); ``DALS`` is the Discriminative Adaptive
Layer Scaling optimizer of arXiv:2604.27295.
"""

from .grouping import (
    canonical_name,
    check_param_coverage,
    depth_param_groups,
    describe_param_groups,
    discover_depths,
    layer_depths,
)
from .optim import DALS
from .strategies import Strategy, get_strategy, list_strategies
from .trainer import DALSTrainer
from .training_args import DALSTrainingArguments

__version__ = "0.1.0"

__all__ = [
    "DALS",
    "DALSTrainer",
    "DALSTrainingArguments",
    "Strategy",
    "canonical_name",
    "check_param_coverage",
    "depth_param_groups",
    "describe_param_groups",
    "discover_depths",
    "get_strategy",
    "layer_depths",
    "list_strategies",
]
