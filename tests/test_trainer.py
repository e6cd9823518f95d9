"""DALSTrainer on a tiny BERT: exact Trainer parity, loss signal, logging and user optimizers."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny import RandomTokens, tiny_bert
from transformers import Trainer, TrainingArguments

from hf_dals import DALS, DALSTrainer, DALSTrainingArguments
from hf_dals.trainer import unwrap_optimizer

COMMON = dict(
    per_device_train_batch_size=8,
    max_steps=6,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
    seed=0,
    dataloader_pin_memory=False,
)


def dals_args(tmp_path, **kwargs) -> DALSTrainingArguments:
    return DALSTrainingArguments(output_dir=str(tmp_path), **{**COMMON, **kwargs})


def test_hf_default_is_exactly_plain_trainer(tmp_path):
    plain_model, dals_model = tiny_bert(num_layers=2), tiny_bert(num_layers=2)
    # Each trainer seeds the global RNGs when it is built, so build and train one after the other.
    plain = Trainer(
        model=plain_model,
        args=TrainingArguments(output_dir=str(tmp_path / "plain"), **COMMON),
        train_dataset=RandomTokens(),
    )
    plain.train()
    ours = DALSTrainer(
        model=dals_model,
        args=dals_args(tmp_path / "ours", lr_strategy="hf_default"),
        train_dataset=RandomTokens(),
    )
    ours.train()
    assert type(unwrap_optimizer(ours.optimizer)) is type(unwrap_optimizer(plain.optimizer))
    assert type(ours.lr_scheduler) is type(plain.lr_scheduler)
    for (name, a), (_, b) in zip(plain_model.named_parameters(), dals_model.named_parameters()):
        assert torch.equal(a, b), name
    plain_lrs = [h["learning_rate"] for h in plain.state.log_history if "loss" in h]
    ours_lrs = [h["learning_rate"] for h in ours.state.log_history if "loss" in h]
    assert plain_lrs == ours_lrs


def test_dals_logs_every_depth_and_the_phase(tmp_path):
    trainer = DALSTrainer(
        model=tiny_bert(num_layers=3),
        args=dals_args(tmp_path, lr_strategy="dals", max_steps=20),
        train_dataset=RandomTokens(size=160),
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 20
    expected = {"lr/embeddings", "lr/layer_0", "lr/layer_1", "lr/layer_2", "lr/head"}
    for entry in logs:
        assert expected <= set(entry)
        assert entry["dals_phase"] in (0, 1, 2)
        assert entry["learning_rate"] == entry["lr/embeddings"]
    # Warmup + cosine with 10% warmup: steps 0 and 1 warm up from lr 0, step 2 is the peak.
    assert [entry["lr/head"] for entry in logs[:3]] == pytest.approx([0.0, 2.5e-4, 5e-4])
    assert isinstance(unwrap_optimizer(trainer.optimizer), DALS)


class RecordingTrainer(DALSTrainer):
    """Records the micro-batch losses that Trainer returns and the losses DALS observes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.micro_losses: list[torch.Tensor] = []
        self.observed: list[torch.Tensor] = []

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        original = optimizer.observe_loss

        def record(loss):
            self.observed.append(loss.detach().clone())
            original(loss)

        optimizer.observe_loss = record
        return optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.micro_losses.append(loss.detach().clone())
        return loss


def test_loss_observed_once_per_step(tmp_path):
    trainer = RecordingTrainer(
        model=tiny_bert(num_layers=2),
        args=dals_args(tmp_path, lr_strategy="dals", gradient_accumulation_steps=3, max_steps=4),
        train_dataset=RandomTokens(size=96),
    )
    trainer.train()
    assert len(trainer.micro_losses) == 12
    assert len(trainer.observed) == 4
    for step, observed in enumerate(trainer.observed):
        micro = trainer.micro_losses[3 * step : 3 * step + 3]
        assert observed.item() == pytest.approx(float(sum(m.float() for m in micro)), rel=1e-6)
    # Each micro-batch loss was divided by 3, so the observed value is a mean, not a sum.
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert [round(o.item(), 4) for o in trainer.observed] == [round(x, 4) for x in logged]


def test_stlr_depth_ratio_is_2_6(tmp_path):
    trainer = DALSTrainer(
        model=tiny_bert(num_layers=4),
        args=dals_args(tmp_path, lr_strategy="stlr_discriminative", max_steps=12),
        train_dataset=RandomTokens(size=96),
    )
    trainer.train()
    names = ["lr/embeddings", "lr/layer_0", "lr/layer_1", "lr/layer_2", "lr/layer_3", "lr/head"]
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 12
    for entry in logs:
        for lower, upper in zip(names, names[1:]):
            assert entry[upper] / entry[lower] == pytest.approx(2.6, rel=1e-12)
    peak = max(entry["lr/head"] for entry in logs)
    assert peak == pytest.approx(5e-4)


def test_user_optimizer_wins_and_schedule_falls_back(tmp_path, caplog):
    model = tiny_bert(num_layers=2)
    mine = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = DALSTrainer(
        model=model,
        args=dals_args(tmp_path, lr_strategy="dals", max_steps=2),
        train_dataset=RandomTokens(),
        optimizers=(mine, None),
    )
    with caplog.at_level(logging.WARNING, logger="hf_dals.trainer"):
        trainer.train()
    assert unwrap_optimizer(trainer.optimizer) is mine
    assert "lr_strategy='dals' is not applied" in caplog.text


def test_plain_training_arguments_are_rejected(tmp_path):
    with pytest.raises(TypeError, match="DALSTrainer needs DALSTrainingArguments, got TrainingArguments"):
        DALSTrainer(model=tiny_bert(num_layers=2), args=TrainingArguments(output_dir=str(tmp_path), **COMMON))


def test_every_trainable_parameter_is_in_the_optimizer(tmp_path):
    model = tiny_bert(num_layers=2)
    for param in model.bert.embeddings.parameters():
        param.requires_grad_(False)
    trainer = DALSTrainer(
        model=model,
        args=dals_args(tmp_path, lr_strategy="dals", max_steps=1),
        train_dataset=RandomTokens(),
    )
    trainer.train()
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}


def test_dals_logs_trust_ratio_per_depth(tmp_path):
    trainer = DALSTrainer(
        model=tiny_bert(num_layers=2),
        args=dals_args(tmp_path, lr_strategy="dals", max_steps=4, logging_steps=2),
        train_dataset=RandomTokens(),
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    optimizer = unwrap_optimizer(trainer.optimizer)
    head_groups = [i for i, g in enumerate(optimizer.param_groups) if g["depth_name"] == "head"]
    counts = [len(optimizer.param_groups[i]["params"]) for i in head_groups]
    means = [float(optimizer.last_trust_ratio_mean[i]) for i in head_groups]
    expected = sum(c * m for c, m in zip(counts, means)) / sum(counts)
    assert len(logs) == 2
    assert logs[-1]["trust_ratio/head"] == pytest.approx(expected, rel=1e-6)
    assert {"trust_ratio/embeddings", "trust_ratio/layer_0", "trust_ratio/layer_1"} <= set(logs[0])
    # With the default trust clip (0.2, 5.0) every mean lies inside the clip.
    assert all(0.2 <= value <= 5.0 for entry in logs for key, value in entry.items() if key.startswith("trust_ratio/"))


def test_non_dals_logs_no_trust_ratio(tmp_path):
    trainer = DALSTrainer(
        model=tiny_bert(num_layers=2),
        args=dals_args(tmp_path, lr_strategy="llrd_adamw", max_steps=2),
        train_dataset=RandomTokens(),
    )
    trainer.train()
    logged_keys = {key for h in trainer.state.log_history for key in h}
    assert "lr/head" in logged_keys
    assert not [key for key in logged_keys if key.startswith("trust_ratio/")]


def test_tensorboard_receives_depth_lr_phase_and_trust_ratio(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = DALSTrainer(
        model=tiny_bert(num_layers=2),
        args=dals_args(tmp_path, lr_strategy="dals", max_steps=6, logging_steps=2, report_to=["tensorboard"]),
        train_dataset=RandomTokens(),
    )
    trainer.train()
    event_files = list(tmp_path.glob("runs/*/events.out.tfevents.*"))
    assert len(event_files) == 1
    events = EventAccumulator(str(event_files[0].parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    depths = ("embeddings", "layer_0", "layer_1", "head")
    assert {f"train/lr/{depth}" for depth in depths} <= tags
    assert {f"train/trust_ratio/{depth}" for depth in depths} <= tags
    assert "train/dals_phase" in tags
    # One value every logging_steps.
    assert [event.step for event in events.Scalars("train/lr/head")] == [2, 4, 6]
    assert [event.step for event in events.Scalars("train/trust_ratio/layer_1")] == [2, 4, 6]
    logged = [h["lr/head"] for h in trainer.state.log_history if "loss" in h]
    assert [event.value for event in events.Scalars("train/lr/head")] == pytest.approx(logged, rel=1e-6)
