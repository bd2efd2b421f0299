"""Adagrad: drop-in replacement for torch.optim.Adagrad (dense gradients)."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import ops
from ._base import FusedOptimizer, check_non_negative, check_flags


class Adagrad(FusedOptimizer):
    """torch.optim.Adagrad on one fused op per (group, device, dtype). State is created eagerly in
    __init__ (step = 0, sum = initial_accumulator_value), as torch does.

    foreach and fused are recorded for drop-in use (the kernel reads lr, float or tensor, on the
    device); fused=True with foreach=True or differentiable=True raises torch's RuntimeError.
    `master_weights=True` keeps an fp32 copy of bf16/fp16 parameters in the state, and the state in
    fp32 (docs/mixed_precision.md); the eager state of such a parameter is fp32 from the start.
    `stochastic_rounding=True` (without master weights) rounds bf16 parameters stochastically instead,
    with fp32 state.
    `telemetry=True`: the update kernels also sum per-layer statistics in their pass; `telemetry()`
    returns them (docs/telemetry.md).
    """

    _COMPAT_KEYS = {"foreach": None, "differentiable": False, "fused": None}
    _STATE_SHAPES = {"sum": True}

    def __init__(self, params, lr: float | Tensor = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, fused: bool | None = None,
                 backend: str = "auto", master_weights: bool = False, stochastic_rounding: bool = False,
                 telemetry: bool = False):
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, fused=fused, master_weights=master_weights,
                        stochastic_rounding=stochastic_rounding)
        super().__init__(params, defaults, backend, telemetry)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, self.state[p], group)

    def _check_hparams(self, hparams):
        check_non_negative("learning rate", hparams["lr"])
        check_non_negative("lr_decay value", hparams["lr_decay"])
        check_non_negative("weight_decay value", hparams["weight_decay"])
        check_non_negative("initial_accumulator_value value", hparams["initial_accumulator_value"])
        check_non_negative("epsilon value", hparams["eps"])
        check_flags(hparams)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)

    def _init_state(self, p, state, group):
        state["step"] = self._new_step(p)
        state["sum"] = torch.full_like(p, group["initial_accumulator_value"], dtype=self._state_dtype(p, group),
                                       memory_format=torch.preserve_format)

    def _launch(self, group, params, grads, states, lr, grad_scale, found_inf):
        ops.adagrad_step_(params, grads, [s["sum"] for s in states], [s["step"] for s in states], lr,
                          lr_decay=group["lr_decay"], weight_decay=group["weight_decay"], eps=group["eps"],
                          maximize=group["maximize"], grad_scale=grad_scale, found_inf=found_inf,
                          model_params=self._models(params), telemetry=self._telemetry_buffer(params),
                          backend=self.backend)
