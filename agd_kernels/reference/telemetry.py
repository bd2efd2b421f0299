"""Per-tensor telemetry sums: what an update kernel accumulates, in the pass it already makes, when
telemetry is on (docs/telemetry.md).

Five sums per parameter tensor, in this column order of the sums buffer:
  w_sq = Σ w²        the weight before the update
  g_sq = Σ g²        the gradient as the loss defines it: unscaled by AMP's grad_scale, never negated by
                     `maximize`, before weight decay is folded in
  w_g  = Σ w·g
  d_sq = Σ Δw²       Δw = w_new − w, the update as applied (rounded into the parameter's dtype)
  w_d  = Σ w·Δw
Everything a practitioner reads per layer (norms, update/weight ratio, the angle between w and w_new)
follows from these five without another pass (agd_kernels.telemetry.layer_stats).
"""
from __future__ import annotations

import torch
from torch import Tensor

#: Column order of a sums buffer of shape (tensors, NUM_SUMS).
SUMS = ("w_sq", "g_sq", "w_g", "d_sq", "w_d")
NUM_SUMS = len(SUMS)


def telemetry_sums(w_old: Tensor, grad: Tensor, w_new: Tensor, grad_scale: Tensor | None = None) -> Tensor:
    """The five sums of one tensor in fp64 (each product formed from the stored values, in fp64).

    `grad` is the raw `.grad` the step read; `grad_scale` is GradScaler's scale it was multiplied by.
    """
    w = w_old.detach().double().reshape(-1)
    g = grad.detach().double().reshape(-1)
    if grad_scale is not None:
        g = g / grad_scale.double()
    d = w_new.detach().double().reshape(-1) - w
    return torch.stack([w.dot(w), g.dot(g), w.dot(g), d.dot(d), w.dot(d)])
