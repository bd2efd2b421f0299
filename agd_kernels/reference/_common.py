"""Helpers shared by the reference implementations."""
from __future__ import annotations

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def upcast(t: Tensor) -> Tensor:
    """fp32 view of the math for 16-bit tensors; fp32/fp64 tensors are returned as they are."""
    return t.float() if t.dtype in _LOW_PRECISION else t


def grad_in(g: Tensor, grad_scale: Tensor | None, maximize: bool = False) -> Tensor:
    """The gradient as the update sees it: unscaled (÷ grad_scale) and negated when maximizing."""
    g = upcast(g)
    if grad_scale is not None:
        g = g / grad_scale
    return -g if maximize else g


def skip_mask(found_inf: Tensor | None) -> Tensor | None:
    """0-d bool tensor that is True when the step must change nothing, or None without AMP."""
    return None if found_inf is None else found_inf != 0


def commit(dst: Tensor, new: Tensor, skip: Tensor | None) -> None:
    """Write `new` into `dst` (rounding to dst's dtype) unless `skip` is set; never syncs."""
    if skip is not None:
        new = torch.where(skip, dst.to(new.dtype), new)
    if new is not dst:
        dst.copy_(new)


def advance(step: Tensor, skip: Tensor | None) -> Tensor:
    """Increment a 0-d step counter unless skipping; returns the new value (fp64 for the scalar math)."""
    if skip is None:
        step.add_(1)
    else:
        step.add_((~skip).to(step.dtype))
    return step.double()


def round_into(model_params: list[Tensor], params: list[Tensor], skip: Tensor | None) -> None:
    """The mixed-precision tail of every op that writes parameters (agd_kernels.ops, "Mixed precision"):
    each updated fp32 master rounded to nearest even into its 16-bit model parameter, unless skipping.
    An empty `model_params` writes nothing."""
    if model_params:
        if len(model_params) != len(params):
            raise ValueError(f"model_params has {len(model_params)} tensors, params has {len(params)}")
        for model, master in zip(model_params, params):
            commit(model, master, skip)
