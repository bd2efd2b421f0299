"""LAMB: apex FusedLAMB semantics and the paper variant (specs/lamb-lars.md §3), as one op per group.

The global gradient norm comes in as `grad_sumsq` (from `slice_sumsq_` over every group's gradients,
so the clip spans all groups); this module holds the clip, the moments and the trust-ratio update.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import advance, commit, grad_in, skip_mask, upcast


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


def trust_ratio(p32: Tensor, u: Tensor, phi_min: float, phi_max: float) -> Tensor:
    """φ(‖p‖)/‖u‖ with φ(z) = clamp(z, phi_min, phi_max); 1 when either norm is 0 (0-d).

    `!= 0`, as apex tests it: a NaN norm gives a NaN ratio, so a NaN reaches the whole tensor.
    """
    p_norm = p32.square().sum().sqrt()
    u_norm = u.square().sum().sqrt()
    ratio = p_norm.clamp(phi_min, phi_max) / u_norm
    return torch.where((p_norm != 0) & (u_norm != 0), ratio, torch.ones_like(ratio))


def lamb_step_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
               state_steps: list[Tensor], lr: Tensor, grad_sumsq: Tensor, max_grad_norm: float, beta1: float,
               beta2: float, eps: float, weight_decay: float, bias_correction: bool, grad_averaging: bool,
               adam_w_mode: bool, use_trust_ratio: bool, phi_min: float, phi_max: float,
               grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
    skip = skip_mask(found_inf)
    clip = clip_divisor(grad_sumsq, max_grad_norm, grad_scale)
    beta3 = 1 - beta1 if grad_averaging else 1.0
    lr64 = lr.double()
    for p, g, m, v, step in zip(params, grads, exp_avgs, exp_avg_sqs, state_steps, strict=True):
        g = grad_in(g, grad_scale) / clip
        p32 = upcast(p)
        t = advance(step, skip)
        if not adam_w_mode and weight_decay != 0:
            g = g + weight_decay * p32  # L2 mode: decay enters the moments, after the clip (apex mode 0)
        m32 = upcast(m) * beta1 + beta3 * g
        v32 = upcast(v) * beta2 + (1 - beta2) * g * g
        # Bias corrections as fp64 scalars from the fp32 step counter, as for Adam.
        bc1 = 1 - beta1 ** t if bias_correction else 1.0
        bc2 = 1 - beta2 ** t if bias_correction else 1.0
        u = (m32 / bc1) / ((v32 / bc2).sqrt() + eps)
        if adam_w_mode and weight_decay != 0:
            u = u + weight_decay * p32
        # ‖p‖ is taken before the update; the ratio multiplies lr (apex: lr·‖p‖/‖u‖).
        step_size = lr64 * trust_ratio(p32, u, phi_min, phi_max) if use_trust_ratio else lr64
        commit(m, m32, skip)
        commit(v, v32, skip)
        commit(p, p32 - step_size * u, skip)
