"""Depth-aware parameter groups.

A model is cut into depths from input to output. Depth 0 contains the embeddings, depth
``i + 1`` layer ``i``, and the last depth everything after the layer stack (final norm, pooler,
classifier). The layer stack is found in the module tree: it is the ``nn.ModuleList`` of repeated
blocks that holds the most parameters, so no model-specific prefix is hard-coded. Layer membership
is decided by module identity, never by matching names, so ``layer.1.`` can never be confused with
``layer.10.``. ``docs/depths.md`` lists what this gives for each common architecture.

This module knows nothing about optimizers: it returns plain dictionaries that any
``torch.optim.Optimizer`` accepts as parameter groups, with extra metadata keys (``name``,
``depth``, ``depth_name``, ``depth_ratio``, ``lr_scale``) that the optimizers and schedules of
hf-dals read.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn

__all__ = [
    "DepthMap",
    "canonical_name",
    "check_param_coverage",
    "decay_param_groups",
    "depth_param_groups",
    "describe_param_groups",
    "discover_depths",
    "layer_depths",
]

# Path components that wrappers insert into parameter names. They are removed before any name is
# matched against a user rule, so the same rule works on a bare, compiled, DDP, FSDP or PEFT model.
_WRAPPER_COMPONENTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
_WRAPPER_PREFIXES = ("module.", "base_model.model.")

# A list of repeated blocks counts as a layer stack only if it has at least this share of the
# parameters of the largest one, so small lists (say, two projection heads) are not stacks.
_MIN_STACK_SHARE = 0.2

DepthRules = Sequence[tuple[str, int]] | Callable[[str], int | None]

# Children whose place the module tree cannot show: they are registered after the layer list but
# run before it or inside it. Keyed by the class name of the parent module, so that no model class
# is imported. "input" puts a child into depth 0 and "first_block" into the depth of the first
# block of the nearest stack.
_KNOWN_PLACEMENTS: dict[str, dict[str, str]] = {
    # DeBERTa-v2 and v3: the relative position table and the LayerNorm that normalises it feed the
    # attention of every layer, like BERT's position embeddings. ``conv`` (present when the config
    # sets conv_kernel_size > 0) is applied to the output of the first layer only.
    "DebertaV2Encoder": {"rel_embeddings": "input", "LayerNorm": "input", "conv": "first_block"},
}

# Plain PyTorch models get one depth per module that owns parameters. A normalization layer joins
# the depth of the module before it, so a Conv-BatchNorm pair is one depth.
_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)

_OVERRIDE_HELP = (
    "Pass layer_pattern, a regular expression whose first group captures the layer index "
    r"(for example layer_pattern=r'\.blocks\.(\d+)\.'), or depth_rules, a list of (regex, depth) "
    "pairs (the first match wins) or a callable that maps a parameter name to its depth."
)


def canonical_name(name: str) -> str:
    """Remove wrapper prefixes from a parameter name.

    DDP adds ``module.``, ``torch.compile`` adds ``_orig_mod.``, FSDP1 and activation
    checkpointing add ``_fsdp_wrapped_module.`` and ``_checkpoint_wrapped_module.`` at any level,
    and PEFT adds ``base_model.model.``.
    """
    parts = [part for part in name.split(".") if part not in _WRAPPER_COMPONENTS]
    name = ".".join(parts)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                stripped = True
    return name


@dataclass(frozen=True)
class DepthMap:
    """The depth of every trainable parameter of a model.

    ``depths`` maps each trainable parameter name (as ``model.named_parameters()`` spells it) to
    its depth. ``depth_names`` maps each depth to a readable name (``embeddings``, ``layer_3``,
    ``encoder_layer_3`` and ``decoder_layer_0`` for an encoder-decoder, ``head``).
    ``num_layers`` is the number of distinct blocks found in the layer stacks (for module-order
    depths, the number of depths minus 2), and ``stack_names`` are the module paths of the stacks,
    without wrapper prefixes.
    """

    depths: dict[str, int]
    depth_names: dict[int, str]
    num_layers: int
    stack_names: tuple[str, ...] = field(default=())

    @property
    def max_depth(self) -> int:
        return max(self.depths.values(), default=0)

    def depth_ratio(self, depth: int) -> float:
        """Return ``depth / max_depth`` in [0, 1], or 1.0 when the model has a single depth."""
        top = self.max_depth
        return 1.0 if top == 0 else depth / top


def _unwrapped(module: nn.Module) -> nn.Module:
    """Return the module inside activation-checkpointing, FSDP1 and ``torch.compile`` wrappers."""
    while True:
        for attribute in _WRAPPER_COMPONENTS:
            inner = getattr(module, attribute, None)
            if isinstance(inner, nn.Module):
                module = inner
                break
        else:
            return module


def _is_block_list(module: nn.Module) -> bool:
    if not isinstance(module, nn.ModuleList) or len(module) == 0:
        return False
    first_type = type(_unwrapped(module[0]))
    return all(type(_unwrapped(block)) is first_type for block in module) and any(
        True for _ in module.parameters()
    )


def _find_layer_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Return the outermost lists of repeated blocks that hold a large share of the parameters."""
    candidates = [(name, module) for name, module in model.named_modules() if _is_block_list(module)]
    outermost = [
        (name, module)
        for name, module in candidates
        if not any(other != name and name.startswith(other + ".") for other, _ in candidates)
    ]
    if not outermost:
        return []
    sizes = {name: sum(p.numel() for p in module.parameters()) for name, module in outermost}
    largest = max(sizes.values())
    return [(name, module) for name, module in outermost if sizes[name] >= _MIN_STACK_SHARE * largest]


def _unique_blocks(stack: Sequence[nn.Module]) -> list[nn.Module]:
    """Return the blocks of ``stack`` in order, each module object once."""
    seen: set[int] = set()
    blocks = []
    for block in stack:
        if id(block) not in seen:
            seen.add(id(block))
            blocks.append(block)
    return blocks


def _declared_num_layers(model: nn.Module) -> int | None:
    """Return ``config.num_hidden_layers`` of the first module that has a config (the Transformers model)."""
    for module in model.modules():
        config = getattr(module, "config", None)
        declared = getattr(config, "num_hidden_layers", None)
        if isinstance(declared, int) and not isinstance(declared, bool):
            return declared
    return None


def _leaf_block_count(blocks: Sequence[nn.Module]) -> int:
    """Count distinct blocks, counting a block that is itself a list of blocks (Funnel) by its content."""
    count = 0
    for block in _unique_blocks(blocks):
        inner = _unwrapped(block)
        count += _leaf_block_count(inner) if _is_block_list(inner) else 1
    return count


def _shared_blocks_message(model: nn.Module, stacks: list[tuple[str, nn.ModuleList]]) -> str | None:
    """Describe how the layers of ``model`` share weights, or return ``None`` when they do not.

    Two signs are read from the model: a layer list that holds the same module object more than
    once, and a config that declares more hidden layers than there are distinct blocks (ALBERT
    runs its one layer group ``num_hidden_layers`` times).
    """
    distinct = sum(len(_unique_blocks(stack)) for _, stack in stacks)
    listed = sum(len(stack) for _, stack in stacks)
    declared = _declared_num_layers(model)
    if listed > distinct:
        reason = f"its layer list holds {listed} entries but only {distinct} distinct blocks"
    elif declared is not None and declared > sum(_leaf_block_count(stack) for _, stack in stacks):
        reason = f"its config declares {declared} hidden layers but the layer stack has only {distinct} distinct blocks"
    else:
        return None
    return (
        f"the layers of {type(model).__name__} share weights: {reason}. Each shared block gets one depth, "
        f"so the model has {distinct + 2} depths: embeddings, {distinct} for the blocks, and head."
    )


def _common_prefix_length(a: list[str], b: list[str]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def _leading_wrapper_length(path: list[str]) -> int:
    """Count the leading path components that wrappers add (see :func:`canonical_name`)."""
    index = 0
    while index < len(path):
        if path[index] in _WRAPPER_COMPONENTS or path[index] == "module":
            index += 1
        elif path[index : index + 2] == ["base_model", "model"]:
            index += 2
        else:
            break
    return index


def _nearest_stack(path: list[str], stack_paths: list[list[str]], *, prefer_last: bool) -> int:
    """Return the index of the stack that shares the longest module path with ``path``.

    Ties (a parameter at the root of an encoder-decoder) go to the first stack when the input side
    is being decided and to the last stack when the output side is.
    """
    shared = [_common_prefix_length(path, stack_path) for stack_path in stack_paths]
    best = max(shared)
    candidates = [k for k, length in enumerate(shared) if length == best]
    return candidates[-1] if prefer_last else candidates[0]


def _known_placement(model: nn.Module, path: list[str]) -> str | None:
    """Return the placement that ``_KNOWN_PLACEMENTS`` gives the parameter at ``path``, if any."""
    module = model
    for component in path[:-1]:
        placements = _KNOWN_PLACEMENTS.get(type(module).__name__, {})
        if component in placements:
            return placements[component]
        module = getattr(module, component)
    return None


def _is_embedding(model: nn.Module, path: list[str], stack_path: list[str]) -> bool:
    """Decide whether a parameter outside the stacks belongs to an embedding.

    It does when its module is an ``nn.Embedding`` (or a subclass, such as BART's learned position
    embedding), or when the branch that leaves the stack's path has "embedding" in a name (BART's
    ``layernorm_embedding`` and ALBERT's ``embedding_hidden_mapping_in``). Only the branch is read,
    so a backbone that a user stores as ``embedding_model`` does not pull its final norm to depth 0.
    """
    owner = model.get_submodule(".".join(path[:-1]))
    if isinstance(owner, nn.Embedding):
        return True
    branch = path[_common_prefix_length(path[:-1], stack_path) :]
    return any("embedding" in component.lower() for component in branch)


def _is_before_stack(model: nn.Module, path: list[str], stack_path: list[str]) -> bool:
    """Decide whether a parameter outside the stacks sits on the input side of a stack.

    Inside the module that contains the stack (the backbone), children registered before the branch
    that leads to the stack are on the input side (embeddings) and those after it on the output
    side (pooler, final norm). At the root of a Transformers model, below any wrapper, registration
    order is not reliable (XLM-RoBERTa registers its classifier before its backbone), so a root
    child is on the input side only if it contains an ``nn.Embedding`` (for example T5's shared
    embedding). A parameter held directly by a module on the way to the stack (a bare
    ``nn.Parameter``) is on the output side.
    """
    root = _leading_wrapper_length(path)
    depth = _common_prefix_length(path[:-1], stack_path)
    if depth <= root and _is_transformers_model(model):
        child = getattr(model.get_submodule(".".join(path[:root])), path[root])
        return isinstance(child, nn.Module) and any(isinstance(m, nn.Embedding) for m in child.modules())
    depth = max(depth, root)
    parent = model.get_submodule(".".join(path[:depth]))
    order = [name for name, _ in parent.named_children()]
    if path[depth] not in order:
        return False
    return order.index(path[depth]) < order.index(stack_path[depth])


def _stack_labels(stack_names: list[str]) -> list[str]:
    """Name each stack for its depth names: ``encoder`` and ``decoder`` for an encoder-decoder.

    A label is the path of the stack after the prefix that all stacks share, without the name of
    the list itself (``model.encoder.layers`` and ``model.decoder.layers`` give ``encoder`` and
    ``decoder``). When those labels collide, the whole remaining path is used.
    """
    paths = [canonical_name(name).split(".") for name in stack_names]
    shared = min(_common_prefix_length(paths[0], other) for other in paths)
    remainders = [path[shared:] for path in paths]
    labels = ["_".join(rest[:-1] or rest) for rest in remainders]
    if len(set(labels)) < len(labels):
        labels = ["_".join(rest) for rest in remainders]
    return labels


def _depths_from_stacks(model: nn.Module, stacks: list[tuple[str, nn.ModuleList]]) -> DepthMap:
    # Map each parameter object to (stack position, block index) by identity. A block that a list
    # holds several times (shared weights) counts once.
    blocks = [_unique_blocks(stack) for _, stack in stacks]
    block_of: dict[int, tuple[int, int]] = {}
    for stack_position, stack_blocks in enumerate(blocks):
        for block_index, block in enumerate(stack_blocks):
            for param in block.parameters():
                block_of.setdefault(id(param), (stack_position, block_index))

    offsets = []
    total = 0
    for stack_blocks in blocks:
        offsets.append(total)
        total += len(stack_blocks)
    head_depth = total + 1
    stack_paths = [name.split(".") for name, _ in stacks]

    depths: dict[str, int] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        location = block_of.get(id(param))
        if location is not None:
            stack_position, block_index = location
            depths[name] = offsets[stack_position] + block_index + 1
            continue

        path = name.split(".")
        placement = _known_placement(model, path)
        first = _nearest_stack(path, stack_paths, prefer_last=False)
        if placement == "first_block":
            depths[name] = offsets[first] + 1
        elif placement == "input" or _is_embedding(model, path, stack_paths[first]):
            depths[name] = 0
        elif _is_before_stack(model, path, stack_paths[first]):
            depths[name] = 0
        else:
            last = _nearest_stack(path, stack_paths, prefer_last=True)
            # After a stack that is not the last one (the encoder's final norm in an
            # encoder-decoder), a parameter belongs with that stack's last block.
            depths[name] = head_depth if last == len(stacks) - 1 else offsets[last] + len(blocks[last])

    names = {0: "embeddings", head_depth: "head"}
    if len(stacks) == 1:
        names.update({depth: f"layer_{depth - 1}" for depth in range(1, total + 1)})
    else:
        for label, offset, stack_blocks in zip(_stack_labels([n for n, _ in stacks]), offsets, blocks):
            names.update({offset + i + 1: f"{label}_layer_{i}" for i in range(len(stack_blocks))})
    return DepthMap(
        depths=depths,
        depth_names=names,
        num_layers=total,
        stack_names=tuple(canonical_name(name) for name, _ in stacks),
    )


def _depths_from_pattern(model: nn.Module, layer_pattern: str) -> DepthMap:
    try:
        regex = re.compile(layer_pattern)
    except re.error as error:
        raise ValueError(f"invalid layer_pattern {layer_pattern!r}: {error}") from None
    if regex.groups < 1:
        raise ValueError(
            f"invalid layer_pattern {layer_pattern!r}: it needs one capture group for the layer "
            r"index, for example r'\.layer\.(\d+)\.'"
        )

    named = list(model.named_parameters())
    indices: dict[str, int] = {}
    for name, _ in named:
        match = regex.search(canonical_name(name))
        if match is not None:
            indices[name] = int(match.group(1))
    if not indices:
        raise ValueError(
            f"layer_pattern {layer_pattern!r} matches no parameter of {type(model).__name__}; "
            f"first names: {[canonical_name(n) for n, _ in named[:5]]}"
        )

    # Renumber the captured indices densely so that depths are consecutive.
    dense = {index: position for position, index in enumerate(sorted(set(indices.values())))}
    total = len(dense)
    head_depth = total + 1
    depths: dict[str, int] = {}
    seen_layer = False
    for name, param in named:
        if name in indices:
            depth = dense[indices[name]] + 1
            seen_layer = True
        else:
            depth = head_depth if seen_layer else 0
        if param.requires_grad:
            depths[name] = depth

    names = {0: "embeddings", head_depth: "head"}
    names.update({dense[i] + 1: f"layer_{i}" for i in dense})
    return DepthMap(depths=depths, depth_names=names, num_layers=total)


def _depths_from_module_order(model: nn.Module) -> DepthMap | None:
    """Give each module that owns parameters its own depth, in registration order.

    Used for plain PyTorch models (``nn.Sequential`` MLPs, small CNNs) that have no list of
    repeated blocks. A normalization layer (BatchNorm, LayerNorm, GroupNorm, ...) joins the depth
    of the module registered before it. Frozen modules keep their depth, so freezing the first
    layer does not renumber the others. The first depth plays the part of the embeddings and the
    last one that of the head, so ``num_layers`` is the number of depths minus 2. Returns ``None``
    when no trainable parameter exists.
    """
    owners: list[tuple[str, list[str]]] = []
    for module_name, module in model.named_modules():
        own = [f"{module_name}.{name}" if module_name else name for name, _ in module.named_parameters(recurse=False)]
        if not own:
            continue
        if owners and isinstance(module, _NORM_TYPES):
            owners[-1][1].extend(own)
        else:
            owners.append((module_name, own))

    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    if not trainable:
        return None
    depths: dict[str, int] = {}
    names: dict[int, str] = {}
    for depth, (module_name, full_names) in enumerate(owners):
        for name in full_names:
            if name in trainable:
                depths[name] = depth
        names[depth] = canonical_name(module_name) or "root"
    return DepthMap(depths=depths, depth_names=names, num_layers=max(len(owners) - 2, 0))


def _apply_depth_rules(model: nn.Module, base: DepthMap | None, depth_rules: DepthRules) -> DepthMap:
    if callable(depth_rules):
        rule_fn = depth_rules
    else:
        compiled = []
        for rule in depth_rules:
            if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
                raise ValueError(f"invalid depth rule {rule!r}: expected a (regex, depth) pair")
            pattern, depth = rule
            if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
                raise ValueError(f"invalid depth {depth!r} in rule {rule!r}: expected an int >= 0")
            try:
                compiled.append((re.compile(pattern), depth))
            except re.error as error:
                raise ValueError(f"invalid regex {pattern!r} in depth_rules: {error}") from None

        def rule_fn(name: str) -> int | None:
            for regex, depth in compiled:
                if regex.search(name):
                    return depth
            return None

    depths = dict(base.depths) if base is not None else {}
    unassigned = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = rule_fn(canonical_name(name))
        if depth is not None:
            if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
                raise ValueError(f"depth_rules returned {depth!r} for {name!r}: expected an int >= 0")
            depths[name] = depth
        elif name not in depths:
            unassigned.append(name)
    if unassigned:
        raise ValueError(
            f"depth_rules leave {len(unassigned)} trainable parameters of {type(model).__name__} without "
            f"a depth, for example {unassigned[:5]}; add a rule that matches them"
        )
    names = dict(base.depth_names) if base is not None else {}
    for depth in set(depths.values()):
        names.setdefault(depth, f"depth_{depth}")
    num_layers = base.num_layers if base is not None else max(0, len(set(depths.values())) - 2)
    return DepthMap(depths=depths, depth_names=names, num_layers=num_layers)


def discover_depths(
    model: nn.Module,
    *,
    layer_pattern: str | None = None,
    depth_rules: DepthRules | None = None,
) -> DepthMap:
    """Assign a depth to every trainable parameter of ``model``.

    By default the layer stack is discovered from the module tree. A plain PyTorch model without
    one (an ``nn.Sequential`` MLP, a small CNN) gets one depth per module that owns parameters,
    in registration order; a Transformers model without one raises. ``layer_pattern`` replaces
    discovery with a regular expression whose first group captures the layer index.
    ``depth_rules`` (a list of ``(regex, depth)`` pairs, the first match winning, or a callable
    ``name -> depth | None``) overrides the depth of the parameters it matches. Rules see names
    with wrapper prefixes removed (see :func:`canonical_name`). With rules that cover
    every trainable parameter, no stack is needed.

    When layers share weights (ALBERT), a ``UserWarning`` says so and each shared block gets one
    depth.

    Raises:
        ValueError: if no layer stack is found and no override covers the model.
    """
    base: DepthMap | None
    if layer_pattern is not None:
        base = _depths_from_pattern(model, layer_pattern)
    else:
        stacks = _find_layer_stacks(model)
        base = None
        if stacks:
            shared_message = _shared_blocks_message(model, stacks)
            if shared_message is not None:
                warnings.warn(shared_message, stacklevel=2)
            base = _depths_from_stacks(model, stacks)
        elif not _is_transformers_model(model):
            base = _depths_from_module_order(model)

    if depth_rules is not None:
        return _apply_depth_rules(model, base, depth_rules)
    if base is None:
        suggestion = _suggest_layer_pattern(model)
        hint = f" For this model, try layer_pattern=r'{suggestion}'." if suggestion else ""
        raise ValueError(
            f"could not find the layer stack of {type(model).__name__}: no nn.ModuleList of repeated "
            f"blocks was found in its module tree.{hint} {_OVERRIDE_HELP}"
        )
    return base


def _suggest_layer_pattern(model: nn.Module) -> str | None:
    """Guess a ``layer_pattern`` from numbered path components in the parameter names.

    The guess is the prefix followed by an index that covers the most parameters, among prefixes
    with at least two distinct indices (``bert.encoder.layer.0.``, ``bert.encoder.layer.1.``, ...).
    Returns ``None`` when no name has a numbered component.
    """
    counts: Counter[str] = Counter()
    indices: dict[str, set[str]] = {}
    for name, _ in model.named_parameters():
        parts = canonical_name(name).split(".")
        for position, part in enumerate(parts[:-1]):
            if part.isdigit() and position > 0:
                prefix = ".".join(parts[:position])
                counts[prefix] += 1
                indices.setdefault(prefix, set()).add(part)
                break
    candidates = [prefix for prefix, _ in counts.most_common() if len(indices[prefix]) >= 2]
    if not candidates:
        return None
    return "^" + re.escape(candidates[0]) + r"\.(\d+)\."


def _is_transformers_model(model: nn.Module) -> bool:
    # A Transformers model without a block list is a discovery failure, never a reason to fall back
    # to module order, which would give every projection matrix its own depth.
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return any(isinstance(module, PreTrainedModel) for module in model.modules())


def layer_depths(
    model: nn.Module,
    *,
    layer_pattern: str | None = None,
    depth_rules: DepthRules | None = None,
) -> dict[str, int]:
    """Map every trainable parameter name of ``model`` to its depth.

    Depth 0 is the embeddings, ``i + 1`` is layer ``i`` of the stack, and ``num_layers + 1`` is
    everything after the stack (pooler, pre-classifier, classifier). Frozen parameters
    (``requires_grad=False``) are left out. See :func:`discover_depths` for the overrides.
    """
    return discover_depths(model, layer_pattern=layer_pattern, depth_rules=depth_rules).depths


def _trainer_decay_names(model: nn.Module) -> set[str]:
    # Reuse Trainer's own rule (no decay for biases, LayerNorm and other norm weights) so that
    # hf-dals groups and plain Trainer groups agree parameter by parameter.
    from transformers import Trainer

    return set(Trainer.get_decay_parameter_names(None, model))


def depth_param_groups(
    model: nn.Module,
    *,
    lr: float,
    layer_lr_decay: float = 1.0,
    weight_decay: float = 0.0,
    no_decay: Iterable[str] | None = None,
    layer_pattern: str | None = None,
    depth_rules: DepthRules | None = None,
) -> list[dict]:
    """Build optimizer parameter groups, one per (depth, decay or no decay) pair.

    Each group's peak learning rate is ``lr * layer_lr_decay ** (max_depth - depth)``: the top
    depth trains at ``lr`` and each depth below at ``layer_lr_decay`` times the one above.
    Biases and norm weights get no weight decay, by the rule ``Trainer.get_decay_parameter_names``
    applies; ``no_decay`` replaces that rule with a list of name substrings.

    Each group has the keys ``params``, ``name``, ``depth``, ``depth_name``, ``depth_ratio``
    (``depth / max_depth``), ``lr``, ``lr_scale`` and ``weight_decay``. Every trainable parameter
    lands in exactly one group, and this is checked before returning.

    Raises:
        ValueError: on an invalid argument, when the layer stack cannot be found, or when the
            coverage check fails.
    """
    if not lr >= 0:
        raise ValueError(f"invalid lr: {lr} (expected lr >= 0)")
    if not 0.0 < layer_lr_decay <= 1.0:
        raise ValueError(f"invalid layer_lr_decay: {layer_lr_decay} (expected 0 < layer_lr_decay <= 1)")
    if not weight_decay >= 0:
        raise ValueError(f"invalid weight_decay: {weight_decay} (expected weight_decay >= 0)")

    decays = _decay_rule(model, no_decay)
    depth_map = discover_depths(model, layer_pattern=layer_pattern, depth_rules=depth_rules)

    top = depth_map.max_depth
    buckets: dict[tuple[int, bool], list] = {}
    for name, param in model.named_parameters():
        if name not in depth_map.depths:
            continue
        buckets.setdefault((depth_map.depths[name], decays(name)), []).append(param)

    groups = []
    for (depth, with_decay), params in sorted(buckets.items(), key=lambda item: (item[0][0], not item[0][1])):
        depth_name = depth_map.depth_names[depth]
        lr_scale = layer_lr_decay ** (top - depth)
        groups.append(
            {
                "params": params,
                "name": f"{depth_name}.{'decay' if with_decay else 'no_decay'}",
                "depth": depth,
                "depth_name": depth_name,
                "depth_ratio": depth_map.depth_ratio(depth),
                "lr": lr * lr_scale,
                "lr_scale": lr_scale,
                "weight_decay": weight_decay if with_decay else 0.0,
            }
        )
    check_param_coverage(model, groups)
    return groups


def decay_param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    no_decay: Iterable[str] | None = None,
) -> list[dict]:
    """Build the two groups plain Trainer uses: weights with decay, biases and norms without.

    For strategies that treat every depth alike. The groups are named ``decay`` and ``no_decay``
    and carry no depth metadata; empty groups are left out. Coverage is checked before returning.
    """
    if not lr >= 0:
        raise ValueError(f"invalid lr: {lr} (expected lr >= 0)")
    if not weight_decay >= 0:
        raise ValueError(f"invalid weight_decay: {weight_decay} (expected weight_decay >= 0)")
    decays = _decay_rule(model, no_decay)
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if decays(n)], "name": "decay", "lr": lr, "weight_decay": weight_decay},
        {"params": [p for n, p in trainable if not decays(n)], "name": "no_decay", "lr": lr, "weight_decay": 0.0},
    ]
    groups = [group for group in groups if group["params"]]
    check_param_coverage(model, groups)
    return groups


def _decay_rule(model: nn.Module, no_decay: Iterable[str] | None) -> Callable[[str], bool]:
    if no_decay is None:
        decay_names = _trainer_decay_names(model)
        return lambda name: name in decay_names
    if isinstance(no_decay, str):
        raise ValueError(f"invalid no_decay {no_decay!r}: expected a list of name substrings, not a string")
    substrings = list(no_decay)
    return lambda name: not any(s in name for s in substrings)


def check_param_coverage(model: nn.Module, param_groups) -> None:
    """Raise ``ValueError`` unless every trainable parameter is in exactly one group.

    ``param_groups`` is a list of group dictionaries or an optimizer (its ``param_groups`` are
    read, through any wrapper that exposes them). A frozen parameter inside a group is an error
    too, because it hides a configuration mistake.
    """
    groups = getattr(param_groups, "param_groups", param_groups)
    counts: Counter[int] = Counter(id(p) for group in groups for p in group["params"])
    names = {id(p): name for name, p in model.named_parameters()}
    trainable = {id(p) for _, p in model.named_parameters() if p.requires_grad}

    duplicated = [names.get(pid, "<not a model parameter>") for pid, count in counts.items() if count > 1]
    missing = [names[pid] for pid in trainable if pid not in counts]
    unexpected = [names.get(pid, "<not a model parameter>") for pid in counts if pid not in trainable]
    problems = []
    if missing:
        problems.append(f"{len(missing)} trainable parameters are in no group, for example {missing[:5]}")
    if duplicated:
        problems.append(f"{len(duplicated)} parameters are in more than one group, for example {duplicated[:5]}")
    if unexpected:
        problems.append(
            f"{len(unexpected)} grouped parameters are frozen or not part of the model, for example {unexpected[:5]}"
        )
    if problems:
        raise ValueError(f"parameter groups do not cover {type(model).__name__} exactly: " + "; ".join(problems))


def describe_param_groups(param_groups) -> str:
    """Return a plain-text table of the groups: name, depth, parameter count, lr, weight decay."""
    groups = getattr(param_groups, "param_groups", param_groups)
    header = ("group", "depth", "#params", "lr", "weight decay")
    rows = []
    for index, group in enumerate(groups):
        rows.append(
            (
                str(group.get("name", f"group_{index}")),
                str(group.get("depth", "-")),
                f"{sum(p.numel() for p in group['params']):,}",
                f"{group.get('lr', float('nan')):.3g}",
                f"{group.get('weight_decay', 0.0):.3g}",
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths)))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
