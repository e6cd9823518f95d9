"""DALSTrainingArguments: strategy defaults, overrides and the errors bad input raises."""

from __future__ import annotations

import pytest
from tiny import tiny_bert
from transformers import HfArgumentParser

from hf_dals import DALSTrainingArguments, get_strategy


def make(tmp_path, **kwargs) -> DALSTrainingArguments:
    return DALSTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)


@pytest.mark.parametrize(
    ("strategy", "regime", "learning_rate", "weight_decay"),
    [
        ("hf_default", "finetune", 5e-5, 0.0),
        ("dals", "finetune", 5e-4, 0.01),
        ("dals", "scratch", 0.03, 5e-4),
        ("dals_fast", "scratch", 0.05, 5e-4),
        ("stlr_discriminative", "finetune", 5e-4, 0.01),
    ],
)
def test_strategy_defaults_fill_learning_rate_and_weight_decay(tmp_path, strategy, regime, learning_rate, weight_decay):
    args = make(tmp_path, lr_strategy=strategy, training_regime=regime)
    assert args.learning_rate == learning_rate
    assert args.weight_decay == weight_decay


def test_explicit_values_override_defaults(tmp_path):
    args = make(tmp_path, lr_strategy="dals", learning_rate=0.1, weight_decay=0.0, grokfast_alpha=0.5)
    hyperparameters = args.strategy_hyperparameters()
    assert hyperparameters["learning_rate"] == 0.1
    assert hyperparameters["weight_decay"] == 0.0
    assert hyperparameters["grokfast_alpha"] == 0.5
    assert hyperparameters["momentum"] == 0.9


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(lr_strategy="dalss"), ValueError, r"unknown lr_strategy 'dalss'\. Did you mean 'dals'\? Valid names: .*hf_default"),
        (dict(lr_strategy="hf_default", grokfast_alpha=0.5), ValueError, r"'hf_default' does not use grokfast_alpha"),
        (
            dict(lr_strategy="discriminative", momentum=0.9, warmup_fraction=0.1, stlr_ratio=8.0),
            ValueError,
            r"does not use warmup_fraction, stlr_ratio; remove them",
        ),
        (dict(lr_strategy="dals", training_regime="pretrain"), ValueError, r"invalid training_regime: 'pretrain'"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        make(tmp_path, **kwargs)


@pytest.mark.parametrize(
    ("strategy", "kwargs", "message"),
    [
        ("dals", dict(momentum=1.5), r"invalid momentum: 1\.5"),
        ("dals", dict(grokfast_alpha=-0.1), r"invalid grokfast_alpha: -0\.1"),
        ("dals", dict(trust_clip_min=2.0, trust_clip_max=1.0), r"invalid trust_clip: \(2\.0, 1\.0\)"),
        ("dals", dict(learning_rate=-1.0), r"invalid learning_rate: -1\.0 for lr_strategy 'dals'"),
        ("dals_acc", dict(phase_threshold_explore=0.001, phase_threshold_refine=0.01), r"invalid phase_thresholds"),
        ("discriminative", dict(layer_lr_decay=0.0), r"invalid layer_lr_decay: 0\.0"),
        ("stlr_discriminative", dict(weight_decay=-0.5), r"invalid weight_decay: -0\.5"),
    ],
)
def test_invalid_hyperparameters_raise(tmp_path, strategy, kwargs, message):
    # Out-of-range values raise when the arguments are built, combinations when the optimizer is.
    with pytest.raises(ValueError, match=message):
        args = make(tmp_path, lr_strategy=strategy, **kwargs)
        get_strategy(strategy).create_optimizer(tiny_bert(num_layers=2), args)


def test_invalid_warmup_fraction_raises_with_the_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"invalid warmup_fraction: 1\.5 for lr_strategy 'dals'"):
        make(tmp_path, lr_strategy="dals", warmup_fraction=1.5)


def test_command_line_parsing(tmp_path):
    parser = HfArgumentParser(DALSTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        args=["--output_dir", str(tmp_path), "--lr_strategy", "dals_acc", "--grokfast_alpha", "0.75", "--report_to", "none"]
    )
    assert args.lr_strategy == "dals_acc"
    assert args.grokfast_alpha == 0.75
    assert args.learning_rate == 5e-4


def test_cli_unknown_strategy_lists_names(tmp_path, capsys):
    parser = HfArgumentParser(DALSTrainingArguments)
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(args=["--output_dir", str(tmp_path), "--lr_strategy", "adamx"])
    error = capsys.readouterr().err
    assert "invalid choice: 'adamx'" in error
    assert "dals_fast" in error


def test_pickled_arguments_drop_hub_token(tmp_path):
    import io

    import torch

    args = make(tmp_path, lr_strategy="dals", hub_token="hf_exampletoken0123456789")
    buffer = io.BytesIO()
    torch.save(args, buffer)
    assert b"hf_exampletoken0123456789" not in buffer.getvalue()
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    assert restored.hub_token is None
    assert restored.lr_strategy == "dals"
    assert args.hub_token == "hf_exampletoken0123456789"
