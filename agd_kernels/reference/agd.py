"""AGD (automatic gradient descent): the update op of docs/agd.md §5 (decisions) and §6 (kernel plan).

The norm pass is `slice_sumsq_` (sumsq.py); this module holds the scalar phase (G, eta) and the update.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import telemetry as _telemetry
from ._common import commit, round_into, skip_mask, upcast
from .sumsq import num_slices


def target_scale(shape) -> float:
    """sv = √(out / (in · Π kernel dims)) for a weight of rank >= 2 (decision 2), in double.

    A weight with no elements gets 0: it has nothing to update, and sv·‖g‖ = 0·0 keeps G finite where
    √(out/0) would be inf (e.g. nn.Linear(0, 5), weight (5, 0)) and inf·0 would make G NaN.
    """
    if len(shape) < 2:
        raise ValueError(f"target_scale needs a tensor of rank >= 2, got shape {tuple(shape)}")
    if math.prod(shape) == 0:
        return 0.0
    return math.sqrt(shape[0] / (shape[1] * math.prod(shape[2:])))


def eta_from_g(G: Tensor) -> Tensor:
    """eta = log((1 + √(1 + 4G)) / 2) (decision 3), evaluated as log1p(G / (½ + √(¼ + G))).

    That is the spec's log1p(2G / (1 + √(1 + 4G))) with 2 cancelled: the same value to rounding
    (measured ≤ 1.8e-7 = 1.5 ulp relative in fp32 over normal G up to 3e38, against a 60-digit
    evaluation), with no cancellation for small G (eta ≈ G, where the naive fp32 form gives 0 below
    G = 1.5e-8) and no overflow for large G (4G overflows fp32 above 8.5e37, where the spec form
    returns 0, then NaN). G = +inf or NaN gives NaN.
    """
    return torch.log1p(G / (0.5 + torch.sqrt(0.25 + G)))


def check_step_args(params: list[Tensor], grads: list[Tensor], sumsq: Tensor, slice_sv: Tensor,
                    slice_start: list[int], slice_count: list[int], depth: int) -> None:
    """Raise ValueError naming the argument when the slot table does not describe the tensors.

    Only Python ints and tensor metadata are read: no host sync, cheap enough for every step.
    """
    n = len(params)
    for name, seq in (("grads", grads), ("slice_start", slice_start), ("slice_count", slice_count)):
        if len(seq) != n:
            raise ValueError(f"agd_step_: {name} has {len(seq)} entries; expected one per parameter ({n})")
    if depth < 1:
        raise ValueError(f"agd_step_: depth must be >= 1 (the number of weights in G); got {depth}")
    if sumsq.dim() != 1 or slice_sv.shape != sumsq.shape:
        raise ValueError(f"agd_step_: sumsq and slice_sv must be 1-D with one entry per slot; got shapes "
                         f"{tuple(sumsq.shape)} and {tuple(slice_sv.shape)}")
    slots = sumsq.numel()
    for i, (p, g, start, count) in enumerate(zip(params, grads, slice_start, slice_count)):
        if g.shape != p.shape:
            raise ValueError(f"agd_step_: grads[{i}] has shape {tuple(g.shape)}; expected params[{i}]'s "
                             f"{tuple(p.shape)}")
        if p.dim() >= 2 and count != num_slices(p.shape):
            raise ValueError(f"agd_step_: slice_count[{i}] = {count}; a weight of shape {tuple(p.shape)} has "
                             f"{num_slices(p.shape)} taps")
        if start < 0 or count < 0 or start + count > slots:
            raise ValueError(f"agd_step_: slots [{start}, {start + count}) of params[{i}] lie outside sumsq "
                             f"({slots} slots)")


def agd_step_(params: list[Tensor], grads: list[Tensor], sumsq: Tensor, slice_sv: Tensor, slice_start: list[int],
              slice_count: list[int], depth: int, gain: float, grad_scale: Tensor | None,
              found_inf: Tensor | None, model_params: list[Tensor],
              telemetry: Tensor | None = None) -> tuple[Tensor, Tensor]:
    check_step_args(params, grads, sumsq, slice_sv, slice_start, slice_count, depth)
    _telemetry.check("agd_step_", telemetry, params)
    skip = skip_mask(found_inf)
    before = _telemetry.snapshot(telemetry, params)
    sumsq, slice_sv = upcast(sumsq), upcast(slice_sv)
    norms = sumsq.sqrt()  # per-slice norms of the (possibly scaled) gradients
    G = (slice_sv * norms).sum() / depth
    if grad_scale is not None:
        # Norms scale linearly with the loss scale; the coefficients below do not depend on it,
        # because sv/‖g‖ applied to g is scale-free: only G needs unscaling.
        G = G / grad_scale
    eta = eta_from_g(G)
    step = gain * eta / depth
    for p, g, start, count in zip(params, grads, slice_start, slice_count):
        if count == 0:
            continue  # a weight with a zero-size kernel dim, or a follower of one: no slots, nothing to move
        # Only an exactly zero sum is guarded (decision 4); `n == 0`, not `n > 0`, so a NaN norm
        # still poisons its slice (decision 8: non-finite gradients propagate).
        if p.dim() >= 2:
            n, sv = norms[start:start + count], slice_sv[start:start + count]
            coef = torch.where(n == 0, 0.0, step * sv / n).reshape(1, 1, *p.shape[2:])
        else:  # follower: the owner's whole-gradient norm, all taps pooled
            n = sumsq[start:start + count].sum().sqrt()
            coef = torch.where(n == 0, 0.0, step * slice_sv[start] / n)
        commit(p, upcast(p) - coef * upcast(g), skip)
    round_into(model_params, params, skip)
    _telemetry.accumulate_(telemetry, before, grads, params, grad_scale, skip)
    if skip is not None:
        zero = torch.zeros((), dtype=G.dtype, device=G.device)
        eta, G = torch.where(skip, zero, eta), torch.where(skip, zero, G)
    return eta, G
