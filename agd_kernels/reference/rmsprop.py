"""RMSprop (centered, momentum): torch.optim 2.14 semantics (docs/torch_optim_semantics.md §3)."""
from __future__ import annotations

from torch import Tensor

from . import telemetry as _telemetry
from ._common import advance, commit, grad_in, round_into, skip_mask, upcast


def rmsprop_step_(params: list[Tensor], grads: list[Tensor], square_avgs: list[Tensor], grad_avgs: list[Tensor],
                  momentum_buffers: list[Tensor], state_steps: list[Tensor], lr: Tensor, alpha: float, eps: float,
                  weight_decay: float, momentum: float, centered: bool, maximize: bool,
                  grad_scale: Tensor | None, found_inf: Tensor | None, model_params: list[Tensor],
                  telemetry: Tensor | None = None) -> None:
    _telemetry.check("rmsprop_step_", telemetry, params)
    skip = skip_mask(found_inf)
    before = _telemetry.snapshot(telemetry, params)
    n = len(params)
    gavgs = grad_avgs if centered else [None] * n
    bufs = momentum_buffers if momentum > 0 else [None] * n
    lr64 = lr.double()
    for p, g, v, gavg, buf, step in zip(params, grads, square_avgs, gavgs, bufs, state_steps, strict=True):
        advance(step, skip)  # counted for checkpoints, unused by the math
        p32 = upcast(p)
        g = grad_in(g, grad_scale, maximize)
        if weight_decay != 0:
            g = g + weight_decay * p32
        v32 = upcast(v) * alpha + (1 - alpha) * g * g
        if centered:
            a32 = upcast(gavg).lerp(g, 1 - alpha)
            commit(gavg, a32, skip)
            denom = (v32 - a32 * a32).sqrt() + eps  # eps outside the sqrt, unlike TensorFlow
        else:
            denom = v32.sqrt() + eps
        commit(v, v32, skip)
        if buf is not None:
            b32 = upcast(buf) * momentum + g / denom  # buffer starts at zeros
            commit(buf, b32, skip)
            p32 = p32 - lr64 * b32
        else:
            p32 = p32 - lr64 * (g / denom)
        commit(p, p32, skip)
    round_into(model_params, params, skip)
    _telemetry.accumulate_(telemetry, before, grads, params, grad_scale, skip)
