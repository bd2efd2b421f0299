"""Adam, AdamW and AMSGrad: torch.optim 2.14 semantics (docs/torch_optim_semantics.md §5)."""
from __future__ import annotations

from torch import Tensor

from . import telemetry as _telemetry
from ._common import advance, commit, grad_in, round_into, skip_mask, upcast


def adam_step_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
               max_exp_avg_sqs: list[Tensor], state_steps: list[Tensor], lr: Tensor, beta1: float, beta2: float,
               eps: float, weight_decay: float, amsgrad: bool, maximize: bool, decoupled_weight_decay: bool,
               grad_scale: Tensor | None, found_inf: Tensor | None, model_params: list[Tensor],
               telemetry: Tensor | None = None) -> None:
    _telemetry.check("adam_step_", telemetry, params)
    skip = skip_mask(found_inf)
    before = _telemetry.snapshot(telemetry, params)
    maxes = max_exp_avg_sqs if amsgrad else [None] * len(params)
    lr64 = lr.double()
    for p, g, m, v, vmax, step in zip(params, grads, exp_avgs, exp_avg_sqs, maxes, state_steps, strict=True):
        g = grad_in(g, grad_scale, maximize)
        p32 = upcast(p)
        t = advance(step, skip)
        if decoupled_weight_decay:
            p32 = p32 * (1 - lr64 * weight_decay)  # AdamW decays first, by lr·wd (not bias-corrected)
        elif weight_decay != 0:
            g = g + weight_decay * p32
        m32 = upcast(m).lerp(g, 1 - beta1)
        v32 = upcast(v) * beta2 + (1 - beta2) * g * g
        # Bias corrections as fp64 scalars, as torch computes them from its step on the host.
        bc1 = 1 - beta1 ** t
        bc2_sqrt = (1 - beta2 ** t).sqrt()
        second = v32
        if amsgrad:
            second = upcast(vmax).maximum(v32)
            commit(vmax, second, skip)
        denom = second.sqrt() / bc2_sqrt + eps
        p32 = p32 - (lr64 / bc1) * (m32 / denom)
        commit(m, m32, skip)
        commit(v, v32, skip)
        commit(p, p32, skip)
    round_into(model_params, params, skip)
    _telemetry.accumulate_(telemetry, before, grads, params, grad_scale, skip)
