"""Adagrad (dense gradients): torch.optim 2.14 semantics (docs/torch_optim_semantics.md §4)."""
from __future__ import annotations

from torch import Tensor

from . import telemetry as _telemetry
from ._common import advance, commit, grad_in, round_into, skip_mask, upcast


def adagrad_step_(params: list[Tensor], grads: list[Tensor], state_sums: list[Tensor], state_steps: list[Tensor],
                  lr: Tensor, lr_decay: float, weight_decay: float, eps: float, maximize: bool,
                  grad_scale: Tensor | None, found_inf: Tensor | None, model_params: list[Tensor],
                  telemetry: Tensor | None = None) -> None:
    _telemetry.check("adagrad_step_", telemetry, params)
    skip = skip_mask(found_inf)
    before = _telemetry.snapshot(telemetry, params)
    lr64 = lr.double()
    for p, g, s, step in zip(params, grads, state_sums, state_steps, strict=True):
        t = advance(step, skip)
        p32 = upcast(p)
        g = grad_in(g, grad_scale, maximize)
        if weight_decay != 0:
            g = g + weight_decay * p32
        clr = lr64 / (1 + (t - 1) * lr_decay)
        s32 = upcast(s) + g * g
        commit(s, s32, skip)
        commit(p, p32 - clr * (g / (s32.sqrt() + eps)), skip)
    round_into(model_params, params, skip)
    _telemetry.accumulate_(telemetry, before, grads, params, grad_scale, skip)
