"""Time one optimizer step of DALS and of the usual optimizers, side by side, on the same tensors.

Two parameter sets: a BERT-base-sized model (BertForSequenceClassification with the default
config: about 110M parameters in about 200 tensors, random weights, no download) and a model of
1,000 small tensors. For each optimizer the script reports the median step time over the timed
steps, the optimizer state in bytes, and the ratio to torch's AdamW (foreach). It also times a
whole DALSTrainer training step against plain Trainer (its default AdamW) on the packaged MiniLM.

    python benchmarks/optimizer_step.py --output docs/performance.md

Gradients are fixed random tensors, so only the optimizer's own work is timed. On a GPU the
steps are timed with CUDA events; on the CPU with ``time.perf_counter``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date

import torch
from torch import nn

from hf_dals import DALS, depth_param_groups
from hf_dals.grouping import decay_param_groups


def straightforward_dals_step(params: list[nn.Parameter], state: dict, *, lr: float, depth_ratio: float = 0.5) -> None:
    """DALS written the direct way: a Python loop, Python branches and ``.item()`` per tensor.

    This is the baseline the multi-tensor path is measured against; it follows the same update
    rule as ``hf_dals.DALS`` in phase 1 (filter weight 0.6, momentum 0.9, weight decay 1e-4).
    """
    alpha, momentum, weight_decay = 0.6, 0.9, 1e-4
    raw, slow = 0.3 + 0.4 * depth_ratio, 0.7 - 0.4 * depth_ratio
    with torch.no_grad():
        for param in params:
            if param.grad is None:
                continue
            entry = state.setdefault(param, {})
            if "slow_grad" not in entry:
                entry["slow_grad"] = torch.zeros_like(param)
                entry["momentum_buffer"] = torch.zeros_like(param)
            grad = param.grad
            entry["slow_grad"].mul_(alpha).add_(grad, alpha=1 - alpha)
            blended = grad * raw + entry["slow_grad"] * slow + weight_decay * param
            param_norm = param.norm().item()
            update_norm = blended.norm().item()
            ratio = 1.0
            if param_norm > 0 and update_norm > 0:
                ratio = min(max(0.02 * param_norm / update_norm, 0.2), 5.0)
            entry["momentum_buffer"].mul_(momentum).add_(blended)
            param.add_(entry["momentum_buffer"], alpha=-lr * ratio)


class ManySmallTensors(nn.Module):
    """500 linear layers of 32 x 32: 1,000 parameter tensors, about 0.5M parameters."""

    def __init__(self, layers: int = 500, width: int = 32) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))


def bert_base() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_labels=6))


def state_bytes(state: dict) -> int:
    total = 0
    for entry in state.values():
        for value in entry.values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
    return total


def time_steps(step: Callable[[], None], *, warmup: int, steps: int, device: torch.device) -> float:
    """Return the median duration of ``steps`` calls of ``step`` after ``warmup`` untimed calls, in seconds."""
    for _ in range(warmup):
        step()
    durations = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            durations.append(start.elapsed_time(end) / 1000)
        else:
            started = time.perf_counter()
            step()
            durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def optimizer_rows(model: nn.Module, *, warmup: int, steps: int, device: torch.device) -> list[dict]:
    from pytorch_optimizer import LARS, Lamb

    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator(device="cpu").manual_seed(0)
    for param in params:
        param.grad = (torch.randn(param.shape, generator=generator) * 1e-3).to(device)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    original = [p.detach().clone() for p in params]

    def restore() -> None:
        with torch.no_grad():
            for param, value in zip(params, original):
                param.copy_(value)

    def groups() -> list[dict]:
        try:
            return depth_param_groups(model, lr=1e-3, weight_decay=1e-4)
        except ValueError:
            return decay_param_groups(model, lr=1e-3, weight_decay=1e-4)

    candidates: list[tuple[str, Callable[[], object]]] = [
        ("torch AdamW (foreach)", lambda: torch.optim.AdamW(params, lr=1e-3, foreach=True)),
        ("DALS (foreach)", lambda: DALS(groups(), lr=1e-3, foreach=True)),
        ("DALS (per-tensor)", lambda: DALS(groups(), lr=1e-3, foreach=False)),
        ("torch SGD momentum (foreach)", lambda: torch.optim.SGD(params, lr=1e-3, momentum=0.9, foreach=True)),
        ("LARS (pytorch_optimizer)", lambda: LARS(params, lr=1e-3, momentum=0.9, trust_coefficient=0.02)),
        ("LAMB (pytorch_optimizer)", lambda: Lamb(params, lr=1e-3)),
    ]
    if device.type == "cuda":
        candidates.insert(1, ("torch AdamW (fused)", lambda: torch.optim.AdamW(params, lr=1e-3, fused=True)))
    rows = []
    for name, build in candidates:
        restore()
        optimizer = build()
        seconds = time_steps(optimizer.step, warmup=warmup, steps=steps, device=device)
        rows.append({"name": name, "seconds": seconds, "state_bytes": state_bytes(optimizer.state), "param_bytes": param_bytes})
        del optimizer
    restore()
    baseline_state: dict = {}
    seconds = time_steps(
        lambda: straightforward_dals_step(params, baseline_state, lr=1e-3), warmup=warmup, steps=steps, device=device
    )
    rows.append(
        {"name": "DALS, straightforward loop", "seconds": seconds, "state_bytes": state_bytes(baseline_state), "param_bytes": param_bytes}
    )
    return rows


def trainer_step_rows(*, steps: int, device: torch.device) -> list[dict]:
    """Median time of a whole training step (forward, backward, optimizer, schedule) on MiniLM."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from hf_dals import DALSTrainer, DALSTrainingArguments
    from hf_dals.finetune import packaged_model_path
    from hf_dals.tasks import PACKAGED_TREC_DIR, load_trec

    path = packaged_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    questions = load_trec(PACKAGED_TREC_DIR)["train"].select(range(32))
    batch = tokenizer(list(questions["text"]), padding="max_length", max_length=32, truncation=True)
    examples = [
        {"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i], "labels": questions["label"][i]}
        for i in range(32)
    ]
    dataset = [dict(example) for _ in range(steps + 5) for example in examples]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.durations: list[float] = []
            self._started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            self._started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.durations.append(time.perf_counter() - self._started)

    common = dict(
        output_dir="/tmp/hf-dals-step-benchmark",
        per_device_train_batch_size=32,
        max_steps=steps + 5,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=device.type == "cuda",
        use_cpu=device.type == "cpu",
        seed=0,
    )
    rows = []
    for name, trainer_cls, args in (
        ("Trainer, default AdamW (fused)", Trainer, TrainingArguments(**common)),
        ("DALSTrainer, lr_strategy=dals", DALSTrainer, DALSTrainingArguments(lr_strategy="dals", **common)),
    ):
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=6)
        timer = StepTimer()
        trainer = trainer_cls(model=model, args=args, train_dataset=dataset, callbacks=[timer])
        trainer.train()
        rows.append({"name": name, "seconds": statistics.median(timer.durations[5:])})
    return rows


def machine_line(device: torch.device) -> str:
    import transformers

    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    return (
        f"Machine: {where}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; {date.today().isoformat()}."
    )


def optimizer_table(title: str, rows: list[dict]) -> list[str]:
    reference = next(row["seconds"] for row in rows if row["name"] == "torch AdamW (foreach)")
    lines = [
        f"### {title}",
        "",
        "| optimizer | median step (ms) | ratio to AdamW (foreach) | state (MB) | state / parameter bytes |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {1000 * row['seconds']:.2f} | {row['seconds'] / reference:.2f} | "
            f"{row['state_bytes'] / 2**20:.1f} | {row['state_bytes'] / row['param_bytes']:.3f} |"
        )
    straightforward = next(row["seconds"] for row in rows if row["name"] == "DALS, straightforward loop")
    fast = next(row["seconds"] for row in rows if row["name"] == "DALS (foreach)")
    lines += ["", f"DALS (foreach) is {straightforward / fast:.1f}x faster than the straightforward loop.", ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps before timing.")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps; the median is reported.")
    parser.add_argument("--skip_trainer", action="store_true", help="Do not time the whole training step on MiniLM.")
    parser.add_argument("--output", help="Markdown file to write the tables to (they are printed too).")
    options = parser.parse_args(argv)
    device = torch.device(options.device)

    lines = [f"## Optimizer step, {options.device}", "", machine_line(device), ""]
    for title, model in (("BERT-base-sized model", bert_base()), ("1,000 small tensors", ManySmallTensors())):
        count = sum(1 for _ in model.parameters())
        size = sum(p.numel() for p in model.parameters())
        rows = optimizer_rows(model, warmup=options.warmup, steps=options.steps, device=device)
        lines += optimizer_table(f"{title}: {size / 1e6:.1f}M parameters in {count} tensors", rows)
        del model
    if not options.skip_trainer:
        rows = trainer_step_rows(steps=options.steps, device=device)
        lines += [
            "### One training step on all-MiniLM-L6-v2 (batch 32, 32 tokens)",
            "",
            "| trainer | median step (ms) | ratio to Trainer |",
            "|---|---:|---:|",
        ]
        for row in rows:
            lines.append(f"| {row['name']} | {1000 * row['seconds']:.1f} | {row['seconds'] / rows[0]['seconds']:.3f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if options.output:
        with open(options.output, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
