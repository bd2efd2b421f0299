"""SGD with momentum, dampening and Nesterov: torch.optim 2.14 semantics (docs/torch_optim_semantics.md §2)."""
from __future__ import annotations

from torch import Tensor

from . import telemetry as _telemetry
from ._common import commit, grad_in, round_into, skip_mask, upcast


def sgd_step_(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor], lr: Tensor,
              momentum: float, dampening: float, weight_decay: float, nesterov: bool, maximize: bool,
              is_first_step: bool, grad_scale: Tensor | None, found_inf: Tensor | None,
              model_params: list[Tensor], telemetry: Tensor | None = None) -> None:
    _telemetry.check("sgd_step_", telemetry, params)
    skip = skip_mask(found_inf)
    before = _telemetry.snapshot(telemetry, params)
    bufs = momentum_buffers if momentum != 0 else [None] * len(params)
    lr64 = lr.double()
    for p, g, buf in zip(params, grads, bufs, strict=True):
        p32 = upcast(p)
        d = grad_in(g, grad_scale, maximize)
        if weight_decay != 0:
            d = d + weight_decay * p32
        if buf is not None:
            # torch creates the buffer as clone(d) on the first step: no dampening then.
            b32 = d if is_first_step else upcast(buf) * momentum + (1 - dampening) * d
            commit(buf, b32, skip)
            d = d + momentum * b32 if nesterov else b32
        commit(p, p32 - lr64 * d, skip)
    round_into(model_params, params, skip)
    _telemetry.accumulate_(telemetry, before, grads, params, grad_scale, skip)
