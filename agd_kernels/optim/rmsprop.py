"""RMSprop: drop-in replacement for torch.optim.RMSprop (centered, momentum, maximize)."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import ops
from ._base import FusedOptimizer, check_non_negative, check_flags


class RMSprop(FusedOptimizer):
    """torch.optim.RMSprop on one fused op per (group, device, dtype).

    `master_weights=True` keeps an fp32 copy of bf16/fp16 parameters in the state, and the state in
    fp32; `stochastic_rounding=True` (without master weights) rounds bf16 parameters stochastically
    instead, with fp32 state (docs/mixed_precision.md).
    `telemetry=True`: the update kernels also sum per-layer statistics in their pass; `telemetry()`
    returns them (docs/telemetry.md).
    """

    _COMPAT_KEYS = {"foreach": None, "capturable": False, "differentiable": False}
    _STATE_SHAPES = {"square_avg": True, "grad_avg": True, "momentum_buffer": True}

    def __init__(self, params, lr: float | Tensor = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False, differentiable: bool = False,
                 backend: str = "auto", *, master_weights: bool = False, stochastic_rounding: bool = False,
                 telemetry: bool = False):
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, master_weights=master_weights,
                        stochastic_rounding=stochastic_rounding)
        super().__init__(params, defaults, backend, telemetry)

    def _check_hparams(self, hparams):
        check_non_negative("learning rate", hparams["lr"])
        check_non_negative("epsilon value", hparams["eps"])
        check_non_negative("momentum value", hparams["momentum"])
        check_non_negative("weight_decay value", hparams["weight_decay"])
        check_non_negative("alpha value", hparams["alpha"])
        check_flags(hparams)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("momentum", 0)
            group.setdefault("centered", False)
            group.setdefault("maximize", False)

    def _init_state(self, p, state, group):
        state["step"] = self._new_step(p)
        state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _launch(self, group, params, grads, states, lr, grad_scale, found_inf):
        momentum, centered = group["momentum"], group["centered"]
        for p, s in zip(params, states):  # options switched on after the first step start from zeros
            if momentum > 0 and "momentum_buffer" not in s:
                s["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if centered and "grad_avg" not in s:
                s["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        ops.rmsprop_step_(
            params, grads, [s["square_avg"] for s in states], [s["grad_avg"] for s in states] if centered else [],
            [s["momentum_buffer"] for s in states] if momentum > 0 else [], [s["step"] for s in states], lr,
            alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"], momentum=momentum,
            centered=centered, maximize=group["maximize"], grad_scale=grad_scale, found_inf=found_inf,
            model_params=self._models(params), telemetry=self._telemetry_buffer(params),
            backend=self.backend)
