"""The "Learning-rate strategy" section that ``DALSTrainer`` adds to Trainer's model card.

``Trainer.create_model_card`` writes ``README.md`` with a YAML metadata header and a list of
hyperparameters in which ``optimizer`` and ``lr_scheduler_type`` describe Trainer's own choice.
For a strategy that builds its own optimizer and schedule those two entries are wrong, so
:func:`add_strategy_section` points them to the new section. The section states the strategy,
its resolved hyperparameters, the parameter groups of the optimizer and the final metrics.
:func:`update_model_card` adds the section to the written card.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .strategies import GENERATIONS, Strategy

__all__ = [
    "DALS_PAPER",
    "SECTION_TITLE",
    "add_strategy_section",
    "drop_unknown_dataset_fields",
    "final_metrics",
    "strategy_section",
    "update_model_card",
]

SECTION_TITLE = "## Learning-rate strategy"
DALS_PAPER = "arXiv:2604.27295"
_DALS_PAPER_URL = "https://arxiv.org/abs/2604.27295"

# Keys of evaluate() output that describe the run, not the model.
_TIMING_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second", "_model_preparation_time")
_SPLITS = (("eval", "validation"), ("test", "test"))


def _format_number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def final_metrics(log_history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Return the last logged metrics of the validation and test splits.

    ``Trainer.evaluate`` logs its metrics with the prefix it was given. The last entry with an
    ``eval_`` key is the final validation result, and the last one with a ``test_`` key is the
    test result. Timing keys are left out. Returns ``{"validation": {"accuracy": ...}, "test": {...}}``
    with only the splits that were evaluated.
    """
    found: dict[str, dict[str, float]] = {}
    for prefix, split in _SPLITS:
        for entry in reversed(log_history):
            values = {
                key[len(prefix) + 1 :]: value
                for key, value in entry.items()
                if key.startswith(f"{prefix}_") and not key.endswith(_TIMING_SUFFIXES)
            }
            if values:
                found[split] = values
                break
    return found


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, right_aligned: Sequence[int] = ()) -> str:
    alignment = ["---:" if index in right_aligned else "---" for index in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(alignment) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _group_rows(param_groups: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for index, group in enumerate(param_groups):
        # LambdaLR keeps each group's base learning rate in "initial_lr"; the schedules of hf-dals
        # and of Trainer only scale it down, so it is the peak.
        peak = group.get("initial_lr", group.get("lr"))
        rows.append(
            [
                f"`{group.get('name', f'group_{index}')}`",
                str(group.get("depth", "-")),
                f"{sum(p.numel() for p in group['params']):,}",
                _format_number(float(peak)),
                _format_number(float(group.get("weight_decay", 0.0))),
            ]
        )
    return rows


def strategy_section(
    strategy: Strategy,
    *,
    training_regime: str,
    hyperparameters: Mapping[str, Any],
    optimizer_name: str | None,
    param_groups: Sequence[Mapping[str, Any]] | None,
    metrics: Mapping[str, Mapping[str, float]],
) -> str:
    """Return the Markdown of the "Learning-rate strategy" section, ending with a blank line.

    ``param_groups`` is ``None`` when the optimizer has not been built yet. The section then
    states that the groups are unknown in place of the group table.
    """
    lines = [
        SECTION_TITLE,
        "",
        f"Trained with `hf_dals.DALSTrainer` and `lr_strategy=\"{strategy.name}\"`.",
        "",
        f"- description: {strategy.description}",
        f"- generation: {strategy.generation} ({GENERATIONS[strategy.generation]}), in the taxonomy of "
        f"[{DALS_PAPER}]({_DALS_PAPER_URL})",
        f"- training regime: `{training_regime}`",
    ]
    if optimizer_name is not None:
        lines.append(f"- optimizer: `{optimizer_name}`")
    if strategy.implementation:
        lines.append(f"- implementation: {strategy.implementation}")
    if strategy.needs_loss:
        lines += [
            "",
            "DALS (Discriminative Adaptive Layer Scaling) is described in "
            f"[{DALS_PAPER}]({_DALS_PAPER_URL}). It filters each gradient with a Grokfast EMA whose "
            "weight depends on a training phase read from the loss and on the depth, scales each "
            "tensor's step by a clipped trust ratio, and follows the schedule below.",
        ]

    lines += ["", "### Strategy hyperparameters", ""]
    rows = [[f"`{name}`", _format_number(value)] for name, value in hyperparameters.items()]
    lines.append(_markdown_table(("hyperparameter", "value"), rows, right_aligned=(1,)))

    lines += ["", "### Parameter groups", ""]
    if param_groups is None:
        lines.append("The optimizer had not been created when this card was written, so its groups are unknown.")
    else:
        lines.append(
            "One row per optimizer parameter group. Depth 0 is the embeddings and the highest depth "
            "the head; the peak learning rate is the group's rate before the schedule scales it."
        )
        lines.append("")
        lines.append(
            _markdown_table(
                ("group", "depth", "#params", "peak lr", "weight decay"),
                _group_rows(param_groups),
                right_aligned=(1, 2, 3, 4),
            )
        )

    lines += ["", "### Final metrics", ""]
    if metrics:
        rows = [
            [split, f"`{name}`", _format_number(value)]
            for split, values in metrics.items()
            for name, value in values.items()
        ]
        lines.append(
            "The last evaluation of each split: with checkpoint selection, the validation row is the "
            "selected checkpoint."
        )
        lines.append("")
        lines.append(_markdown_table(("split", "metric", "value"), rows, right_aligned=(2,)))
    else:
        lines.append("No evaluation was logged before this card was written.")
    lines.append("")
    return "\n".join(lines) + "\n"


# Trainer's card lists "- optimizer: Use <optim> ..." (one line, or two when it adds the
# optimizer arguments) and "- lr_scheduler_type: <name>". The pattern matches either entry up to
# the next list item or the end of the list.
_TRAINER_ENTRY = r"^- {key}: .*?(?=^- |^\s*$|\Z)"


def drop_unknown_dataset_fields(metadata: dict[str, Any]) -> dict[str, Any]:
    """Remove the dataset fields of ``model-index`` results that Trainer filled with ``None``.

    For a ``datasets.Dataset`` built in memory, Trainer's card states ``config: null`` and
    ``split: None`` (the string). Neither carries information, so both are removed.
    """
    for model in metadata.get("model-index") or []:
        for result in model.get("results") or []:
            dataset = result.get("dataset")
            if isinstance(dataset, dict):
                result["dataset"] = {key: value for key, value in dataset.items() if value not in (None, "None")}
    return metadata


def update_model_card(card_path: str | Path, section: str, *, strategy: Strategy) -> None:
    """Add ``section`` to the card Trainer wrote at ``card_path`` and tidy its metadata."""
    from huggingface_hub import metadata_load, metadata_save

    card_path = Path(card_path)
    card_text = card_path.read_text(encoding="utf-8")
    card_path.write_text(add_strategy_section(card_text, section, strategy=strategy), encoding="utf-8")
    metadata = metadata_load(card_path)
    if metadata is not None:
        metadata_save(card_path, drop_unknown_dataset_fields(metadata))


def add_strategy_section(card_text: str, section: str, *, strategy: Strategy) -> str:
    """Insert ``section`` into Trainer's card text before "## Training procedure".

    When the strategy builds its own optimizer and schedule, Trainer's ``optimizer`` and
    ``lr_scheduler_type`` entries are replaced by a pointer to the section. A card without a
    "## Training procedure" heading gets the section at the end.
    """
    if not strategy.delegates_to_trainer:
        pointer = f"set by `lr_strategy=\"{strategy.name}\"` (see Learning-rate strategy)\n"
        for key in ("optimizer", "lr_scheduler_type"):
            pattern = re.compile(_TRAINER_ENTRY.format(key=key), flags=re.MULTILINE | re.DOTALL)
            card_text = pattern.sub(f"- {key}: {pointer}", card_text, count=1)

    heading = re.search(r"^## Training procedure$", card_text, flags=re.MULTILINE)
    if heading is None:
        return card_text.rstrip("\n") + "\n\n" + section
    return card_text[: heading.start()] + section + "\n" + card_text[heading.start() :]
