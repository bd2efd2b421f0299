"""Per-slice sums of squares: the one reduction AGD, LAMB and YellowFin build on."""
from __future__ import annotations

import math

from torch import Tensor

from ._common import upcast


def num_slices(shape) -> int:
    """Slices of a tensor: one per kernel tap (prod(shape[2:])) for rank >= 2, else 1."""
    return math.prod(shape[2:]) if len(shape) >= 2 else 1


def slice_sumsq_(tensors: list[Tensor], out: Tensor) -> None:
    """out[k] = Σ x² over slice k, fp32 accumulation (fp64 for fp64 tensors) (see agd_kernels.ops.slice_sumsq_)."""
    slots = sum(num_slices(t.shape) for t in tensors)
    if slots != out.numel():  # checked before the first write, so a bad call changes nothing
        raise ValueError(f"slice_sumsq_: out has {out.numel()} slots but the tensors have {slots} slices")
    pos = 0
    for t in tensors:
        n = num_slices(t.shape)
        x = upcast(t)
        if t.dim() >= 2:
            # (o, i, *k) -> sum over (o, i) at each tap, taps in row-major order
            sums = x.square().sum(dim=(0, 1)).reshape(-1)
        else:
            sums = x.square().sum().reshape(1)
        out[pos:pos + n].copy_(sums)
        pos += n
