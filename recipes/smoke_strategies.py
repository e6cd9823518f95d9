"""Run recipes/finetune.py once for every registered strategy on a small slice of TREC-6.

This is a smoke table: one seed, a few hundred training questions, each strategy at its own
default hyperparameters. It shows that every strategy trains end to end on real data; it is not
a benchmark and ranks nothing.

    python recipes/smoke_strategies.py --data_dir ../shared/data/trec --output docs/strategies_smoke.md

Each run's ``all_results.json`` stays under ``--work_dir/<strategy>``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import torch
import transformers

from hf_dals import list_strategies

RECIPE = Path(__file__).resolve().parent / "finetune.py"


def load_recipe():
    spec = importlib.util.spec_from_file_location("finetune_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_all(options: argparse.Namespace) -> list[dict]:
    recipe = load_recipe()
    rows = []
    for strategy in list_strategies():
        started = time.perf_counter()
        metrics, trainer = recipe.main(
            [
                "--task", "trec",
                "--data_dir", options.data_dir,
                "--max_train_samples", str(options.train_samples),
                "--max_seq_length", "64",
                "--lr_strategy", strategy.name,
                "--num_train_epochs", str(options.epochs),
                "--per_device_train_batch_size", "16",
                "--output_dir", str(Path(options.work_dir) / strategy.name),
                "--seed", str(options.seed),
                "--disable_tqdm", "true",
                "--dataloader_pin_memory", "false",
                "--save_total_limit", "1",
            ]
        )  # fmt: skip
        rows.append(
            {
                "strategy": strategy.name,
                "generation": strategy.generation,
                "learning_rate": trainer.args.learning_rate,
                "eval_accuracy": metrics["eval_accuracy"],
                "test_accuracy": metrics["test_accuracy"],
                "seconds": time.perf_counter() - started,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def write_table(rows: list[dict], options: argparse.Namespace, command: str) -> str:
    lines = [
        "# Smoke run of every strategy on TREC-6",
        "",
        f"Every registered strategy fine-tuned all-MiniLM-L6-v2 on a stratified {options.train_samples} of the",
        f"5,452 TREC-6 training questions for {options.epochs:g} epochs (batch 16, inputs cut at 64 tokens, seed",
        f"{options.seed}), each at its own default fine-tuning hyperparameters. The checkpoint with the best",
        "validation accuracy (545 held-out training questions) was tested once on the 500 test questions.",
        "",
        "This table shows that each strategy runs end to end on real data. It is one seed on a tiny",
        "training set, so it ranks nothing. The SGD-family defaults (lr 5e-4, the fine-tuning setting",
        "of arXiv:2604.27295 for 10 epochs of DistilBERT) barely move MiniLM in so few steps.",
        "Those rows stay near the accuracy of the untrained classifier head, below the 27.6% of",
        "always answering the most frequent test class.",
        "",
        "| strategy | generation | peak lr | validation accuracy | test accuracy | time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['strategy']} | {row['generation']} | {row['learning_rate']:.1e} | "
            f"{100 * row['eval_accuracy']:.1f}% | {100 * row['test_accuracy']:.1f}% | {row['seconds']:.0f} |"
        )
    lines += [""]
    if options.note:
        lines += [options.note, ""]
    lines += [
        "Command:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Machine: {platform.machine()}, torch threads: {torch.get_num_threads()}, no GPU; Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}; run on {date.today().isoformat()}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="Folder with train_5500.label and TREC_10.label.")
    parser.add_argument("--output", default="docs/strategies_smoke.md", help="Markdown file to write.")
    parser.add_argument("--work_dir", default="outputs/smoke", help="Where each run's checkpoint and results go.")
    parser.add_argument("--train_samples", type=int, default=500, help="Training questions (stratified).")
    parser.add_argument("--epochs", type=float, default=2.0, help="Training epochs.")
    parser.add_argument("--seed", type=int, default=42, help="Training seed.")
    parser.add_argument("--note", default="", help="A paragraph to print under the table, e.g. what else ran on the machine.")
    options = parser.parse_args(argv)
    command = shlex.join(["python", "recipes/smoke_strategies.py", *(argv if argv is not None else sys.argv[1:])])
    rows = run_all(options)
    Path(options.output).write_text(write_table(rows, options, command))


if __name__ == "__main__":
    main()
