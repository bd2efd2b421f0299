"""LAMB: apex FusedLAMB semantics and the paper variant (docs/lamb.md §3), as two ops per group.

The global gradient norm comes in as `grad_sumsq` (from `slice_sumsq_` over every group's gradients,
so the clip spans all groups). `lamb_moments_` takes the clip, the moments and the direction u, and
writes each tensor's Σp² and Σu² into `norms`; the caller may sum `norms` across ranks (sharded
parameters hold partial sums); `lamb_apply_` then takes the trust ratio from them and updates p.

Deferred moments (part of the spec): bf16/fp16 moments round when stored, and u must come from the
unrounded ones (a v of 1e-11 is 0 in fp16, leaving u = m̂/eps: kernels that took u from stored fp16
moments moved parameters by up to 5.8e3). So for 16-bit parameters `lamb_moments_` leaves m and v
untouched, and `lamb_apply_` recomputes m', v' from them and the gradient with the same arithmetic,
stores them and takes u from them. fp32/fp64 moments are stored by `lamb_moments_` and read back by
`lamb_apply_`: storing rounds nothing there, so both ops see the same u.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import telemetry as _telemetry
from ._common import advance, commit, grad_in, round_into, skip_mask, upcast

_DEFERRED = (torch.float16, torch.bfloat16)


def defers_moments(dtype: torch.dtype) -> bool:
    """True when lamb_apply_, not lamb_moments_, stores the moments of parameters of `dtype`."""
    return dtype in _DEFERRED


def clip_divisor(grad_sumsq: Tensor, max_grad_norm: float, grad_scale: Tensor | None) -> Tensor:
    """k = N/max_grad_norm when the global norm N exceeds max_grad_norm, else 1 (0-d, fp64 scalar
    math like the bias corrections).

    As in apex, a NaN N fails the comparison (k = 1) and an inf N gives k = inf: either way the
    non-finite values propagate. max_grad_norm = inf never clips.
    """
    norm = grad_sumsq.double().sum().sqrt()
    if grad_scale is not None:
        norm = norm / grad_scale
    return torch.where(norm > max_grad_norm, norm / max_grad_norm, torch.ones_like(norm))


def trust_ratio(p_sumsq: Tensor, u_sumsq: Tensor, phi_min: float, phi_max: float) -> Tensor:
    """φ(‖p‖)/‖u‖ from Σp² and Σu², with φ(z) = clamp(z, phi_min, phi_max); 1 when either norm is 0
    (0-d, in the sums' dtype).

    `!= 0`, as apex tests it: a NaN norm gives a NaN ratio, so a NaN reaches the whole tensor.
    """
    p_norm, u_norm = p_sumsq.sqrt(), u_sumsq.sqrt()
    ratio = p_norm.clamp(phi_min, phi_max) / u_norm
    return torch.where((p_norm != 0) & (u_norm != 0), ratio, torch.ones_like(ratio))


def _check_norms(op: str, norms: Tensor, n: int) -> None:
    if norms.dtype not in (torch.float64, torch.float32):
        raise TypeError(f"{op}: norms must be float64 (or float32); got {norms.dtype}")
    if norms.dim() != 1 or norms.numel() != 2 * n:
        raise ValueError(f"{op}: norms must be 1-D with 2 slots per tensor of params ({2 * n}); got shape "
                         f"{list(norms.shape)}")


def _moments(p: Tensor, g: Tensor, m: Tensor, v: Tensor, t: Tensor, clip: Tensor, beta1: float, beta2: float,
             eps: float, weight_decay: float, bias_correction: bool, grad_averaging: bool, adam_w_mode: bool,
             grad_scale: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(p, m', v', u) in the math dtype: the moments from the clipped gradient, and the direction."""
    g = grad_in(g, grad_scale) / clip
    p32 = upcast(p)
    if not adam_w_mode and weight_decay != 0:
        g = g + weight_decay * p32  # L2 mode: decay enters the moments, after the clip (apex mode 0)
    beta3 = 1 - beta1 if grad_averaging else 1.0
    m32 = upcast(m) * beta1 + beta3 * g
    v32 = upcast(v) * beta2 + (1 - beta2) * g * g
    return p32, m32, v32, _direction(p32, m32, v32, t, beta1, beta2, eps, weight_decay, bias_correction,
                                     adam_w_mode)


def _direction(p32: Tensor, m32: Tensor, v32: Tensor, t: Tensor, beta1: float, beta2: float, eps: float,
               weight_decay: float, bias_correction: bool, adam_w_mode: bool) -> Tensor:
    """u = (m/bc1)/(√(v/bc2) + eps) (+ weight_decay·p in adam_w_mode)."""
    # Bias corrections as fp64 scalars from the fp32 step counter, as for Adam.
    bc1 = 1 - beta1 ** t if bias_correction else 1.0
    bc2 = 1 - beta2 ** t if bias_correction else 1.0
    u = (m32 / bc1) / ((v32 / bc2).sqrt() + eps)
    if adam_w_mode and weight_decay != 0:
        u = u + weight_decay * p32
    return u


def lamb_moments_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                  state_steps: list[Tensor], grad_sumsq: Tensor, norms: Tensor, max_grad_norm: float, beta1: float,
                  beta2: float, eps: float, weight_decay: float, bias_correction: bool, grad_averaging: bool,
                  adam_w_mode: bool, grad_scale: Tensor | None, found_inf: Tensor | None,
                  telemetry: Tensor | None = None) -> None:
    _check_norms("lamb_moments_", norms, len(params))
    _telemetry.check("lamb_moments_", telemetry, params)
    skip = skip_mask(found_inf)
    clip = clip_divisor(grad_sumsq, max_grad_norm, grad_scale)
    sums = []
    for p, g, m, v, step in zip(params, grads, exp_avgs, exp_avg_sqs, state_steps, strict=True):
        t = advance(step, skip)
        p32, m32, v32, u = _moments(p, g, m, v, t, clip, beta1, beta2, eps, weight_decay, bias_correction,
                                    grad_averaging, adam_w_mode, grad_scale)
        if not defers_moments(p.dtype):
            commit(m, m32, skip)
            commit(v, v32, skip)
        sums += [p32.square().sum(), u.square().sum()]  # p before the update
    if sums:
        commit(norms, torch.stack(sums).to(norms.dtype), skip)
    # The weight is not written here: w_sq, g_sq and w_g only (lamb_apply_ adds d_sq and w_d).
    _telemetry.accumulate_(telemetry, params, grads, params, grad_scale, skip, _telemetry.READ_SUMS)


def lamb_apply_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                state_steps: list[Tensor], lr: Tensor, grad_sumsq: Tensor, norms: Tensor, max_grad_norm: float,
                beta1: float, beta2: float, eps: float, weight_decay: float, bias_correction: bool,
                grad_averaging: bool, adam_w_mode: bool, use_trust_ratio: bool, phi_min: float, phi_max: float,
                grad_scale: Tensor | None, found_inf: Tensor | None, model_params: list[Tensor],
                telemetry: Tensor | None = None) -> None:
    _check_norms("lamb_apply_", norms, len(params))
    _telemetry.check("lamb_apply_", telemetry, params)
    skip = skip_mask(found_inf)
    before = _telemetry.snapshot(telemetry, params)
    clip = clip_divisor(grad_sumsq, max_grad_norm, grad_scale)
    lr64 = lr.double()
    for i, (p, g, m, v, step) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, state_steps, strict=True)):
        t = step.double()  # advanced by lamb_moments_
        if defers_moments(p.dtype):
            p32, m32, v32, u = _moments(p, g, m, v, t, clip, beta1, beta2, eps, weight_decay, bias_correction,
                                        grad_averaging, adam_w_mode, grad_scale)
            commit(m, m32, skip)
            commit(v, v32, skip)
        else:
            p32 = upcast(p)
            u = _direction(p32, m, v, t, beta1, beta2, eps, weight_decay, bias_correction, adam_w_mode)
        # the ratio multiplies lr (apex: lr·‖p‖/‖u‖)
        step_size = lr64 * trust_ratio(norms[2 * i], norms[2 * i + 1], phi_min, phi_max) if use_trust_ratio else lr64
        commit(p, p32 - step_size * u, skip)
    round_into(model_params, params, skip)
    _telemetry.accumulate_(telemetry, before, grads, params, grad_scale, skip, _telemetry.UPDATE_SUMS)
