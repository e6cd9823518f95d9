"""Fine-tune a pretrained encoder on a text classification task with DALSTrainer.

The validation split is a seeded, stratified slice of the training file. The checkpoint with the
best validation accuracy is kept, and the test split is evaluated once at the end. Results go to
``OUTPUT_DIR/all_results.json`` (``eval_accuracy``, ``test_accuracy``, ...).

TREC-6 from the Hub (``CogComp/trec``, coarse labels) with DALS:

    python recipes/finetune.py --task trec --lr_strategy dals --output_dir outputs/trec-dals

Offline, from the original files (``train_5500.label`` and ``TREC_10.label``; hf-dals ships a
copy in ``hf_dals/data/trec``) and the packaged all-MiniLM-L6-v2 weights:

    python recipes/finetune.py --task trec --data_dir hf_dals/data/trec --lr_strategy dals \\
        --learning_rate 2e-2 --num_train_epochs 2 --output_dir outputs/trec-dals

Every ``TrainingArguments`` option works, and ``accelerate launch recipes/finetune.py ...`` runs
it on several processes unchanged. ``--help`` lists the hf-dals options.

``OUTPUT_DIR/README.md`` is the model card, with a "Learning-rate strategy" section. To upload
the model and its card, log in (``hf auth login`` or ``HF_TOKEN``) and add Trainer's options:

    python recipes/finetune.py --task trec --lr_strategy dals --output_dir outputs/trec-dals \
        --push_to_hub --hub_model_id USER/minilm-trec-dals
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from transformers import HfArgumentParser

from hf_dals.finetune import DataArguments, FinetuneTrainingArguments, ModelArguments, run_finetune


def main(argv: Sequence[str] | None = None):
    """Parse ``argv`` (default: the command line), fine-tune, and return (metrics, trainer)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, FinetuneTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    metrics, trainer = run_finetune(model_args, data_args, training_args)
    if trainer.is_world_process_zero():
        summary = {key: metrics[key] for key in ("eval_accuracy", "test_accuracy", "wall_time_seconds")}
        print(json.dumps(summary, indent=2))
    return metrics, trainer


if __name__ == "__main__":
    main(sys.argv[1:])
