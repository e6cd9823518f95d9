"""The ``hf-dals`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

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


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid shard {text!r}; expected K/N, e.g. 0/2") from None
    if not (count >= 1 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"invalid shard {text!r}; expected 0 <= K < N")
    return index, count


def _command_benchmark(options: argparse.Namespace) -> int:
    from .benchmark import run_benchmark

    logging.getLogger("hf_dals.benchmark").setLevel(logging.INFO)
    records = run_benchmark(
        options.profile,
        options.results,
        data_root=options.data_root,
        work_dir=options.work_dir,
        tasks=options.tasks,
        strategies=options.strategies,
        seeds=options.seeds,
        retry_failed=options.retry_failed,
        shard=options.shard,
    )
    failed = sum(1 for r in records if r.get("status") != "ok")
    print(f"{len(records)} runs finished ({failed} failed); results in {options.results}")
    return 1 if failed else 0


def _command_report(options: argparse.Namespace) -> int:
    from .report import write_report

    preamble = Path(options.preamble).read_text() if options.preamble else ""
    path = write_report(options.results, options.output, figures_dir=options.figures, profile=options.profile, preamble=preamble)
    print(f"report written to {path}")
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

    from .benchmark import PROFILES

    benchmark = commands.add_parser(
        "benchmark",
        help="Run the strategies x tasks x seeds grid of a profile; results go to an append-only JSON Lines file.",
    )
    benchmark.add_argument("--profile", default="quick", choices=sorted(PROFILES), help="Grid and run sizes (default: quick).")
    benchmark.add_argument("--results", default="outputs/benchmark.jsonl", help="Results file; finished runs in it are skipped.")
    benchmark.add_argument(
        "--data_root",
        help="Folder with trec/, rte/, imdb/ and cifar10/ subfolders of local data (default: the Hub; TREC-6 from the packaged copy).",
    )
    benchmark.add_argument("--work_dir", default="outputs/benchmark", help="Scratch folder for the runs.")
    benchmark.add_argument("--tasks", nargs="+", help="Only these tasks.")
    benchmark.add_argument("--strategies", nargs="+", help="Only these strategies.")
    benchmark.add_argument("--seeds", nargs="+", type=int, help="Only these seeds (no extra seeds for the core set).")
    benchmark.add_argument("--retry_failed", action="store_true", help="Run again the cells recorded as failed.")
    benchmark.add_argument("--shard", type=_parse_shard, help="K/N: run every N-th pending cell starting at K.")
    benchmark.set_defaults(handler=_command_benchmark)

    report = commands.add_parser("report", help="Write the Markdown report and plots for a benchmark results file.")
    report.add_argument("results", help="The JSON Lines results file of `hf-dals benchmark`.")
    report.add_argument("--output", default="docs/benchmarks.md", help="Markdown file to write.")
    report.add_argument("--figures", help="Folder for the PNG plots (default: figures/ next to the report).")
    report.add_argument("--profile", help="Only records of this profile.")
    report.add_argument("--preamble", help="Markdown file whose text goes before the tables (command, machine, notes).")
    report.set_defaults(handler=_command_report)
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
