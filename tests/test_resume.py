"""Exact resume from Trainer checkpoints for every registered strategy, and the strategy check."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from tiny import RandomTokens, tiny_bert
from transformers import TrainerCallback

from hf_dals import DALSTrainer, DALSTrainingArguments, list_strategies
from hf_dals.checkpointing import STRATEGY_RECORD_NAME
from hf_dals.trainer import unwrap_optimizer

NAMES = [s.name for s in list_strategies()]
TOTAL_STEPS = 6
# 32 examples in batches of 8 are 4 steps per epoch: the checkpoint at step 3 sits inside the first
# epoch, and the resumed run crosses an epoch boundary (ULMFiT thaws one depth per epoch).
DATASET_SIZE = 32


class StopAt(TrainerCallback):
    """Stop training after ``step`` optimizer steps, as if the job had been interrupted."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def make_trainer(name: str, output_dir, callbacks=(), **kwargs) -> DALSTrainer:
    settings = dict(
        per_device_train_batch_size=8,
        max_steps=TOTAL_STEPS,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_pin_memory=False,
    )
    args = DALSTrainingArguments(output_dir=str(output_dir), lr_strategy=name, **{**settings, **kwargs})
    return DALSTrainer(
        model=tiny_bert(num_layers=2, dropout=0.0),
        args=args,
        train_dataset=RandomTokens(size=DATASET_SIZE),
        callbacks=list(callbacks),
    )


def step_logs(trainer: DALSTrainer) -> list[dict]:
    """Return, per logged step, the loss, the learning rates and the DALS phase."""
    keys = ("step", "loss", "learning_rate", "dals_phase")
    logs = []
    for entry in trainer.state.log_history:
        if "loss" not in entry:
            continue
        logs.append({key: value for key, value in entry.items() if key in keys or key.startswith("lr/")})
    return logs


def state_differences(a, b, path: str = "optimizer") -> list[str]:
    """Return the paths at which two (nested) state dicts differ; tensors must be bitwise equal."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path} keys {sorted(map(str, set(a) ^ set(b)))}"]
        return [diff for key in a for diff in state_differences(a[key], b[key], f"{path}[{key!r}]")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path} length {len(a)} != {len(b)}"]
        return [diff for index, (x, y) in enumerate(zip(a, b)) for diff in state_differences(x, y, f"{path}[{index}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def count_tensors(state) -> int:
    if isinstance(state, torch.Tensor):
        return 1
    if isinstance(state, dict):
        return sum(count_tensors(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(count_tensors(value) for value in state)
    return 0


@pytest.mark.parametrize("name", NAMES)
def test_resume_continues_bitwise(name, tmp_path):
    straight = make_trainer(name, tmp_path / "straight", save_strategy="no")
    straight.train()

    half = TOTAL_STEPS // 2
    interrupted = make_trainer(
        name, tmp_path / "resumed", callbacks=[StopAt(half)], save_strategy="steps", save_steps=half
    )
    interrupted.train()
    checkpoint = tmp_path / "resumed" / f"checkpoint-{half}"
    assert interrupted.state.global_step == half
    assert (checkpoint / STRATEGY_RECORD_NAME).is_file()

    resumed = make_trainer(name, tmp_path / "resumed", save_strategy="no")
    resumed.train(resume_from_checkpoint=str(checkpoint))

    assert resumed.state.global_step == TOTAL_STEPS
    for (parameter_name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), parameter_name

    straight_state = unwrap_optimizer(straight.optimizer).state_dict()
    resumed_state = unwrap_optimizer(resumed.optimizer).state_dict()
    assert count_tensors(straight_state) > 0
    assert state_differences(straight_state, resumed_state) == []

    assert resumed.lr_scheduler.last_epoch == straight.lr_scheduler.last_epoch
    assert resumed.lr_scheduler.get_last_lr() == straight.lr_scheduler.get_last_lr()

    straight_logs, resumed_logs = step_logs(straight), step_logs(resumed)
    assert len(straight_logs) == TOTAL_STEPS
    assert [entry["step"] for entry in resumed_logs] == list(range(1, TOTAL_STEPS + 1))
    for expected, actual in zip(straight_logs, resumed_logs):
        learning_rates = {key: value for key, value in expected.items() if key.startswith(("lr/", "learning_rate"))}
        assert {key: actual.get(key) for key in learning_rates} == learning_rates, expected["step"]
        assert actual.get("dals_phase") == expected.get("dals_phase"), expected["step"]
        assert actual["loss"] == expected["loss"], expected["step"]


def test_dals_state_holds_phase_and_loss_ema(tmp_path):
    trainer = make_trainer("dals", tmp_path, save_strategy="no", max_steps=2)
    trainer.train()
    anchor_state = next(iter(unwrap_optimizer(trainer.optimizer).state_dict()["state"].values()))
    assert {"phase", "loss_ema", "loss_initialized", "momentum_buffer", "slow_grad"} <= set(anchor_state)


def test_resume_with_other_strategy_raises(tmp_path):
    trainer = make_trainer("dals", tmp_path, save_strategy="steps", save_steps=2, max_steps=2)
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    assert json.loads((checkpoint / STRATEGY_RECORD_NAME).read_text())["lr_strategy"] == "dals"

    other = make_trainer("adamw", tmp_path, save_strategy="no", max_steps=4)
    message = r"trained with lr_strategy='dals', but this run has lr_strategy='adamw'.*Resume with lr_strategy='dals'"
    with pytest.raises(ValueError, match=message):
        other.train(resume_from_checkpoint=str(checkpoint))
    with pytest.raises(ValueError, match=message):
        other.train(resume_from_checkpoint=True)


def test_resume_without_record_warns(tmp_path, caplog):
    trainer = make_trainer("adamw", tmp_path, save_strategy="steps", save_steps=2, max_steps=2)
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    (checkpoint / STRATEGY_RECORD_NAME).unlink()

    resumed = make_trainer("adamw", tmp_path, save_strategy="no", max_steps=3)
    with caplog.at_level(logging.WARNING, logger="hf_dals.checkpointing"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert f"has no {STRATEGY_RECORD_NAME}" in caplog.text
    assert resumed.state.global_step == 3
