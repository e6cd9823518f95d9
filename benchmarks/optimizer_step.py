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
import multiprocessing
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
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


def optimizer_candidates() -> dict[str, Callable[[nn.Module, list[nn.Parameter]], object]]:
    """Return the optimizers to time, by table name: each builds from the model and its parameters."""
    from hf_dals.optim import LARS, Lamb

    def groups(model: nn.Module) -> list[dict]:
        try:
            return depth_param_groups(model, lr=1e-3, weight_decay=1e-4)
        except ValueError:
            return decay_param_groups(model, lr=1e-3, weight_decay=1e-4)

    return {
        "torch AdamW (foreach)": lambda model, params: torch.optim.AdamW(params, lr=1e-3, foreach=True),
        "torch AdamW (fused)": lambda model, params: torch.optim.AdamW(params, lr=1e-3, fused=True),
        "DALS (foreach)": lambda model, params: DALS(groups(model), lr=1e-3, foreach=True),
        "DALS (per-tensor)": lambda model, params: DALS(groups(model), lr=1e-3, foreach=False),
        "torch SGD momentum (foreach)": lambda model, params: torch.optim.SGD(params, lr=1e-3, momentum=0.9, foreach=True),
        "LARS (hf_dals.optim)": lambda model, params: LARS(params, lr=1e-3, momentum=0.9, trust_coefficient=0.02),
        "LAMB (hf_dals.optim)": lambda model, params: Lamb(params, lr=1e-3),
    }


STRAIGHTFORWARD = "DALS, straightforward loop"
MODELS: dict[str, Callable[[], nn.Module]] = {"bert_base": lambda: bert_base(), "many_small": lambda: ManySmallTensors()}


def measure_optimizer(model_name: str, name: str, *, warmup: int, steps: int, device_name: str) -> dict:
    """Time one optimizer on a fresh model with fixed random gradients; runs in its own process."""
    device = torch.device(device_name)
    model = MODELS[model_name]().to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator(device="cpu").manual_seed(0)
    for param in params:
        param.grad = (torch.randn(param.shape, generator=generator) * 1e-3).to(device)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    if name == STRAIGHTFORWARD:
        state: dict = {}
        seconds = time_steps(lambda: straightforward_dals_step(params, state, lr=1e-3), warmup=warmup, steps=steps, device=device)
    else:
        optimizer = optimizer_candidates()[name](model, params)
        seconds = time_steps(optimizer.step, warmup=warmup, steps=steps, device=device)
        state = optimizer.state
    return {"name": name, "seconds": seconds, "state_bytes": state_bytes(state), "param_bytes": param_bytes}


def in_fresh_process(function: Callable, *args, **kwargs):
    """Run ``function`` in a new Python process and return its result.

    Each measurement gets its own process because the memory allocator keeps state between
    optimizers: in one process, the step time of an optimizer changed by up to 20% with the
    optimizer timed before it (measured on the CPU with the BERT-base set).
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args, **kwargs).result()


def optimizer_rows(model_name: str, *, warmup: int, steps: int, repeats: int, device: torch.device) -> list[dict]:
    """Time every optimizer ``repeats`` times, each in a fresh process, in round-robin order."""
    names = [name for name in optimizer_candidates() if device.type == "cuda" or "fused" not in name]
    names.append(STRAIGHTFORWARD)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            runs[name].append(
                in_fresh_process(measure_optimizer, model_name, name, warmup=warmup, steps=steps, device_name=str(device))
            )
    rows = []
    for name, results in runs.items():
        seconds = [result["seconds"] for result in results]
        rows.append({**results[0], "seconds": statistics.median(seconds), "low": min(seconds), "high": max(seconds)})
    return rows


def measure_trainer_step(name: str, *, steps: int, device_name: str) -> dict:
    """Return the median time of a whole training step (forward, backward, optimizer, schedule) on MiniLM.

    ``name`` is one of ``TRAINERS``; this runs in its own process.
    """
    device = torch.device(device_name)
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
    if name == TRAINERS[0]:
        trainer_cls, args = Trainer, TrainingArguments(**common)
    else:
        trainer_cls, args = DALSTrainer, DALSTrainingArguments(lr_strategy="dals", **common)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=6)
    timer = StepTimer()
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, callbacks=[timer])
    trainer.train()
    return {"name": name, "seconds": statistics.median(timer.durations[5:])}


TRAINERS = ("Trainer, default AdamW (fused)", "DALSTrainer, lr_strategy=dals")


def trainer_step_rows(*, steps: int, repeats: int, device: torch.device) -> list[dict]:
    """Time both trainers ``repeats`` times, each in a fresh process, in round-robin order."""
    runs: dict[str, list[float]] = {name: [] for name in TRAINERS}
    for _ in range(repeats):
        for name in TRAINERS:
            runs[name].append(in_fresh_process(measure_trainer_step, name, steps=steps, device_name=str(device))["seconds"])
    return [
        {"name": name, "seconds": statistics.median(seconds), "low": min(seconds), "high": max(seconds)}
        for name, seconds in runs.items()
    ]


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
        "| optimizer | median step (ms) | range over processes (ms) | ratio to AdamW (foreach) | state (MB) | state / parameter bytes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {1000 * row['seconds']:.2f} | {1000 * row['low']:.2f} to {1000 * row['high']:.2f} | "
            f"{row['seconds'] / reference:.2f} | "
            f"{row['state_bytes'] / 2**20:.1f} | {row['state_bytes'] / row['param_bytes']:.3f} |"
        )
    straightforward = next(row["seconds"] for row in rows if row["name"] == STRAIGHTFORWARD)
    fast = next(row["seconds"] for row in rows if row["name"] == "DALS (foreach)")
    lines += ["", f"DALS (foreach) is {straightforward / fast:.1f}x faster than the straightforward loop.", ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps before timing.")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per process; their median is the process's time.")
    parser.add_argument(
        "--repeats", type=int, default=3, help="Fresh processes per optimizer; the table shows the median over them and the range."
    )
    parser.add_argument("--skip_trainer", action="store_true", help="Do not time the whole training step on MiniLM.")
    parser.add_argument("--output", help="Markdown file to append the tables to (they are printed too).")
    options = parser.parse_args(argv)
    device = torch.device(options.device)

    command = shlex.join(["python", "benchmarks/optimizer_step.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [f"## Optimizer step, {options.device}", "", f"Command: `{command}`", "", machine_line(device), ""]
    for title, model_name in (("BERT-base-sized model", "bert_base"), ("1,000 small tensors", "many_small")):
        model = MODELS[model_name]()
        count = sum(1 for _ in model.parameters())
        size = sum(p.numel() for p in model.parameters())
        del model
        rows = optimizer_rows(model_name, warmup=options.warmup, steps=options.steps, repeats=options.repeats, device=device)
        lines += optimizer_table(f"{title}: {size / 1e6:.1f}M parameters in {count} tensors", rows)
    if not options.skip_trainer:
        rows = trainer_step_rows(steps=options.steps, repeats=options.repeats, device=device)
        lines += [
            "### One training step on all-MiniLM-L6-v2 (batch 32, 32 tokens)",
            "",
            "| trainer | median step (ms) | range over processes (ms) | ratio to Trainer |",
            "|---|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row['name']} | {1000 * row['seconds']:.1f} | {1000 * row['low']:.1f} to {1000 * row['high']:.1f} | "
                f"{row['seconds'] / rows[0]['seconds']:.3f} |"
            )
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if options.output:
        with open(options.output, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
