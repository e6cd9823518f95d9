"""Norms of whole parameters when each process holds only a shard (FSDP2, tensor parallelism).

Under ``torch.distributed.fsdp.fully_shard`` every parameter is a ``DTensor``, and each process
stores one shard of it. The norm of that shard is not the norm of the parameter. The optimizers of
hf-dals step on the local shards with multi-tensor kernels and take the norms they need from
:func:`full_tensor_norms`, which sums the squared norms of the shards over the device mesh in one
collective per mesh dimension, never one per tensor.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["dtensor_class", "full_tensor_norms", "has_dtensor", "local_tensors"]


@functools.cache
def dtensor_class() -> type:
    """Return ``torch.distributed.tensor.DTensor``, imported on first use."""
    from torch.distributed.tensor import DTensor

    return DTensor


def has_dtensor(tensors: Sequence[Tensor]) -> bool:
    """Return whether any of ``tensors`` is a ``DTensor``."""
    dtensor = dtensor_class()
    return any(isinstance(tensor, dtensor) for tensor in tensors)


def local_tensors(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Return the shard of each tensor that this process stores; a plain tensor is its own shard.

    The shards share storage with the ``DTensor``, so in-place updates of a shard update the
    parameter or the optimizer state.
    """
    dtensor = dtensor_class()
    return [tensor.to_local() if isinstance(tensor, dtensor) else tensor for tensor in tensors]


def _reduction_groups(tensor: Tensor) -> tuple:
    """Return the process groups over which the shards of ``tensor`` must be summed.

    One group per mesh dimension along which ``tensor`` is split (``Shard``, and the strided
    shards of FSDP2 combined with tensor parallelism); replicated dimensions add nothing.
    """
    if not isinstance(tensor, dtensor_class()):
        return ()
    groups = []
    for mesh_dim, placement in enumerate(tensor.placements):
        if placement.is_replicate():
            continue
        if placement.is_partial():
            raise NotImplementedError(
                f"a parameter with placement {placement} (a partial sum) has no norm per shard; "
                "shard or replicate the parameters (FSDP2 and tensor parallelism do)"
            )
        groups.append(tensor.device_mesh.get_group(mesh_dim))
    return tuple(groups)


def full_tensor_norms(layouts: Sequence[Tensor], *local_lists: Sequence[Tensor]) -> list[Tensor]:
    """Return, for each list in ``local_lists``, a 1-D tensor with the 2-norm of every full tensor.

    Entry ``i`` of each list is this process's shard of a tensor laid out like ``layouts[i]``: a
    ``DTensor`` (a parameter) or a plain tensor, which is whole. With no ``DTensor`` in
    ``layouts`` the result is ``torch._foreach_norm`` of each list, with no communication.
    Otherwise the squared shard norms of all lists are stacked into one tensor and summed with one
    ``all_reduce`` per distinct set of sharded mesh dimensions: one call in all under FSDP2's
    one-dimensional mesh. The sums are taken in at least float32 and the norms are returned in
    the dtype of each list. Nothing is read on the host, so no device synchronisation happens.
    An empty shard (uneven ``Shard(0)``) contributes 0.
    """
    if not local_lists:
        return []
    for tensors in local_lists:
        if len(tensors) != len(layouts):
            raise ValueError(f"got {len(tensors)} local tensors for {len(layouts)} layouts (expected one each)")
    if not layouts:
        return [torch.empty(0) for _ in local_lists]
    if not has_dtensor(layouts):
        return [torch.stack(torch._foreach_norm(list(tensors))) for tensors in local_lists]

    dtypes = [tensors[0].dtype for tensors in local_lists]
    sum_dtype = functools.reduce(torch.promote_types, dtypes, torch.float32)
    squares = torch.stack(
        [torch.stack(torch._foreach_norm(list(tensors))).to(sum_dtype).square() for tensors in local_lists]
    )

    keys = [_reduction_groups(tensor) for tensor in layouts]
    for key in dict.fromkeys(keys):
        if not key:
            continue
        columns = [index for index, other in enumerate(keys) if other == key]
        if len(columns) == len(keys):
            for group in key:
                dist.all_reduce(squares, group=group)
            continue
        index = torch.tensor(columns, device=squares.device)
        block = squares.index_select(1, index)
        for group in key:
            dist.all_reduce(block, group=group)
        squares.index_copy_(1, index, block)

    norms = squares.sqrt()
    return [row.to(dtype) for row, dtype in zip(norms.unbind(0), dtypes)]
