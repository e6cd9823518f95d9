"""The ``hf-dals`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]

logger = logging.getLogger("hf_dals")


def _strategies_table(generation: int | None) -> str:
    from .strategies import list_strategies

    strategies = list_strategies(generation)
    rows = [("name", "generation", "description")]
    rows += [(s.name, str(s.generation), s.description) for s in strategies]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{row[0].ljust(widths[0])}  {row[1].rjust(widths[1])}  {row[2]}" for row in rows]
    lines.insert(1, f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * 11}")
    return "\n".join(lines)


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _strategies_markdown(generation: int | None) -> str:
    from .strategies import list_strategies

    lines = [
        "| name | generation | description | implementation | fine-tuning defaults |",
        "|---|---:|---|---|---|",
    ]
    for strategy in list_strategies(generation):
        defaults = ", ".join(f"{k}={_format_value(v)}" for k, v in strategy.defaults["finetune"].items())
        lines.append(
            f"| `{strategy.name}` | {strategy.generation} | {strategy.description} | {strategy.implementation} | {defaults} |"
        )
    return "\n".join(lines)


def _command_strategies(options: argparse.Namespace) -> int:
    if options.markdown:
        print(_strategies_markdown(options.generation))
    else:
        print(_strategies_table(options.generation))
    return 0


def _command_demo(options: argparse.Namespace) -> int:
    from .demo import format_results_table, run_demo

    logging.getLogger("hf_dals.demo").setLevel(logging.INFO)
    rows = run_demo(
        options.output_dir,
        data_dir=options.data_dir,
        model_name_or_path=options.model_name_or_path,
        max_train_samples=options.max_train_samples or None,
        num_train_epochs=options.epochs,
    )
    print()
    print(f"TREC-6, all-MiniLM-L6-v2, {rows[0]['train_samples']} training questions, {options.epochs:g} epochs")
    print(format_results_table(rows))
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-dals",
        description="Layer- and time-aware learning rates for Hugging Face training.",
    )
    parser.add_argument("--verbose", action="store_true", help="Log at INFO level (default: WARNING).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    strategies = commands.add_parser("strategies", help="List the registered learning-rate strategies.")
    strategies.add_argument("--generation", type=int, choices=range(1, 6), help="Only this generation (1-5).")
    strategies.add_argument(
        "--markdown", action="store_true", help="Print a Markdown table with implementations and defaults."
    )
    strategies.set_defaults(handler=_command_strategies)

    from .demo import DEMO_EPOCHS, DEMO_TRAIN_SAMPLES

    demo = commands.add_parser(
        "demo",
        help="Fine-tune the packaged MiniLM on TREC-6 with hf_default, stlr_discriminative and dals.",
    )
    demo.add_argument("--output_dir", help="Where runs are saved (default: a new temporary folder).")
    demo.add_argument("--data_dir", help="Folder with train_5500.label and TREC_10.label (default: the packaged copy).")
    demo.add_argument("--model_name_or_path", help="Model to fine-tune (default: the packaged all-MiniLM-L6-v2).")
    demo.add_argument(
        "--max_train_samples",
        type=int,
        default=DEMO_TRAIN_SAMPLES,
        help=f"Stratified subset of the training questions; 0 trains on all (default: {DEMO_TRAIN_SAMPLES}).",
    )
    demo.add_argument("--epochs", type=float, default=DEMO_EPOCHS, help=f"Training epochs (default: {DEMO_EPOCHS:g}).")
    demo.set_defaults(handler=_command_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _build_parser()
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if options.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not options.verbose:
        import datasets
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
    return options.handler(options)


if __name__ == "__main__":
    sys.exit(main())
