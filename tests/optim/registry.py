"""Every agd_kernels optimizer the contract tests cover, as one entry each.

The contract tests (bad input, no host sync, GradScaler, checkpoint round trips) are parametrized over
REGISTRY, so covering a new optimizer takes one `register(Entry(...))` call at the bottom of this
file. An entry says how to build the optimizer on the param groups of tests/models.py and which
checks apply:
- `make(params, **overrides)`: the optimizer with settings that exercise its state (momentum on,
  amsgrad on, ...); `overrides` replace constructor arguments (the bad-input tests pass bad ones).
- `second_group`: hyper-parameters of the MLP group that differ from the defaults, so per-group
  values are exercised too.
- `has_param_state`: after a step, state holds tensors shaped like the parameters (the wrong-shape
  checkpoint test needs one to corrupt).
- `bad_hparams`: id -> Bad(kwargs, regex the error must match, whether a param group may carry it).
Parity and cross-loading with torch.optim are tested per algorithm in test_torch_parity.py and
test_checkpoint.py, which need torch's class and are not registry-driven.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

import agd_kernels as ak


@dataclass(frozen=True)
class Bad:
    kwargs: dict
    match: str
    per_group: bool = True  # False: constructor-only arguments (backend, bias_mode, differentiable)


@dataclass(frozen=True)
class Entry:
    name: str
    make: Callable[..., torch.optim.Optimizer]
    second_group: dict = field(default_factory=dict)
    has_param_state: bool = True
    bad_hparams: dict[str, Bad] = field(default_factory=dict)


REGISTRY: dict[str, Entry] = {}


def register(entry: Entry) -> None:
    assert entry.name not in REGISTRY, f"{entry.name} registered twice"
    REGISTRY[entry.name] = entry


def entries(**flags) -> list:
    """pytest.param per entry whose flags equal `flags` (e.g. has_param_state=True), id = name."""
    return [pytest.param(e, id=e.name) for e in REGISTRY.values()
            if all(getattr(e, k) == v for k, v in flags.items())]


def _common_bad(*names: str) -> dict[str, Bad]:
    """The torch.optim checks shared by several optimizers, by hyper-parameter name."""
    table = {
        "lr": Bad(dict(lr=-1e-3), r"learning rate"),
        "eps": Bad(dict(eps=-1e-8), r"epsilon"),
        "weight_decay": Bad(dict(weight_decay=-0.1), r"weight_decay"),
        "momentum": Bad(dict(momentum=-0.5), r"momentum"),
        "beta1": Bad(dict(betas=(1.0, 0.999)), r"beta parameter at index 0"),
        "beta2": Bad(dict(betas=(0.9, -0.1)), r"beta parameter at index 1"),
        "differentiable": Bad(dict(differentiable=True), r"differentiable", per_group=False),
        "backend": Bad(dict(backend="gpu"), r"backend must be one of", per_group=False),
        "master_weights": Bad(dict(master_weights=1), r"master_weights"),
        "stochastic_rounding": Bad(dict(stochastic_rounding="yes"), r"stochastic_rounding"),
    }
    return {n: table[n] for n in names}


_ADAM_BAD = _common_bad("lr", "eps", "weight_decay", "beta1", "beta2", "differentiable", "backend", "master_weights",
                        "stochastic_rounding")

register(Entry(
    "Adam", lambda params, **kw: ak.Adam(params, **{"lr": 1e-2, "amsgrad": True, "weight_decay": 0.01, **kw}),
    second_group={"lr": 5e-3, "weight_decay": 0.0},
    bad_hparams=_ADAM_BAD))

register(Entry(
    "AdamW", lambda params, **kw: ak.AdamW(params, **{"lr": 1e-2, **kw}),
    second_group={"lr": 5e-3, "weight_decay": 0.1},
    bad_hparams=_ADAM_BAD))

register(Entry(
    "SGD", lambda params, **kw: ak.SGD(params, **{"lr": 0.05, "momentum": 0.9, "dampening": 0.1, **kw}),
    second_group={"lr": 0.02, "weight_decay": 0.01},
    bad_hparams={**_common_bad("lr", "momentum", "weight_decay", "differentiable", "backend", "master_weights",
                               "stochastic_rounding"),
                 "nesterov-no-momentum": Bad(dict(nesterov=True, momentum=0.0, dampening=0.0), r"Nesterov"),
                 "nesterov-dampening": Bad(dict(nesterov=True, momentum=0.9, dampening=0.1), r"Nesterov")}))

register(Entry(
    "RMSprop", lambda params, **kw: ak.RMSprop(params, **{"lr": 1e-2, "momentum": 0.5, "centered": True, **kw}),
    second_group={"lr": 5e-3, "weight_decay": 0.01},
    bad_hparams={**_common_bad("lr", "eps", "momentum", "weight_decay", "differentiable", "backend", "master_weights",
                               "stochastic_rounding"),
                 "alpha": Bad(dict(alpha=-0.1), r"alpha")}))

register(Entry(
    "Adagrad", lambda params, **kw: ak.Adagrad(params, **{"lr": 0.05, "lr_decay": 0.01, **kw}),
    second_group={"lr": 0.02, "weight_decay": 0.01},
    bad_hparams={**_common_bad("lr", "eps", "weight_decay", "differentiable", "backend", "master_weights",
                               "stochastic_rounding"),
                 "lr_decay": Bad(dict(lr_decay=-0.1), r"lr_decay"),
                 "initial_accumulator_value": Bad(dict(initial_accumulator_value=-1.0),
                                                  r"initial_accumulator_value")}))

# AGD normalises rank >= 2 weights; the model's biases follow their preceding weight (docs/agd.md §5.1).
register(Entry(
    "AGD", lambda params, **kw: ak.AGD(params, **{"bias_mode": "follow", **kw}),
    second_group={"gain": 0.5},
    has_param_state=False,
    bad_hparams={"gain-negative": Bad(dict(gain=-1.0), r"gain"),
                 "gain-nan": Bad(dict(gain=math.nan), r"gain"),
                 "bias_mode": Bad(dict(bias_mode="bogus"), r"bias_mode", per_group=False),
                 **_common_bad("backend", "master_weights",
                               "stochastic_rounding")}))

# LAMB: the clip is active on this model (its gradient norm is about 1) and the second group has
# weight_decay 0, so apex's "no trust ratio without weight decay" branch runs too.
register(Entry(
    "LAMB", lambda params, **kw: ak.LAMB(params, **{"lr": 1e-2, "max_grad_norm": 1.0, **kw}),
    second_group={"lr": 5e-3, "weight_decay": 0.0},
    bad_hparams={**_common_bad("lr", "eps", "weight_decay", "beta1", "beta2", "backend", "master_weights",
                               "stochastic_rounding"),
                 "max_grad_norm": Bad(dict(max_grad_norm=0.0), r"max_grad_norm"),
                 "amsgrad": Bad(dict(amsgrad=True), r"amsgrad"),
                 "variant": Bad(dict(variant="lars"), r"variant", per_group=False)}))

# YellowFin: momentum from step 0 and a 3-step window, so a few steps already tune lr and μ. Its
# tuner options (lr and mu of step 0 included) are global; weight_decay is the one group setting.
register(Entry(
    "YellowFin", lambda params, **kw: ak.YellowFin(params, **{"lr": 1e-2, "mu": 0.5, "curv_win_width": 3, **kw}),
    second_group={"weight_decay": 0.01},
    bad_hparams={"lr": Bad(dict(lr=-1e-3), r"learning rate", per_group=False),
                 "mu": Bad(dict(mu=1.0), r"mu", per_group=False),
                 "beta": Bad(dict(beta=1.5), r"beta", per_group=False),
                 "curv_win_width": Bad(dict(curv_win_width=0), r"curv_win_width", per_group=False),
                 **_common_bad("weight_decay", "backend", "master_weights",
                               "stochastic_rounding")}))
