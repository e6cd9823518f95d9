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


# Auto classes that ``hf-dals groups --auto_class`` can load a model with.
_AUTO_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "image-classification": "AutoModelForImageClassification",
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
    "base": "AutoModel",
}


def _load_model(options: argparse.Namespace):
    """Load ``options.model`` with ``options.auto_class``, from its weights or from its config alone.

    Raises:
        OSError: when the folder or Hub name cannot be read.
        ValueError: when the auto class does not support the model's config.
    """
    import transformers

    auto_class = getattr(transformers, _AUTO_CLASSES[options.auto_class])
    extra = {} if options.num_labels is None else {"num_labels": options.num_labels}
    config = transformers.AutoConfig.from_pretrained(options.model, **extra)
    if options.from_config:
        return auto_class.from_config(config)
    return auto_class.from_pretrained(options.model, config=config)


def _groups_for(model, options: argparse.Namespace) -> list[dict]:
    from .grouping import depth_param_groups

    if options.lr_strategy is None:
        return depth_param_groups(
            model,
            lr=5e-5 if options.lr is None else options.lr,
            layer_lr_decay=1.0 if options.layer_lr_decay is None else options.layer_lr_decay,
            weight_decay=0.0 if options.weight_decay is None else options.weight_decay,
            layer_pattern=options.layer_pattern,
        )

    import tempfile

    from .strategies import get_strategy
    from .training_args import DALSTrainingArguments

    with tempfile.TemporaryDirectory() as output_dir:
        args = DALSTrainingArguments(
            output_dir=output_dir,
            lr_strategy=options.lr_strategy,
            learning_rate=options.lr,
            layer_lr_decay=options.layer_lr_decay,
            weight_decay=options.weight_decay,
            layer_pattern=options.layer_pattern,
            report_to="none",
            use_cpu=True,
        )
        strategy = get_strategy(options.lr_strategy)
        optimizer = strategy.create_optimizer(model, args)
    return getattr(optimizer, "param_groups", optimizer)


def _load_model_or_report(options: argparse.Namespace, command: str):
    """Return the model of ``options``, or ``None`` after printing why it could not be loaded.

    Without ``options.model`` the packaged all-MiniLM-L6-v2 is loaded.
    """
    if options.model is None:
        from .finetune import packaged_model_path

        try:
            options.model = packaged_model_path()
        except RuntimeError as error:
            print(f"hf-dals {command}: error: {error}", file=sys.stderr)
            return None
    try:
        return _load_model(options)
    except OSError as error:
        print(
            f"hf-dals {command}: error: could not load {options.model!r}: it is not a model folder here and the "
            "Hugging Face Hub could not be reached or has no such model. Pass a folder written by "
            "save_pretrained, or connect to the Hub with HF_HUB_OFFLINE unset.\n"
            f"Cause: {error}",
            file=sys.stderr,
        )
        return None
    except ValueError as error:
        print(
            f"hf-dals {command}: error: could not build {options.model!r} with --auto_class "
            f"{options.auto_class}: {error}\nChoose another --auto_class ({', '.join(_AUTO_CLASSES)}).",
            file=sys.stderr,
        )
        return None


def _command_groups(options: argparse.Namespace) -> int:
    from .grouping import describe_param_groups, discover_depths

    model = _load_model_or_report(options, "groups")
    if model is None:
        return 1

    try:
        depth_map = discover_depths(model, layer_pattern=options.layer_pattern)
        groups = _groups_for(model, options)
    except ValueError as error:
        print(f"hf-dals groups: error: {error}", file=sys.stderr)
        return 1

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stacks = ", ".join(depth_map.stack_names) or "none (depths by module order)"
    label = "layer stacks" if len(depth_map.stack_names) > 1 else "layer stack"
    print(f"{type(model).__name__}: {label} {stacks}; {len(set(depth_map.depths.values()))} depths")
    print(f"{trainable:,} trainable parameters in {len(groups)} groups")
    print()
    print(describe_param_groups(groups))
    return 0


def _strategy_arguments(options: argparse.Namespace, name: str, output_dir: str):
    """Build the ``DALSTrainingArguments`` of strategy ``name`` from the options of ``plot-schedule``."""
    from .strategies import TUNABLE_HYPERPARAMETERS
    from .training_args import DALSTrainingArguments

    knobs = {key: getattr(options, key) for key in TUNABLE_HYPERPARAMETERS if getattr(options, key) is not None}
    return DALSTrainingArguments(
        output_dir=output_dir,
        lr_strategy=name,
        training_regime=options.training_regime,
        num_train_epochs=options.num_train_epochs,
        layer_pattern=options.layer_pattern,
        report_to="none",
        use_cpu=True,
        **knobs,
    )


def _command_plot_schedule(options: argparse.Namespace) -> int:
    import tempfile

    from .lr_trace import assumed_phases, load_log_history, logged_phases, schedule_table
    from .plots import plot_schedules
    from .strategies import get_strategy

    model = _load_model_or_report(options, "plot-schedule")
    if model is None:
        return 1

    logged = None
    if options.run is not None:
        try:
            state_path, history = load_log_history(options.run)
        except FileNotFoundError as error:
            print(f"hf-dals plot-schedule: error: {error}", file=sys.stderr)
            return 1
        logged = logged_phases(history)
        if logged is None:
            print(
                f"hf-dals plot-schedule: error: {state_path} has no dals_phase entries; --run needs a run of a DALS "
                "strategy trained with DALSTrainer",
                file=sys.stderr,
            )
            return 1

    tables, phases = [], {}
    try:
        with tempfile.TemporaryDirectory() as output_dir:
            for name in options.lr_strategy:
                args = _strategy_arguments(options, name, output_dir)
                tables.append(schedule_table(name, model, options.steps, args=args))
                if get_strategy(name).needs_loss:
                    phases[name] = logged if logged is not None else assumed_phases(options.steps, options.assumed_phase_bounds)
    except ValueError as error:
        print(f"hf-dals plot-schedule: error: {error}", file=sys.stderr)
        return 1

    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_schedules(tables, out, phases=phases)
    print(f"wrote {out}: {', '.join(options.lr_strategy)} over {options.steps} steps")
    return 0


def _command_plot_run(options: argparse.Namespace) -> int:
    from .lr_trace import load_log_history, run_series
    from .plots import plot_run

    try:
        state_path, history = load_log_history(options.output_dir)
        series = run_series(history)
    except (FileNotFoundError, ValueError) as error:
        print(f"hf-dals plot-run: error: {error}", file=sys.stderr)
        return 1
    out = Path(options.out) if options.out else Path(options.output_dir) / "run_plot.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_run(series, out, title=f"{Path(options.output_dir).resolve().name}: learning rate by depth")
    print(f"wrote {out} from {state_path}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid step count {text!r}; expected an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid step count {value}; expected an integer >= 1")
    return value


def _add_plot_schedule_parser(commands) -> None:
    import typing

    from .strategies import REGIMES, TUNABLE_HYPERPARAMETERS, strategy_names
    from .training_args import DALSTrainingArguments

    parser = commands.add_parser(
        "plot-schedule",
        help="Draw the learning rate of every depth over training for one or more strategies, without training.",
        description="Build each strategy's optimizer and scheduler on MODEL and step the scheduler STEPS times "
        "without gradients. Draws a depth x step heatmap and lines of a few depths per strategy. For DALS "
        "strategies the phase is shaded: an assumed sequence, or the phases logged by a run (--run). The "
        "phase changes the DALS gradient filter, not the learning rate.",
    )
    parser.add_argument(
        "--lr_strategy",
        nargs="+",
        required=True,
        choices=strategy_names(),
        metavar="NAME",
        help="One or more strategies (see `hf-dals strategies`); one row of the figure each.",
    )
    parser.add_argument(
        "--model",
        metavar="MODEL_PATH_OR_NAME",
        help="A folder written by save_pretrained, or a Hub name (default: the packaged all-MiniLM-L6-v2).",
    )
    _add_model_loading_arguments(parser)
    parser.add_argument("--steps", type=_positive_int, required=True, help="Number of optimizer steps of the training run.")
    parser.add_argument(
        "--num_train_epochs",
        type=float,
        default=3.0,
        help="Epochs the steps span; sets the epoch-based parts of SGDR cycles and ULMFiT unfreezing (default: 3).",
    )
    parser.add_argument(
        "--training_regime", choices=list(REGIMES), default="finetune", help="Which defaults the strategies use."
    )
    parser.add_argument(
        "--layer_pattern",
        help=r"Regular expression whose first group captures the layer index, e.g. '\.blocks\.(\d+)\.'.",
    )
    hints = typing.get_type_hints(DALSTrainingArguments)
    fields = DALSTrainingArguments.__dataclass_fields__
    for name in TUNABLE_HYPERPARAMETERS:
        value_type = next(t for t in typing.get_args(hints[name]) if t is not type(None))
        parser.add_argument(f"--{name}", type=value_type, help=fields[name].metadata["help"])
    parser.add_argument(
        "--run",
        metavar="OUTPUT_DIR",
        help="Shade the DALS phases logged by this finished run (its trainer_state.json) instead of assumed ones.",
    )
    parser.add_argument(
        "--assumed_phase_bounds",
        type=float,
        nargs=2,
        default=(1 / 3, 2 / 3),
        metavar=("EXPLOIT", "REFINE"),
        help="Fractions of the steps at which the assumed DALS phase sequence enters phase 1 and phase 2 "
        "(default: 0.333 0.667). DALS picks the phase from the loss, so no schedule predicts it.",
    )
    parser.add_argument("--out", default="lr_schedule.png", help="PNG file to write (default: lr_schedule.png).")
    parser.set_defaults(handler=_command_plot_schedule)


def _add_plot_run_parser(commands) -> None:
    parser = commands.add_parser(
        "plot-run",
        help="Draw the logged learning rates, loss and DALS phase of a finished run from its trainer_state.json.",
    )
    parser.add_argument(
        "output_dir",
        metavar="OUTPUT_DIR",
        help="The run's output_dir (its trainer_state.json, or that of its latest checkpoint-* folder).",
    )
    parser.add_argument("--out", help="PNG file to write (default: OUTPUT_DIR/run_plot.png).")
    parser.set_defaults(handler=_command_plot_run)


def _add_model_loading_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--auto_class",
        choices=list(_AUTO_CLASSES),
        default="sequence-classification",
        help="Head to load the model with (default: sequence-classification).",
    )
    parser.add_argument("--num_labels", type=int, help="Number of labels of a new classification head.")
    parser.add_argument(
        "--from_config",
        action="store_true",
        help="Build the model from its config with random weights (for a folder that has only config.json).",
    )


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

    from .strategies import strategy_names

    groups = commands.add_parser(
        "groups",
        help="Print the depth-aware parameter groups of a model, to check the split before training.",
    )
    groups.add_argument(
        "model",
        nargs="?",
        metavar="MODEL_PATH_OR_NAME",
        help="A folder written by save_pretrained, or a Hub name (default: the packaged all-MiniLM-L6-v2).",
    )
    _add_model_loading_arguments(groups)
    groups.add_argument(
        "--lr_strategy",
        choices=strategy_names(),
        metavar="NAME",
        help="Show the groups and learning rates of this strategy (see `hf-dals strategies`). Default: "
        "depth groups as depth_param_groups builds them.",
    )
    groups.add_argument(
        "--lr", type=float, help="Peak learning rate (default: the strategy's, or 5e-05 without --lr_strategy)."
    )
    groups.add_argument(
        "--layer_lr_decay",
        type=float,
        help="Each depth trains at this times the lr of the depth above (default: the strategy's, or 1.0).",
    )
    groups.add_argument(
        "--weight_decay", type=float, help="Weight decay of weight matrices (default: the strategy's, or 0)."
    )
    groups.add_argument(
        "--layer_pattern",
        help=r"Regular expression whose first group captures the layer index, e.g. '\.blocks\.(\d+)\.'.",
    )
    groups.set_defaults(handler=_command_groups)

    _add_plot_schedule_parser(commands)
    _add_plot_run_parser(commands)
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
