from __future__ import annotations

import re

import pytest
import torch
from tiny import tiny_bert
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
)

from hf_dals import check_param_coverage, depth_param_groups, describe_param_groups, layer_depths
from hf_dals.grouping import canonical_name, discover_depths

SMALL = dict(hidden_size=16, num_attention_heads=2, intermediate_size=24, vocab_size=64, max_position_embeddings=32)

BERT_FAMILY = {
    "bert": dict(model_type="bert", num_hidden_layers=4, **SMALL),
    "roberta": dict(model_type="roberta", num_hidden_layers=4, **SMALL),
    "xlm-roberta": dict(model_type="xlm-roberta", num_hidden_layers=4, **SMALL),
    "electra": dict(model_type="electra", num_hidden_layers=4, embedding_size=8, **SMALL),
    "distilbert": dict(
        model_type="distilbert", n_layers=4, dim=16, n_heads=2, hidden_dim=24, vocab_size=64, max_position_embeddings=32
    ),
}


def build(family: str) -> nn.Module:
    torch.manual_seed(0)
    kwargs = dict(BERT_FAMILY[family])
    config = AutoConfig.for_model(kwargs.pop("model_type"), num_labels=3, **kwargs)
    return AutoModelForSequenceClassification.from_config(config)


def test_layer_indices_match_exactly(bert12):
    depths = layer_depths(bert12)
    assert depths["bert.encoder.layer.1.attention.self.query.weight"] == 2
    assert depths["bert.encoder.layer.10.attention.self.query.weight"] == 11
    assert depths["bert.encoder.layer.11.output.dense.bias"] == 12


def test_bert_depths_embeddings_layers_head(bert12):
    depths = layer_depths(bert12)
    for name, depth in depths.items():
        if name.startswith("bert.embeddings."):
            assert depth == 0, name
        elif name.startswith("bert.encoder.layer."):
            index = int(name.split(".")[3])
            assert depth == index + 1, name
        else:
            assert name.startswith(("bert.pooler.", "classifier.")), name
            assert depth == 13, name
    assert set(depths) == {n for n, p in bert12.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", sorted(BERT_FAMILY))
def test_bert_family_depth_invariants(family):
    model = build(family)
    depths = layer_depths(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(depths) == trainable
    assert sorted(set(depths.values())) == list(range(4 + 2))
    word_embeddings = [n for n in depths if "word_embeddings" in n]
    assert len(word_embeddings) == 1
    assert depths[word_embeddings[0]] == 0
    classifier = [n for n in depths if "classifier" in n]
    assert classifier and all(depths[n] == 5 for n in classifier)


def test_classifier_registered_before_backbone_is_head():
    # XLM-RoBERTa registers `classifier` before `roberta`, so order at the root cannot decide.
    model = build("xlm-roberta")
    assert next(model.named_parameters())[0].startswith("classifier.")
    depths = layer_depths(model)
    assert {depths[n] for n in depths if n.startswith("classifier.")} == {5}
    assert {depths[n] for n in depths if n.startswith("roberta.embeddings.")} == {0}


def test_electra_projection_is_in_the_embeddings_depth():
    model = build("electra")
    depths = layer_depths(model)
    projection = [n for n in depths if "embeddings_project" in n]
    assert projection, "this ELECTRA config should have an embeddings projection"
    assert all(depths[n] == 0 for n in projection)


def test_frozen_parameters_are_left_out(bert12):
    for param in bert12.bert.embeddings.parameters():
        param.requires_grad_(False)
    depths = layer_depths(bert12)
    assert not any(name.startswith("bert.embeddings.") for name in depths)
    groups = depth_param_groups(bert12, lr=1e-3)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert all(id(p) not in grouped for p in bert12.bert.embeddings.parameters())
    assert min(g["depth"] for g in groups) == 1


def test_groups_cover_every_parameter_once(bert12):
    groups = depth_param_groups(bert12, lr=1e-3, weight_decay=0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in bert12.parameters()}
    for group in groups:
        assert set(group) >= {"params", "name", "depth", "depth_ratio", "lr", "lr_scale", "weight_decay"}
    assert len({(g["depth"], g["weight_decay"] > 0) for g in groups}) == len(groups)


def test_bias_and_norm_weights_get_no_decay(bert12):
    groups = depth_param_groups(bert12, lr=1e-3, weight_decay=0.01)
    names = {id(p): n for n, p in bert12.named_parameters()}
    for group in groups:
        for param in group["params"]:
            name = names[id(param)]
            no_decay = name.endswith("bias") or "LayerNorm" in name
            assert group["weight_decay"] == (0.0 if no_decay else 0.01), name


def test_custom_no_decay_substrings(bert12):
    groups = depth_param_groups(bert12, lr=1e-3, weight_decay=0.1, no_decay=["bias"])
    names = {id(p): n for n, p in bert12.named_parameters()}
    layer_norm_groups = {g["weight_decay"] for g in groups for p in g["params"] if "LayerNorm.weight" in names[id(p)]}
    assert layer_norm_groups == {0.1}


def test_layer_lr_decay_and_depth_ratio(bert12):
    groups = depth_param_groups(bert12, lr=1.0, layer_lr_decay=0.5)
    by_depth = {g["depth"]: g for g in groups}
    assert by_depth[13]["lr"] == 1.0
    assert by_depth[12]["lr"] == 0.5
    assert by_depth[0]["lr"] == pytest.approx(0.5**13)
    assert by_depth[0]["depth_ratio"] == 0.0
    assert by_depth[13]["depth_ratio"] == 1.0
    assert by_depth[1]["depth_ratio"] == pytest.approx(1 / 13)
    assert by_depth[0]["depth_name"] == "embeddings"
    assert by_depth[4]["depth_name"] == "layer_3"
    assert by_depth[13]["depth_name"] == "head"


def test_transformers_model_without_stack_raises_with_hint(bert12):
    # Hide the stack: a Transformers model must not fall back to module order.
    bert12.bert.encoder.layer = nn.Sequential(*bert12.bert.encoder.layer)
    with pytest.raises(ValueError, match=r"could not find the layer stack of BertForSequenceClassification.*layer_pattern"):
        layer_depths(bert12)


def test_plain_sequential_gets_module_order_depths():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    depth_map = discover_depths(model)
    assert depth_map.depths == {
        "0.weight": 0,
        "0.bias": 0,
        "2.weight": 1,
        "2.bias": 1,
        "4.weight": 2,
        "4.bias": 2,
    }
    assert depth_map.depth_names == {0: "0", 1: "2", 2: "4"}


class Blocks(nn.Module):
    """A model whose blocks sit in numbered attributes, not in a ModuleList."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.block_0 = nn.Linear(4, 4)
        self.block_1 = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)


def test_layer_pattern_override():
    depths = layer_depths(Blocks(), layer_pattern=r"^block_(\d+)\.")
    assert depths == {
        "embed.weight": 0,
        "block_0.weight": 1,
        "block_0.bias": 1,
        "block_1.weight": 2,
        "block_1.bias": 2,
        "head.weight": 3,
        "head.bias": 3,
    }


def test_depth_rules_override_and_callable():
    rules = [(r"^embed\.", 0), (r"^block_0\.", 1), (r"^block_1\.", 2), (r"^head\.", 3)]
    from_list = layer_depths(Blocks(), depth_rules=rules)
    from_callable = layer_depths(
        Blocks(), depth_rules=lambda name: {"embed": 0, "block_0": 1, "block_1": 2, "head": 3}[name.split(".")[0]]
    )
    assert from_list == from_callable
    assert from_list["head.bias"] == 3


def test_depth_rules_must_cover_everything_without_a_stack(bert12):
    bert12.bert.encoder.layer = nn.Sequential(*bert12.bert.encoder.layer)
    with pytest.raises(ValueError, match=r"without a depth.*bert\.encoder"):
        layer_depths(bert12, depth_rules=[(r"^bert\.embeddings\.", 0), (r"^classifier\.", 1)])


def test_depth_rules_refine_module_order():
    depths = layer_depths(Blocks(), depth_rules=[(r"^head\.", 9)])
    assert depths["head.weight"] == 9
    assert depths["embed.weight"] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(layer_pattern=r"block_\d+"), "needs one capture group"),
        (dict(layer_pattern=r"(nothing)(\d+)"), "matches no parameter"),
        (dict(layer_pattern=r"("), "invalid layer_pattern"),
        (dict(depth_rules=[("embed", -1)]), "invalid depth -1"),
        (dict(depth_rules=["embed"]), "expected a \\(regex, depth\\) pair"),
    ],
)
def test_override_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        layer_depths(Blocks(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(lr=-1.0), "invalid lr: -1.0"),
        (dict(lr=1.0, layer_lr_decay=0.0), "invalid layer_lr_decay: 0.0"),
        (dict(lr=1.0, layer_lr_decay=1.5), "invalid layer_lr_decay: 1.5"),
        (dict(lr=1.0, weight_decay=-0.1), "invalid weight_decay: -0.1"),
        (dict(lr=1.0, no_decay="bias"), "not a string"),
    ],
)
def test_depth_param_groups_argument_errors(bert12, kwargs, message):
    with pytest.raises(ValueError, match=message):
        depth_param_groups(bert12, **kwargs)


def test_coverage_check_detects_missing_and_duplicated(bert12):
    groups = depth_param_groups(bert12, lr=1e-3)
    dropped = [dict(g) for g in groups]
    dropped[0] = {**dropped[0], "params": dropped[0]["params"][1:]}
    with pytest.raises(ValueError, match="1 trainable parameters are in no group"):
        check_param_coverage(bert12, dropped)
    doubled = [*groups, {"params": [groups[0]["params"][0]]}]
    with pytest.raises(ValueError, match="1 parameters are in more than one group"):
        check_param_coverage(bert12, doubled)
    optimizer = torch.optim.SGD(groups, lr=1e-3)
    check_param_coverage(bert12, optimizer)


def test_coverage_check_rejects_frozen_parameter_in_group(bert12):
    groups = depth_param_groups(bert12, lr=1e-3)
    bert12.classifier.bias.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen or not part of the model"):
        check_param_coverage(bert12, groups)


def test_describe_param_groups_lists_every_group(bert12):
    groups = depth_param_groups(bert12, lr=1e-3, weight_decay=0.01)
    table = describe_param_groups(groups)
    lines = table.splitlines()
    assert lines[0].split() == ["group", "depth", "#params", "lr", "weight", "decay"]
    assert len(lines) == len(groups) + 2
    assert re.search(r"embeddings\.decay\s+0\s+[\d,]+\s+[\d.e-]+\s+0\.01", table)
    assert "head.no_decay" in table


@pytest.mark.parametrize(
    ("wrapped", "plain"),
    [
        ("module.bert.encoder.layer.1.output.dense.weight", "bert.encoder.layer.1.output.dense.weight"),
        ("_orig_mod.classifier.bias", "classifier.bias"),
        ("bert._fsdp_wrapped_module.encoder.layer.0._checkpoint_wrapped_module.x", "bert.encoder.layer.0.x"),
        ("base_model.model.bert.pooler.dense.weight", "bert.pooler.dense.weight"),
        ("module._orig_mod.base_model.model.classifier.weight", "classifier.weight"),
    ],
)
def test_canonical_name_removes_wrappers(wrapped, plain):
    assert canonical_name(wrapped) == plain


def test_discover_depths_reports_stack_and_names():
    model = tiny_bert(num_layers=3)
    depth_map = discover_depths(model)
    assert depth_map.num_layers == 3
    assert depth_map.stack_names == ("bert.encoder.layer",)
    assert depth_map.depth_names == {0: "embeddings", 1: "layer_0", 2: "layer_1", 3: "layer_2", 4: "head"}
