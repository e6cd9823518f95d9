"""DeepSpeed and FSDP set-ups that would drop a strategy's groups or schedule, or break its norms.

DeepSpeed is not installed here and Trainer rejects FSDP in one CPU process, so the checks are
tested on config dicts and on a built trainer whose arguments are edited afterwards.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny import RandomTokens, tiny_bert

from hf_dals import DALSTrainer, DALSTrainingArguments, get_strategy, list_strategies
from hf_dals.parallel import check_deepspeed_config, check_fsdp_settings, load_deepspeed_config

ZERO2 = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}
DS_OPTIMIZER = {"optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}}}
DS_SCHEDULER = {"scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": "auto"}}}

TRUST_RATIO_STRATEGIES = {"dals", "dals_fast", "dals_acc", "lars", "lamb"}


def test_trust_ratio_strategies_are_marked():
    marked = {s.name for s in list_strategies() if s.uses_tensor_norms}
    assert marked == TRUST_RATIO_STRATEGIES


@pytest.mark.parametrize("name", ["adamw", "llrd_adamw", "ulmfit", "lookahead_adamw", "grokfast"])
def test_deepspeed_config_without_blocks_is_accepted(name):
    check_deepspeed_config(ZERO2, get_strategy(name))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {**ZERO2, **DS_OPTIMIZER},
            r'its "optimizer" block makes DeepSpeed build its own optimizer over a single parameter group.*'
            r'Remove the "optimizer" block from the DeepSpeed config',
        ),
        (
            {**ZERO2, **DS_SCHEDULER},
            r'its "scheduler" block makes a DeepSpeed scheduler replace the strategy\'s schedule.*'
            r'Remove the "scheduler" block from the DeepSpeed config',
        ),
        (
            {**ZERO2, **DS_OPTIMIZER, **DS_SCHEDULER},
            r'Remove the "optimizer" and "scheduler" blocks from the DeepSpeed config',
        ),
        # An "auto"-only block still makes DeepSpeed build the optimizer: presence is what counts.
        ({"optimizer": {"type": "auto"}}, r'Remove the "optimizer" block'),
    ],
)
def test_deepspeed_optimizer_and_scheduler_blocks_raise(config, message):
    with pytest.raises(ValueError, match=r"invalid DeepSpeed config for lr_strategy='llrd_adamw'.*" + message):
        check_deepspeed_config(config, get_strategy("llrd_adamw"))


@pytest.mark.parametrize("name", sorted(TRUST_RATIO_STRATEGIES))
def test_deepspeed_with_trust_ratios_raises(name):
    with pytest.raises(NotImplementedError, match=rf"lr_strategy='{name}' computes a trust ratio.*DDP or FSDP2"):
        check_deepspeed_config(ZERO2, get_strategy(name))


def test_load_deepspeed_config_from_every_form(tmp_path):
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps({**ZERO2, **DS_SCHEDULER}))

    class Parsed:
        config = {**ZERO2, **DS_OPTIMIZER}

    assert load_deepspeed_config(path) == {**ZERO2, **DS_SCHEDULER}
    assert load_deepspeed_config(str(path)) == {**ZERO2, **DS_SCHEDULER}
    assert load_deepspeed_config(ZERO2) == ZERO2
    assert load_deepspeed_config(Parsed()) == {**ZERO2, **DS_OPTIMIZER}
    with pytest.raises(TypeError, match="invalid DeepSpeed config of type int"):
        load_deepspeed_config(3)


@pytest.mark.parametrize(
    ("version", "use_orig_params", "name", "error", "message"),
    [
        (2, False, "dals", None, None),
        (2, True, "lamb", None, None),
        (1, True, "adamw", None, None),
        (1, True, "ulmfit", None, None),
        (1, False, "adamw", ValueError, r"FSDP1 with use_orig_params=False.*fsdp_config=\{'use_orig_params': True\}"),
        (1, False, "dals", ValueError, r"fsdp_use_orig_params: true in the accelerate config.*use FSDP2"),
        (1, True, "dals", NotImplementedError, r"FSDP1 hands the optimizer 1-D slices.*fsdp_config=\{'version': 2\}"),
        (1, True, "lars", NotImplementedError, r"lr_strategy='lars' computes a trust ratio"),
    ],
)
def test_fsdp_settings(version, use_orig_params, name, error, message):
    if error is None:
        check_fsdp_settings(version, use_orig_params, get_strategy(name))
        return
    with pytest.raises(error, match=message):
        check_fsdp_settings(version, use_orig_params, get_strategy(name))


def built_trainer(name: str, tmp_path, **kwargs) -> DALSTrainer:
    args = DALSTrainingArguments(
        output_dir=str(tmp_path), lr_strategy=name, use_cpu=True, report_to="none", max_steps=1, disable_tqdm=True
    )
    return DALSTrainer(model=tiny_bert(num_layers=2), args=args, train_dataset=RandomTokens(), **kwargs)


def test_trainer_reads_deepspeed_arguments(tmp_path):
    trainer = built_trainer("llrd_adamw", tmp_path)
    trainer.args.deepspeed = {**ZERO2, **DS_OPTIMIZER}
    with pytest.raises(ValueError, match=r'Remove the "optimizer" block'):
        trainer._check_parallel_setup()

    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps({**ZERO2, **DS_SCHEDULER}))
    trainer.args.deepspeed = str(path)
    with pytest.raises(ValueError, match=r'Remove the "scheduler" block'):
        trainer._check_parallel_setup()


def test_trainer_reads_fsdp_arguments(tmp_path):
    trainer = built_trainer("dals", tmp_path)
    trainer.args.fsdp = True
    trainer.args.fsdp_plugin_args = {"fsdp_version": 1, "use_orig_params": False}
    with pytest.raises(ValueError, match=r"FSDP1 with use_orig_params=False"):
        trainer._check_parallel_setup()
    trainer.args.fsdp_plugin_args = {"fsdp_version": 2}
    trainer._check_parallel_setup()


def test_plain_trainer_and_user_optimizers_are_not_checked(tmp_path):
    plain = built_trainer("hf_default", tmp_path / "plain")
    plain.args.deepspeed = {**ZERO2, **DS_OPTIMIZER}
    plain._check_parallel_setup()

    model_optimizer = torch.optim.SGD(tiny_bert(num_layers=2).parameters(), lr=0.1)
    mine = built_trainer("dals", tmp_path / "mine", optimizers=(model_optimizer, None))
    mine.args.deepspeed = ZERO2
    mine._check_parallel_setup()
