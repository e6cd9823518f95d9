"""Checks that a DeepSpeed or FSDP set-up keeps a strategy's parameter groups, schedule and norms.

``DALSTrainer`` runs these checks when it is built, so that a set-up that would silently train
with other learning rates, another schedule or wrong trust ratios raises an error first:

* A DeepSpeed config with an ``"optimizer"`` block makes Trainer let DeepSpeed build its own
  optimizer over one parameter group, so the strategy's groups are dropped. A ``"scheduler"``
  block replaces the strategy's schedule. Either block raises ``ValueError``; without them,
  Trainer passes the strategy's optimizer and schedule to DeepSpeed.
* FSDP1 with ``use_orig_params=False`` flattens each wrapped module's parameters into one tensor
  before the optimizer is built, so per-depth groups cannot be formed: ``ValueError``.
* Strategies whose optimizer computes norms of whole parameter tensors (DALS, LARS, LAMB) are
  correct on FSDP2's ``DTensor`` shards, but not on flat shards: ``NotImplementedError``.
  DeepSpeed ZeRO and its mixed-precision optimizers replace each parameter group's tensors with
  one flat tensor (``param_group['params'] = [flat partition]`` in DeepSpeed's
  ``deepspeed/runtime/zero/stage_1_and_2.py``), and FSDP1 turns each parameter into a 1-D slice
  of a flat shard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from .strategies import Strategy

__all__ = ["check_deepspeed_config", "check_fsdp_settings", "load_deepspeed_config"]

_FSDP2_HINT = "use FSDP2 instead (fsdp_config={'version': 2}, or fsdp_version: 2 in the accelerate config)"


def load_deepspeed_config(config: str | os.PathLike | Mapping | Any) -> dict:
    """Return a DeepSpeed config as a dict, from a dict, a path to a JSON file or a parsed config.

    A parsed config is an object with a ``config`` dict, such as transformers'
    ``HfTrainerDeepSpeedConfig`` (``TrainingArguments.hf_deepspeed_config``).
    """
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, (str, os.PathLike)):
        with open(config, encoding="utf-8") as handle:
            return json.load(handle)
    parsed = getattr(config, "config", None)
    if isinstance(parsed, Mapping):
        return dict(parsed)
    raise TypeError(
        f"invalid DeepSpeed config of type {type(config).__name__} (expected a dict, a path to a JSON file, "
        "or an object with a `config` dict)"
    )


def check_deepspeed_config(config: Mapping, strategy: Strategy) -> None:
    """Raise if DeepSpeed with ``config`` would replace or break the strategy's optimizer or schedule.

    Raises:
        NotImplementedError: the strategy computes norms of whole tensors (``uses_tensor_norms``).
        ValueError: ``config`` has an ``"optimizer"`` or a ``"scheduler"`` block. Their presence
            counts, whatever they contain (``"auto"`` values included).
    """
    if strategy.uses_tensor_norms:
        raise NotImplementedError(
            f"lr_strategy={strategy.name!r} computes a trust ratio from the norm of each whole parameter tensor, "
            "but DeepSpeed hands the optimizer one flat shard per parameter group, so the ratios would be wrong; "
            "train it with DDP or FSDP2, or choose a strategy without trust ratios"
        )
    problems = {
        "optimizer": 'its "optimizer" block makes DeepSpeed build its own optimizer over a single parameter group, '
        "which drops the strategy's groups",
        "scheduler": 'its "scheduler" block makes a DeepSpeed scheduler replace the strategy\'s schedule',
    }
    found = [key for key in problems if key in config]
    if found:
        names = " and ".join(f'"{key}"' for key in found)
        plural = "s" if len(found) > 1 else ""
        raise ValueError(
            f"invalid DeepSpeed config for lr_strategy={strategy.name!r}: {'; '.join(problems[key] for key in found)}. "
            f"Remove the {names} block{plural} from the DeepSpeed config; Trainer then hands the strategy's "
            "optimizer and schedule to DeepSpeed"
        )


def check_fsdp_settings(fsdp_version: int, use_orig_params: bool, strategy: Strategy) -> None:
    """Raise if FSDP with these settings would break the strategy's groups or norms.

    Raises:
        ValueError: FSDP1 with ``use_orig_params=False``.
        NotImplementedError: FSDP1 with a strategy that computes norms of whole tensors.
    """
    if fsdp_version != 1:
        return
    if not use_orig_params:
        raise ValueError(
            f"lr_strategy={strategy.name!r} needs one optimizer group per depth, but FSDP1 with "
            "use_orig_params=False flattens each wrapped module's parameters into one tensor before the "
            "optimizer is built; set use_orig_params to true (fsdp_config={'use_orig_params': True}, or "
            f"fsdp_use_orig_params: true in the accelerate config), or {_FSDP2_HINT}"
        )
    if strategy.uses_tensor_norms:
        raise NotImplementedError(
            f"lr_strategy={strategy.name!r} computes a trust ratio from the norm of each whole parameter tensor, "
            f"but FSDP1 hands the optimizer 1-D slices of flat shards, so the ratios would be wrong; {_FSDP2_HINT}"
        )
