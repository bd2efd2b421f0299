"""Adam and AdamW: drop-in replacements for torch.optim.Adam / AdamW (same defaults, state, checkpoints)."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import ops
from ._base import FusedOptimizer, check_betas, check_non_negative, check_flags


class Adam(FusedOptimizer):
    """torch.optim.Adam on agd_kernels' fused op: one kernel launch per (group, device, dtype).

    foreach, capturable and fused are accepted for drop-in use and recorded in param_groups; the
    kernels always behave as fused and capturable (lr, step, grad_scale, found_inf read on device).
    So a tensor lr or tensor betas are accepted with foreach=True too, where torch.optim raises
    ValueError unless capturable=True (tensor betas are read once, as floats). foreach=True with
    fused=True, and fused=True with differentiable=True, raise torch's RuntimeError.
    `backend` picks the implementation (see agd_kernels._backends). `master_weights=True` keeps an
    fp32 copy of bf16/fp16 parameters in the state, and the state in fp32; `stochastic_rounding=True`
    (without master weights) rounds bf16 parameters stochastically instead, with fp32 state
    (docs/mixed_precision.md).
    `telemetry=True`: the update kernels also sum per-layer statistics in their pass; `telemetry()`
    returns them (docs/telemetry.md).
    """

    _COMPAT_KEYS = {"foreach": None, "capturable": False, "differentiable": False, "fused": None}
    _STATE_SHAPES = {"exp_avg": True, "exp_avg_sq": True, "max_exp_avg_sq": True}

    def __init__(self, params, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False, backend: str = "auto",
                 master_weights: bool = False, stochastic_rounding: bool = False, telemetry: bool = False):
        check_betas(betas)
        defaults = dict(lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused, decoupled_weight_decay=decoupled_weight_decay,
                        master_weights=master_weights, stochastic_rounding=stochastic_rounding)
        super().__init__(params, defaults, backend, telemetry)

    def _check_hparams(self, hparams):
        check_non_negative("learning rate", hparams["lr"])
        check_non_negative("epsilon value", hparams["eps"])
        check_betas(hparams["betas"])
        check_non_negative("weight_decay value", hparams["weight_decay"])
        check_flags(hparams)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("decoupled_weight_decay", False)

    def _equilibrium(self, group):
        # decoupled weight decay shrinks the weights whatever the gradient: an equilibrium norm, β1 = momentum
        return (group["betas"][0], True) if group["decoupled_weight_decay"] else None

    def _init_state(self, p, state, group):
        state["step"] = self._new_step(p)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _launch(self, group, params, grads, states, lr, grad_scale, found_inf):
        if group["amsgrad"]:
            for p, s in zip(params, states):
                if "max_exp_avg_sq" not in s:  # amsgrad switched on after the first step
                    s["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        ops.adam_step_(
            params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [], [s["step"] for s in states], lr,
            beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
            amsgrad=group["amsgrad"], maximize=group["maximize"],
            decoupled_weight_decay=group["decoupled_weight_decay"], grad_scale=grad_scale, found_inf=found_inf,
            model_params=self._models(params), telemetry=self._telemetry_buffer(params),
            backend=self.backend)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2), forced on load too."""

    def __init__(self, params, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, backend: str = "auto", master_weights: bool = False,
                 stochastic_rounding: bool = False, telemetry: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, backend=backend, master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, telemetry=telemetry)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
