"""The strategy record that ``DALSTrainer`` writes next to the optimizer state of a checkpoint.

Each strategy builds its own parameter groups and optimizer state, so the optimizer state of a
checkpoint only fits the strategy that wrote it. Loaded into another strategy's optimizer it
fails with an unclear error about group sizes, or, when the group counts happen to match, loads
mismatched state without any error. The record lets a resumed run check this first.
"""

from __future__ import annotations

import json
import logging
import os

__all__ = ["STRATEGY_RECORD_NAME", "check_strategy_record", "write_strategy_record"]

logger = logging.getLogger(__name__)

STRATEGY_RECORD_NAME = "hf_dals_strategy.json"


def write_strategy_record(checkpoint_dir: str | os.PathLike, lr_strategy: str, training_regime: str) -> None:
    """Write ``hf_dals_strategy.json`` with the strategy and training regime into ``checkpoint_dir``."""
    record = {"lr_strategy": lr_strategy, "training_regime": training_regime}
    path = os.path.join(checkpoint_dir, STRATEGY_RECORD_NAME)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")


def check_strategy_record(checkpoint_dir: str | os.PathLike, lr_strategy: str) -> None:
    """Raise ``ValueError`` if the checkpoint in ``checkpoint_dir`` was written by another strategy.

    A checkpoint without a record (written by plain ``Trainer``, or with ``save_only_model``)
    cannot be checked; that is logged as a warning and not raised.
    """
    path = os.path.join(checkpoint_dir, STRATEGY_RECORD_NAME)
    if not os.path.isfile(path):
        logger.warning(
            "Checkpoint %s has no %s, so its lr_strategy cannot be compared with lr_strategy=%r.",
            checkpoint_dir,
            STRATEGY_RECORD_NAME,
            lr_strategy,
        )
        return
    with open(path, encoding="utf-8") as handle:
        saved = json.load(handle).get("lr_strategy")
    if saved != lr_strategy:
        raise ValueError(
            f"checkpoint {os.fspath(checkpoint_dir)!r} was trained with lr_strategy={saved!r}, but this run has "
            f"lr_strategy={lr_strategy!r}, and the optimizer state of one strategy does not fit the parameter "
            f"groups of another. Resume with lr_strategy={saved!r}, or start a new run from the checkpoint's "
            "weights (model.from_pretrained(checkpoint), without resume_from_checkpoint)"
        )
