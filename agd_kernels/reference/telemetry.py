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
#: The columns an op adds. Ops that read the gradient and write the weight in one pass add all five;
#: LAMB splits them over its two phases: lamb_moments_ (reads p and g, writes no weight) adds READ_SUMS,
#: lamb_apply_ (its fp32 path reads no gradient) adds UPDATE_SUMS.
ALL_SUMS = (0, 1, 2, 3, 4)
READ_SUMS = (0, 1, 2)
UPDATE_SUMS = (3, 4)


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


def check(op: str, telemetry: Tensor | None, params: list[Tensor]) -> None:
    """The argument check every backend makes on an op's `telemetry` buffer (before anything is written)."""
    if telemetry is None:
        return
    shape = (len(params), NUM_SUMS)
    if telemetry.dtype != torch.float32 or tuple(telemetry.shape) != shape or not telemetry.is_contiguous():
        raise ValueError(f"{op}: telemetry must be a contiguous float32 tensor of shape {shape} (one row of "
                         f"{SUMS} per parameter); got {telemetry.dtype} of shape {tuple(telemetry.shape)}")
    if params and telemetry.device != params[0].device:
        raise RuntimeError(f"{op}: telemetry is on {telemetry.device}; expected the params' device "
                           f"{params[0].device}")


def snapshot(telemetry: Tensor | None, params: list[Tensor]) -> list[Tensor] | None:
    """The weights before an op, kept when it accumulates telemetry."""
    return None if telemetry is None else [p.detach().clone() for p in params]


def accumulate_(telemetry: Tensor | None, before: list[Tensor] | None, grads: list[Tensor], params: list[Tensor],
                grad_scale: Tensor | None, skip: Tensor | None, columns: tuple[int, ...] = ALL_SUMS) -> None:
    """telemetry[i, columns] += those sums of tensor i (fp64, rounded once to fp32), unless `skip` (found_inf)."""
    if telemetry is None or not params:
        return
    rows = torch.stack([telemetry_sums(w, g, p, grad_scale) for w, g, p in zip(before, grads, params)])
    if skip is not None:
        rows = torch.where(skip, torch.zeros_like(rows), rows)
    cols = list(columns)
    telemetry[:, cols] += rows[:, cols].to(telemetry.device, torch.float32)
