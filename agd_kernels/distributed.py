"""Sharded parameters (FSDP2 / DTensor): local shards for the kernels, and the one all-reduce per step.

Kernels run on local shards (`local`, `unwrap`). The whole-tensor quantities of AGD, LAMB and
YellowFin (sums of squares per tap, ‖p‖² and ‖u‖², YellowFin's sums) are sums over elements, so
each rank writes the sums over its own shard into one flat buffer and ONE all-reduce of that buffer
per step completes them (`Partials.reduce_`). The buffer is summed over the mesh dims that shard
some parameter; a tensor that is a replica along such a dim (a plain tensor, or Replicate there)
would be counted once per replica, so only the replica at coordinate 0 of those dims keeps its
partial sums and the others zero them before the all-reduce: adding zeros is exact, and the buffer
still goes out in one collective (docs/distributed.md).

Nothing here syncs with the host: the buffer stays on the device and the zeroing is one index_fill_.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

try:  # import never fails (docs/design.md rule 6): torch builds without distributed support have no DTensor
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _HAVE_DTENSOR = dist.is_available()
except ImportError:  # pragma: no cover - every torch this project supports has it
    _HAVE_DTENSOR = False
    DTensor = Partial = Replicate = Shard = distribute_tensor = compute_local_shape_and_global_offset = None


def is_dtensor(t: Any) -> bool:
    return _HAVE_DTENSOR and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (the same storage: in-place writes reach the DTensor), else `t`.

    Under no_grad to_local() returns the local tensor itself, without an autograd node."""
    return t.to_local() if is_dtensor(t) else t


def flat_offset(t: Tensor) -> int:
    """Where a DTensor's local shard starts in the row-major numbering of its global elements (0 for a
    plain tensor): the shard of a tensor sharded along dim 0 only (FSDP2's Shard(0), HSDP's Replicate
    and Shard(0)) is one run of that numbering, so its k-th element is global element offset + k.
    Stochastic rounding draws each element's bits from that global index, so shards round as the whole
    tensor does. Any other layout (Shard(d) for d > 0, strided shards of FSDP2 over tensor parallelism,
    Partial) scatters a shard over the numbering: ValueError saying which placement."""
    if not is_dtensor(t):
        return 0
    for d, placement in enumerate(t.placements):
        if not (type(placement) is Replicate or (type(placement) is Shard and placement.dim == 0)):
            raise ValueError(f"placement {placement} on mesh dim {d}: only Shard(0) and Replicate keep a local "
                             "shard one run of the tensor's elements")
    _, start = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    row = 1
    for n in t.shape[1:]:
        row *= n
    return start[0] * row if t.dim() else 0


def unwrap(args: Sequence[Any]) -> list[Any]:
    """`args` of an op call with every DTensor, alone or in a list, replaced by its local shard.

    A list is unwrapped when its first tensor is a DTensor: optimizers bucket DTensors apart from
    plain tensors (FusedOptimizer), so lists are never mixed."""
    out = []
    for a in args:
        if isinstance(a, (list, tuple)) and a and is_dtensor(a[0]):
            a = [local(t) for t in a]
        elif is_dtensor(a):
            a = local(a)
        out.append(a)
    return out


def all_reduce_(buffer: Tensor, group) -> None:
    """Sum `buffer` in place over `group`: the one collective an optimizer step issues per reduction."""
    dist.all_reduce(buffer, group=group)


def _sum_group(mesh, dims: set[int]):
    """The process group spanning the mesh dims `dims` (the ranks whose partial sums add up)."""
    if len(dims) == 1:
        return mesh.get_group(next(iter(dims)))
    if len(dims) == mesh.ndim and mesh.size() == dist.get_world_size():
        return dist.group.WORLD
    names = mesh.mesh_dim_names
    if names is None:
        raise ValueError(f"parameters are sharded over mesh dims {sorted(dims)} of a {mesh.ndim}-D DeviceMesh "
                         "without mesh_dim_names: name the mesh dims so agd_kernels can flatten them into one "
                         "process group for the partial sums")
    return mesh[tuple(names[d] for d in sorted(dims))]._flatten().get_group()


def shard_layout(tensors: Sequence[Tensor], describe: Callable[[int], str]) -> tuple[Any, list[bool]]:
    """(process group summing the partial sums of `tensors`, or None when none is sharded; per tensor,
    whether this rank's partial sums count). `describe(i)` names tensor i in errors."""
    mesh, shard_dims = None, set()
    for i, t in enumerate(tensors):
        if not is_dtensor(t):
            continue
        if mesh is None:
            mesh = t.device_mesh
        elif t.device_mesh != mesh:
            raise ValueError(f"{describe(i)} lives on DeviceMesh {t.device_mesh}, another parameter on {mesh}: "
                             "agd_kernels sums whole-tensor statistics over one mesh; give each mesh its own "
                             "optimizer")
        for d, placement in enumerate(t.placements):
            if isinstance(placement, Partial):
                raise ValueError(f"{describe(i)} has a Partial placement on mesh dim {d}; the optimizer needs "
                                 "Shard or Replicate parameters (redistribute it first)")
            if placement.is_shard():
                shard_dims.add(d)
    if not shard_dims:
        return None, [True] * len(tensors)
    coordinate = mesh.get_coordinate()
    # A tensor not sharded along a summed dim is a replica there: only coordinate 0 adds it.
    first_on = {d for d in shard_dims if coordinate[d] == 0}
    keep = []
    for t in tensors:
        replicated = shard_dims - ({d for d, pl in enumerate(t.placements) if pl.is_shard()}
                                   if is_dtensor(t) else set())
        keep.append(replicated <= first_on)
    return _sum_group(mesh, shard_dims), keep


class Partials:
    """Where each tensor's partial sums sit in a step's flat buffer, and how the buffer is summed.

    Built once per parameter set (FusedOptimizer._partials_layout caches it); `reduce_` runs every step.
    """

    def __init__(self, tensors: Sequence[Tensor], spans: Sequence[tuple[int, int]], describe: Callable[[int], str]):
        """`spans[i]` = (first slot, slot count) of tensor i in the buffer (slots of a flattened view), which
        lives on tensors[0]'s device."""
        self.group, keep = shard_layout(tensors, describe)
        zero = [s for (start, count), k in zip(spans, keep) if not k for s in range(start, start + count)]
        # non_blocking: a pageable host-to-device copy is staged without waiting for the device.
        self.zero_index = (torch.tensor(zero, dtype=torch.long).to(tensors[0].device, non_blocking=True)
                           if zero and self.group is not None else None)

    def reduce_(self, buffer: Tensor) -> None:
        """Complete the partial sums in `buffer` across ranks (nothing to do when nothing is sharded)."""
        if self.group is None:
            return
        flat = buffer.view(-1)
        if self.zero_index is not None:
            flat.index_fill_(0, self.zero_index, 0)
        all_reduce_(buffer, self.group)
