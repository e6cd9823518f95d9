"""Depth-aware parameter groups.

A model is cut into depths from input to output. Depth 0 contains the embeddings, depth
``i + 1`` encoder layer ``i``, and the last depth everything after the layer stack (pooler,
pre-classifier, classifier). The layer stack is found in the module tree: it is the
``nn.ModuleList`` of repeated blocks that holds the most parameters, so no model-specific prefix
is hard-coded. Layer membership is decided by module identity, never by matching names, so
``layer.1.`` can never be confused with ``layer.10.``.

This module knows nothing about optimizers: it returns plain dictionaries that any
``torch.optim.Optimizer`` accepts as parameter groups, with extra metadata keys (``name``,
``depth``, ``depth_name``, ``depth_ratio``, ``lr_scale``) that the optimizers and schedules of
hf-dals read.
"""

from __future__ import annotations

import re
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
    ``head``), and ``num_layers`` is the number of blocks found in the layer stacks.
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


def _is_block_list(module: nn.Module) -> bool:
    if not isinstance(module, nn.ModuleList) or len(module) == 0:
        return False
    first_type = type(module[0])
    return all(type(block) is first_type for block in module) and any(
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


def _common_prefix_length(a: list[str], b: list[str]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def _is_before_stack(model: nn.Module, param_name: str, stack_name: str) -> bool:
    """Decide whether a parameter outside the stacks sits on the input side of ``stack_name``.

    Inside the module that contains the stack (the backbone), children registered before the branch
    that leads to the stack are on the input side (embeddings) and those after it on the output
    side (pooler, final norm). At the root, registration order is not reliable (XLM-RoBERTa
    registers its classifier before its backbone), so a root child is on the input side only if
    it holds an ``nn.Embedding`` (for example T5's shared embedding).
    """
    param_path = param_name.split(".")
    stack_path = stack_name.split(".")
    depth = _common_prefix_length(param_path[:-1], stack_path)
    if depth == 0:
        child = getattr(model, param_path[0])
        return isinstance(child, nn.Module) and any(isinstance(m, nn.Embedding) for m in child.modules())
    parent = model.get_submodule(".".join(param_path[:depth]))
    order = [name for name, _ in parent.named_children()]
    if param_path[depth] not in order:
        # A parameter held directly by a module on the way to the stack: treat it as output side.
        return False
    return order.index(param_path[depth]) < order.index(stack_path[depth])


def _depths_from_stacks(model: nn.Module, stacks: list[tuple[str, nn.ModuleList]]) -> DepthMap:
    # Map each parameter object to (stack position, block index) by identity.
    block_of: dict[int, tuple[int, int]] = {}
    for stack_position, (_, stack) in enumerate(stacks):
        for block_index, block in enumerate(stack):
            for param in block.parameters():
                block_of.setdefault(id(param), (stack_position, block_index))

    offsets = []
    total = 0
    for _, stack in stacks:
        offsets.append(total)
        total += len(stack)
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
        # The nearest stack is the one sharing the longest module path with the parameter.
        path = name.split(".")
        nearest = max(range(len(stacks)), key=lambda k: (_common_prefix_length(path, stack_paths[k]), -k))
        if _is_before_stack(model, name, stacks[nearest][0]):
            depths[name] = 0
        elif nearest == len(stacks) - 1:
            depths[name] = head_depth
        else:
            # After a stack that is not the last one (the encoder's final norm in an
            # encoder-decoder): the parameter belongs with that stack's last block.
            depths[name] = offsets[nearest] + len(stacks[nearest][1])

    names = {0: "embeddings", head_depth: "head"}
    for depth in range(1, total + 1):
        names[depth] = f"layer_{depth - 1}"
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
    repeated blocks. Returns ``None`` when no trainable parameter exists.
    """
    owners = []
    for module_name, module in model.named_modules():
        own = [name for name, param in module.named_parameters(recurse=False) if param.requires_grad]
        if own:
            owners.append((module_name, own))
    if not owners:
        return None

    depths: dict[str, int] = {}
    names: dict[int, str] = {}
    for depth, (module_name, own) in enumerate(owners):
        for name in own:
            depths[f"{module_name}.{name}" if module_name else name] = depth
        names[depth] = canonical_name(module_name) or "root"
    return DepthMap(depths=depths, depth_names=names, num_layers=len(owners))


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

    Raises:
        ValueError: if no layer stack is found and no override covers the model.
    """
    base: DepthMap | None
    if layer_pattern is not None:
        base = _depths_from_pattern(model, layer_pattern)
    else:
        stacks = _find_layer_stacks(model)
        base = _depths_from_stacks(model, stacks) if stacks else None
        if base is None and not _is_transformers_model(model):
            base = _depths_from_module_order(model)

    if depth_rules is not None:
        return _apply_depth_rules(model, base, depth_rules)
    if base is None:
        raise ValueError(
            f"could not find the layer stack of {type(model).__name__}: no nn.ModuleList of repeated "
            f"blocks was found in its module tree. {_OVERRIDE_HELP}"
        )
    return base


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
