"""Every registered strategy, tested automatically, plus the behaviour specific to some of them."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import RandomTokens, RandomVectors, TinyMLP, tiny_bert

from hf_dals import DALSTrainer, DALSTrainingArguments, check_param_coverage, get_strategy, list_strategies
from hf_dals.optim import GrokfastSGD, TwoPassSAM
from hf_dals.strategies import TUNABLE_HYPERPARAMETERS, Strategy, StepPlan, unfreeze_steps
from hf_dals.trainer import unwrap_optimizer

NAMES = [s.name for s in list_strategies()]
PAPER_STRATEGIES = [
    "fixed_sgd", "cosine_sgd", "sgdr", "adam", "adamw", "adabound", "lars", "discriminative", "radam", "lion",
    "lookahead_adamw", "sam", "grokfast", "stlr_discriminative", "sam_discriminative", "dals", "dals_fast", "dals_acc",
]  # fmt: skip
EXTRA_STRATEGIES = ["hf_default", "llrd_adamw", "lamb", "ulmfit", "one_cycle"]

TRAIN = dict(
    per_device_train_batch_size=8,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
    seed=0,
    dataloader_pin_memory=False,
)


def args_for(name: str, tmp_path, **kwargs) -> DALSTrainingArguments:
    return DALSTrainingArguments(output_dir=str(tmp_path), lr_strategy=name, **{**TRAIN, **kwargs})


def bert_batch(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 64, (8, 8), generator=generator)
    return {"input_ids": input_ids, "labels": input_ids[:, 0] % 3}


def manual_step(model, optimizer, scheduler, strategy: Strategy, batch: dict) -> torch.Tensor:
    """One optimizer step the way DALSTrainer takes it, without Trainer."""
    loss = model(**batch)["loss"]
    loss.backward()
    if strategy.needs_two_passes:
        optimizer.first_step(zero_grad=True)
        model(**batch)["loss"].backward()
    if strategy.needs_loss:
        optimizer.observe_loss(loss.detach())
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return loss.detach()


def test_registry_has_every_required_strategy():
    assert set(PAPER_STRATEGIES) | set(EXTRA_STRATEGIES) <= set(NAMES)
    assert len(NAMES) >= 23
    for strategy in list_strategies():
        assert 1 <= strategy.generation <= 5
        assert strategy.description
        assert strategy.implementation


def test_get_strategy_suggests_the_closest_name():
    with pytest.raises(ValueError, match=r"unknown lr_strategy 'lookahead'\. Did you mean 'lookahead_adamw'\?"):
        get_strategy("lookahead")


def test_list_strategies_by_generation():
    for generation in range(1, 6):
        chosen = list_strategies(generation)
        assert chosen
        assert all(s.generation == generation for s in chosen)
    assert sum(len(list_strategies(g)) for g in range(1, 6)) == len(NAMES)
    with pytest.raises(ValueError, match="invalid generation: 6"):
        list_strategies(6)


def test_every_hyperparameter_is_an_argument():
    fields = set(DALSTrainingArguments.__dataclass_fields__)
    assert set(TUNABLE_HYPERPARAMETERS) <= fields


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("model_factory", [lambda: tiny_bert(num_layers=3), TinyMLP], ids=["bert", "mlp"])
def test_builds_with_every_parameter_once(name, model_factory, tmp_path):
    model = model_factory()
    strategy = get_strategy(name)
    optimizer, scheduler = strategy.build(model, args_for(name, tmp_path), num_training_steps=40)
    check_param_coverage(model, optimizer)
    assert len(scheduler.get_last_lr()) == len(optimizer.param_groups)
    if strategy.uses_depth_groups:
        assert all("depth" in group for group in optimizer.param_groups)


@pytest.mark.parametrize("name", NAMES)
def test_trains_five_steps_on_bert(name, tmp_path):
    model = tiny_bert(num_layers=2)
    trainer = DALSTrainer(
        model=model, args=args_for(name, tmp_path, max_steps=5), train_dataset=RandomTokens(size=40)
    )
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 5
    assert all(torch.isfinite(torch.tensor(losses)))
    assert torch.isfinite(torch.tensor(result.training_loss))
    check_param_coverage(model, trainer.optimizer)


@pytest.mark.parametrize("name", NAMES)
def test_trains_five_steps_on_mlp(name, tmp_path):
    model = TinyMLP()
    trainer = DALSTrainer(
        model=model, args=args_for(name, tmp_path, max_steps=5, training_regime="scratch"), train_dataset=RandomVectors()
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 5
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_continues_in_lockstep(name, tmp_path):
    strategy = get_strategy(name)
    args = args_for(name, tmp_path)
    model = tiny_bert(num_layers=2, dropout=0.0)
    optimizer, scheduler = strategy.build(model, args, num_training_steps=12)
    for step in range(6):
        manual_step(model, optimizer, scheduler, strategy, bert_batch(step))

    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_scheduler = copy.deepcopy(scheduler.state_dict())

    resumed = tiny_bert(num_layers=2, dropout=0.0)
    resumed.load_state_dict(saved_model)
    resumed_optimizer, resumed_scheduler = strategy.build(resumed, args, num_training_steps=12)
    resumed_optimizer.load_state_dict(saved_optimizer)
    resumed_scheduler.load_state_dict(saved_scheduler)

    for step in range(6, 12):
        manual_step(model, optimizer, scheduler, strategy, bert_batch(step))
        manual_step(resumed, resumed_optimizer, resumed_scheduler, strategy, bert_batch(step))
        assert scheduler.get_last_lr() == resumed_scheduler.get_last_lr()
    for (parameter_name, a), (_, b) in zip(model.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), parameter_name


# -- strategy-specific behaviour ------------------------------------------------------------------


def test_lookahead_slow_weights_are_in_the_state_dict(tmp_path):
    strategy = get_strategy("lookahead_adamw")
    model = tiny_bert(num_layers=2, dropout=0.0)
    optimizer, scheduler = strategy.build(model, args_for("lookahead_adamw", tmp_path), num_training_steps=10)
    for step in range(3):
        manual_step(model, optimizer, scheduler, strategy, bert_batch(step))
    state = optimizer.state_dict()
    slow = [entry["slow_params"] for entry in state["lookahead_state"].values() if "slow_params" in entry]
    assert len(slow) == sum(1 for p in model.parameters())
    assert "state" in state["base_optimizer"]


def test_grokfast_keeps_its_filter_in_state_and_skips_missing_gradients():
    used = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    unused = torch.nn.Parameter(torch.tensor([3.0]))
    optimizer = GrokfastSGD([used, unused], lr=0.1, momentum=0.0, alpha=0.5, lamb=2.0)
    used.grad = torch.tensor([1.0, -1.0])
    unused.grad = torch.tensor([4.0])
    optimizer.step()
    assert optimizer.state[unused]["grokfast_ema"].tolist() == [2.0]
    unused.grad = None
    used.grad = torch.tensor([1.0, -1.0])
    optimizer.step()
    # The unused parameter kept its filter and did not move; the used one followed g + 2 * EMA.
    assert optimizer.state[unused]["grokfast_ema"].tolist() == [2.0]
    assert unused.tolist() == pytest.approx([3.0 - 0.1 * (4.0 + 2.0 * 2.0)])
    assert optimizer.state[used]["grokfast_ema"].tolist() == [0.75, -0.75]
    for state in optimizer.state.values():
        for value in state.values():
            assert value.data_ptr() != used.grad.data_ptr()


def test_lars_steps_biases_like_plain_sgd(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    optimizer = get_strategy("lars").create_optimizer(model, args_for("lars", tmp_path, training_regime="scratch"))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(torch.randn(3, 4)).sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    optimizer.step()
    for name, param in model.named_parameters():
        plain = before[name] - 0.03 * grads[name]
        if param.ndim == 1:
            assert torch.allclose(param, plain), name
        else:
            assert not torch.allclose(param, plain), name


def test_lamb_excludes_biases_and_norms_from_the_trust_ratio(tmp_path):
    optimizer = get_strategy("lamb").create_optimizer(tiny_bert(num_layers=2), args_for("lamb", tmp_path))
    flags = {group["name"]: group["adam"] for group in optimizer.param_groups}
    assert flags == {"decay": False, "no_decay": True}


def test_ulmfit_thaws_one_depth_per_interval(tmp_path):
    strategy = get_strategy("ulmfit")
    args = args_for("ulmfit", tmp_path, unfreeze_every_fraction=0.25, layer_lr_decay=1.0)
    model = tiny_bert(num_layers=2, dropout=0.0)  # depths: embeddings, layer_0, layer_1, head
    optimizer, scheduler = strategy.build(model, args, num_training_steps=12)
    starts = {group["depth_name"]: start for group, start in zip(optimizer.param_groups, unfreeze_steps(optimizer, strategy.hyperparameters(args), StepPlan(12, 12.0)))}
    assert starts == {"head": 0, "layer_1": 3, "layer_0": 6, "embeddings": 9}

    embeddings = model.bert.embeddings.word_embeddings.weight
    for step in range(12):
        lrs = {group["depth_name"]: group["lr"] for group in optimizer.param_groups}
        for depth_name, start in starts.items():
            if step < start:
                assert lrs[depth_name] == 0.0, (step, depth_name)
            else:
                assert lrs[depth_name] > 0.0, (step, depth_name)
        before = embeddings.detach().clone()
        manual_step(model, optimizer, scheduler, strategy, bert_batch(step))
        if step < starts["embeddings"]:
            assert torch.equal(embeddings, before), step
    assert not torch.equal(embeddings, before)


def test_ulmfit_keeps_every_parameter_trainable(tmp_path):
    model = tiny_bert(num_layers=2)
    trainer = DALSTrainer(model=model, args=args_for("ulmfit", tmp_path, max_steps=2), train_dataset=RandomTokens())
    trainer.train()
    assert all(p.requires_grad for p in model.parameters())
    check_param_coverage(model, trainer.optimizer)


def test_sam_with_accumulation_matches_one_big_batch(tmp_path):
    def train(accumulation: int):
        model = tiny_bert(num_layers=2, dropout=0.0)
        trainer = DALSTrainer(
            model=model,
            args=args_for(
                "sam",
                tmp_path / str(accumulation),
                max_steps=3,
                per_device_train_batch_size=8 // accumulation,
                gradient_accumulation_steps=accumulation,
                max_grad_norm=0.0,
            ),
            train_dataset=RandomTokens(size=48),
        )
        # BertForSequenceClassification takes **kwargs but ignores num_items_in_batch, so Trainer
        # would skip dividing each micro-batch loss by the accumulation steps (transformers#47688).
        trainer.model_accepts_loss_kwargs = False
        trainer.train()
        assert isinstance(unwrap_optimizer(trainer.optimizer), TwoPassSAM)
        return model

    whole, accumulated = train(1), train(2)
    for (name, a), (_, b) in zip(whole.named_parameters(), accumulated.named_parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name


def test_sam_second_pass_runs_every_micro_batch(tmp_path):
    calls = []

    class Counting(DALSTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            calls.append(self.state.global_step)
            return super().compute_loss(model, inputs, *args, **kwargs)

    trainer = Counting(
        model=tiny_bert(num_layers=2),
        args=args_for("sam_discriminative", tmp_path, max_steps=2, per_device_train_batch_size=4, gradient_accumulation_steps=3),
        train_dataset=RandomTokens(size=48),
    )
    trainer.train()
    # Two passes over three micro-batches per optimizer step.
    assert calls == [0] * 6 + [1] * 6


def test_sam_with_fp16_raises(tmp_path):
    trainer = DALSTrainer(model=tiny_bert(num_layers=2), args=args_for("sam", tmp_path, max_steps=1), train_dataset=RandomTokens())
    trainer.args.fp16 = True
    with pytest.raises(NotImplementedError, match=r"lr_strategy='sam' with fp16 is not supported.*bf16=True"):
        trainer._check_two_pass_support()


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("fixed_sgd", dict(momentum=1.2), r"invalid momentum: 1\.2 for lr_strategy 'fixed_sgd' \(expected 0 <= momentum < 1\)"),
        ("adamw", dict(learning_rate=-1e-3), r"invalid learning_rate: -0\.001"),
        ("lars", dict(trust_coefficient=-1.0), r"invalid trust_coefficient: -1\.0"),
        ("sam", dict(sam_rho=-0.1), r"invalid sam_rho: -0\.1"),
        ("grokfast", dict(grokfast_alpha=1.5), r"invalid grokfast_alpha: 1\.5"),
        ("grokfast", dict(grokfast_lambda=-1.0), r"invalid grokfast_lambda: -1\.0"),
        ("llrd_adamw", dict(layer_lr_decay=2.0), r"invalid layer_lr_decay: 2\.0"),
        ("llrd_adamw", dict(warmup_fraction=-0.1), r"invalid warmup_fraction: -0\.1"),
        ("lookahead_adamw", dict(lookahead_alpha=1.5), r"invalid lookahead_alpha: 1\.5"),
        ("lookahead_adamw", dict(lookahead_k=0), r"invalid lookahead_k: 0 .*an integer >= 1"),
        ("ulmfit", dict(unfreeze_every_fraction=1.5), r"invalid unfreeze_every_fraction: 1\.5"),
        ("ulmfit", dict(unfreeze_every_epochs=0.0), r"invalid unfreeze_every_epochs: 0\.0"),
        ("sgdr", dict(sgdr_cycle_mult=0.5), r"invalid sgdr_cycle_mult: 0\.5"),
        ("one_cycle", dict(one_cycle_div_factor=0.1), r"invalid one_cycle_div_factor: 0\.1"),
        ("adabound", dict(adabound_final_lr=0.0), r"invalid adabound_final_lr: 0\.0"),
        ("stlr_discriminative", dict(stlr_cut_frac=1.0), r"invalid stlr_cut_frac: 1\.0"),
    ],
)
def test_invalid_strategy_arguments(name, kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        args = args_for(name, tmp_path, **kwargs)
        get_strategy(name).build(tiny_bert(num_layers=2), args, num_training_steps=20)


def test_grokfast_foreach_matches_per_tensor():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    twin = copy.deepcopy(model)
    optimizers = [
        GrokfastSGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, alpha=0.9, lamb=2.0, foreach=foreach)
        for net, foreach in ((model, False), (twin, True))
    ]
    for step in range(20):
        x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
        for net, optimizer in zip((model, twin), optimizers):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            if step % 5 == 4:
                net[2].bias.grad = None  # a parameter without a gradient on some steps
            optimizer.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert ((a - b).norm() / a.norm()).item() <= 1e-6
