"""AGD (automatic gradient descent): the update op of specs/agd.md §5 (decisions) and §6 (kernel plan).

The norm pass is `slice_sumsq_` (sumsq.py); this module holds the scalar phase (G, eta) and the update.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import commit, skip_mask, upcast


def target_scale(shape) -> float:
    """sv = √(out / (in · Π kernel dims)) for a weight of rank >= 2 (decision 2), in double."""
    if len(shape) < 2:
        raise ValueError(f"target_scale needs a tensor of rank >= 2, got shape {tuple(shape)}")
    return math.sqrt(shape[0] / (shape[1] * math.prod(shape[2:])))


def eta_from_g(G: Tensor) -> Tensor:
    """eta = log((1 + √(1 + 4G)) / 2) in the stable form log1p(2G / (1 + √(1 + 4G))) (decision 3)."""
    return torch.log1p(2 * G / (1 + torch.sqrt(1 + 4 * G)))


def agd_step_(params: list[Tensor], grads: list[Tensor], sumsq: Tensor, slice_sv: Tensor, slice_start: list[int],
              slice_count: list[int], depth: int, gain: float, grad_scale: Tensor | None,
              found_inf: Tensor | None) -> tuple[Tensor, Tensor]:
    skip = skip_mask(found_inf)
    sumsq, slice_sv = upcast(sumsq), upcast(slice_sv)
    norms = sumsq.sqrt()  # per-slice norms of the (possibly scaled) gradients
    G = (slice_sv * norms).sum() / depth
    if grad_scale is not None:
        # Norms scale linearly with the loss scale; the coefficients below do not depend on it,
        # because sv/‖g‖ applied to g is scale-free: only G needs unscaling.
        G = G / grad_scale
    eta = eta_from_g(G)
    step = gain * eta / depth
    for p, g, start, count in zip(params, grads, slice_start, slice_count, strict=True):
        sv = slice_sv[start]
        if p.dim() >= 2:
            n = norms[start:start + count]
            coef = torch.where(n > 0, step * sv / n, 0.0).reshape(1, 1, *p.shape[2:])
        else:  # follower: the owner's whole-gradient norm, all taps pooled
            n = sumsq[start:start + count].sum().sqrt()
            coef = torch.where(n > 0, step * sv / n, 0.0)
        commit(p, upcast(p) - coef * upcast(g), skip)
    if skip is not None:
        zero = torch.zeros((), dtype=G.dtype, device=G.device)
        eta, G = torch.where(skip, zero, eta), torch.where(skip, zero, G)
    return eta, G
