"""SGD: drop-in replacement for torch.optim.SGD (momentum, dampening, Nesterov, maximize)."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import ops
from ._base import FusedOptimizer, check_non_negative, check_flags


class SGD(FusedOptimizer):
    """torch.optim.SGD on one fused op per (group, device, dtype); state `momentum_buffer` only, and
    none at all without momentum (as torch).

    foreach and fused are recorded for drop-in use (the kernel reads lr, float or tensor, on the
    device); fused=True with foreach=True or differentiable=True raises torch's RuntimeError.
    `master_weights=True` keeps an fp32 copy of bf16/fp16 parameters in the state, and the state in
    fp32; `stochastic_rounding=True` (without master weights) rounds bf16 parameters stochastically
    instead, with fp32 state (docs/mixed_precision.md).
    `telemetry=True`: the update kernels also sum per-layer statistics in their pass; `telemetry()`
    returns them (docs/telemetry.md).
    """

    _COMPAT_KEYS = {"foreach": None, "differentiable": False, "fused": None}
    _STATE_SHAPES = {"momentum_buffer": True}

    def __init__(self, params, lr: float | Tensor = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False, fused: bool | None = None,
                 backend: str = "auto", master_weights: bool = False, stochastic_rounding: bool = False,
                 telemetry: bool = False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach, differentiable=differentiable,
                        fused=fused, master_weights=master_weights, stochastic_rounding=stochastic_rounding)
        super().__init__(params, defaults, backend, telemetry)

    def _check_hparams(self, hparams):
        check_non_negative("learning rate", hparams["lr"])
        check_non_negative("momentum value", hparams["momentum"])
        check_non_negative("weight_decay value", hparams["weight_decay"])
        if hparams["nesterov"] and (hparams["momentum"] <= 0 or hparams["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        check_flags(hparams)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)

    def _states(self, group, params):
        # torch keeps no state at all without momentum: looking up self.state[p] (a defaultdict) would
        # write an empty entry per parameter into state_dict()
        return super()._states(group, params) if group["momentum"] != 0 else []

    def _equilibrium(self, group):
        return group["momentum"], False

    def _init_state(self, p, state, group):
        pass  # the momentum buffer is created on the first step with momentum, as in torch

    def _launch(self, group, params, grads, states, lr, grad_scale, found_inf):
        momentum = group["momentum"]
        buffers, first = [], False
        if momentum != 0:
            # torch: buffers are all None exactly on the first step (then created as clone(d)).
            first = all(s.get("momentum_buffer") is None for s in states)
            for p, s in zip(params, states):
                if s.get("momentum_buffer") is None:
                    s["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buffers = [s["momentum_buffer"] for s in states]
        ops.sgd_step_(params, grads, buffers, lr, momentum=momentum, dampening=group["dampening"],
                      weight_decay=group["weight_decay"], nesterov=group["nesterov"], maximize=group["maximize"],
                      is_first_step=first, grad_scale=grad_scale, found_inf=found_inf,
                      model_params=self._models(params), telemetry=self._telemetry_buffer(params),
                      backend=self.backend)
