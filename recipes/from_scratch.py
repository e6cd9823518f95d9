"""Train a model from random initialisation with DALSTrainer: CIFAR-10, synthetic tasks, TREC-6.

The protocol matches recipes/finetune.py: a seeded, stratified validation split, the checkpoint
with the best validation accuracy, one test evaluation. Strategies use their from-scratch
defaults (``--training_regime scratch``), the settings of arXiv:2604.27295's CIFAR-10 and
synthetic runs. Tasks are documented in ``hf_dals/scratch.py``.

CIFAR-10 from local ``.npz`` shards with crop and flip, DALS for 20 epochs:

    python recipes/from_scratch.py --task cifar10 --data_dir ../shared/data/cifar10 --augment \\
        --lr_strategy dals --num_train_epochs 20 --output_dir outputs/cifar10-dals

The synthetic task of the paper's Table 2 (generated, no data needed):

    python recipes/from_scratch.py --task synthetic --lr_strategy dals_fast --num_train_epochs 8

A small random BERT on TREC-6, the regime where STLR + discriminative learning rates fail:

    python recipes/from_scratch.py --task trec_scratch --data_dir hf_dals/data/trec \\
        --lr_strategy stlr_discriminative --num_train_epochs 10
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from transformers import HfArgumentParser

from hf_dals.protocol import fit_and_test
from hf_dals.scratch import ScratchArguments, ScratchTrainingArguments, prepare_scratch_task


def main(argv: Sequence[str] | None = None):
    """Parse ``argv`` (default: the command line), train, and return (metrics, trainer)."""
    parser = HfArgumentParser((ScratchArguments, ScratchTrainingArguments))
    scratch_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    prepared = prepare_scratch_task(scratch_args, training_args.seed)
    metrics, trainer = fit_and_test(prepared, training_args)
    if trainer.is_world_process_zero():
        summary = {key: metrics[key] for key in ("eval_accuracy", "test_accuracy", "wall_time_seconds")}
        print(json.dumps(summary, indent=2))
    return metrics, trainer


if __name__ == "__main__":
    main(sys.argv[1:])
