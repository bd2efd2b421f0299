"""agd_kernels optimizers follow torch.optim's trajectories (docs/torch_optim_semantics.md).

Three runs of 20 steps start from the same conv + MLP model (tests/models.py) with two param groups
(different lr and weight_decay): ours and torch.optim in the test dtype, and torch.optim in float64
as the oracle. Every case runs under an LR scheduler and takes every third step through a closure.
Parameters and every state tensor must satisfy the derived rule (tests/tolerance.py): our error
against the oracle is at most 2x torch's same-dtype error plus a floor of 2 ulps.

All three runs step on the oracle's gradients (rounded to their dtype), so they differ only by the
optimizers' own rounding. With each run on its own gradients the comparison measures chaos, not
the optimizer: in RMSprop (lr 1e-2, fp32) a 1-ulp parameter difference after step 1 moved one conv
gradient by 3e-8, the normalised update (lr/sqrt(v) = 17) amplified it, and after 20 steps ours and
torch were 4.5e-7 apart with torch 1.3e-7 from float64 by chance.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

import agd_kernels as ak
from agd_kernels import _backends
from tests.models import clone_model, compute_grads, make_model, train, two_groups
from tests.tolerance import DTYPE_IDS, assert_close_ulps, assert_within_2x_reference

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 20


@dataclass(frozen=True)
class Case:
    id: str
    ours: type
    theirs: type
    op: str
    hparams: Callable[[], dict]  # a fresh dict per optimizer: a tensor lr is mutated by the scheduler
    second: dict = field(default_factory=dict)  # the MLP group's lr / weight_decay
    schedule: str = "step"
    bf16: bool = False  # also run in bf16

    def scheduler(self, opt):
        if self.schedule == "step":
            return torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1.0 + 0.1 * k))


def _case(id, ours, theirs, op, second, schedule="step", bf16=False, **hparams):
    def fresh():
        return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in hparams.items()}
    return Case(id, ours, theirs, op, fresh, second, schedule, bf16)


# The MLP group's lr and weight_decay (the tensor-lr cases share the conv group's lr tensor).
_MLP_5E3 = {"lr": 5e-3, "weight_decay": 0.03}
_MLP_2E2 = {"lr": 0.02, "weight_decay": 0.03}
CASES = [
    _case("adam", ak.Adam, torch.optim.Adam, "adam_step_", _MLP_5E3, bf16=True, lr=1e-2),
    _case("adam-amsgrad-wd", ak.Adam, torch.optim.Adam, "adam_step_", _MLP_5E3, "lambda", amsgrad=True,
          lr=1e-2, weight_decay=0.05),
    _case("adam-maximize-betas-eps", ak.Adam, torch.optim.Adam, "adam_step_", _MLP_5E3, maximize=True, lr=1e-2,
          betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, bf16=True),
    _case("adam-tensor-lr", ak.Adam, torch.optim.Adam, "adam_step_", {"weight_decay": 0.03}, "lambda",
          lr=torch.tensor(1e-2)),
    _case("adamw", ak.AdamW, torch.optim.AdamW, "adam_step_", _MLP_5E3, bf16=True, lr=1e-2),
    _case("adamw-amsgrad-maximize", ak.AdamW, torch.optim.AdamW, "adam_step_", _MLP_5E3, "lambda", lr=1e-2,
          amsgrad=True, maximize=True, weight_decay=0.1),
    _case("sgd", ak.SGD, torch.optim.SGD, "sgd_step_", _MLP_2E2, lr=0.05),
    _case("sgd-momentum-dampening-wd", ak.SGD, torch.optim.SGD, "sgd_step_", _MLP_2E2, "lambda", lr=0.05,
          momentum=0.9, dampening=0.2, weight_decay=0.01, bf16=True),
    _case("sgd-nesterov", ak.SGD, torch.optim.SGD, "sgd_step_", _MLP_2E2, lr=0.05, momentum=0.8, nesterov=True,
          weight_decay=0.01),
    _case("sgd-maximize-tensor-lr", ak.SGD, torch.optim.SGD, "sgd_step_", {"weight_decay": 0.03}, lr=torch.tensor(0.05),
          momentum=0.5, maximize=True),
    _case("rmsprop", ak.RMSprop, torch.optim.RMSprop, "rmsprop_step_", _MLP_5E3, lr=1e-2, bf16=True),
    _case("rmsprop-alpha-eps-wd", ak.RMSprop, torch.optim.RMSprop, "rmsprop_step_", _MLP_5E3, "lambda", lr=1e-2,
          alpha=0.9, eps=1e-4, weight_decay=0.01),
    _case("rmsprop-centered-momentum", ak.RMSprop, torch.optim.RMSprop, "rmsprop_step_", _MLP_5E3, lr=1e-2,
          centered=True, momentum=0.5, bf16=True),
    _case("rmsprop-maximize-tensor-lr", ak.RMSprop, torch.optim.RMSprop, "rmsprop_step_", {"weight_decay": 0.03},
          lr=torch.tensor(1e-2), maximize=True, centered=True),
    _case("adagrad", ak.Adagrad, torch.optim.Adagrad, "adagrad_step_", _MLP_2E2, lr=0.05, bf16=True),
    _case("adagrad-decay-init-eps-wd", ak.Adagrad, torch.optim.Adagrad, "adagrad_step_", _MLP_2E2, "lambda", lr=0.05,
          lr_decay=0.05, initial_accumulator_value=0.1, eps=1e-6, weight_decay=0.01, bf16=True),
    _case("adagrad-maximize-tensor-lr", ak.Adagrad, torch.optim.Adagrad, "adagrad_step_", {"weight_decay": 0.03},
          lr=torch.tensor(0.05), maximize=True),
]


def cpu_backends(op: str) -> list[str]:
    """The reference, plus the C++ kernel where one is built for `op`."""
    cpu_ok = _backends.unavailable_reason(op, "cpu", torch.device("cpu"), torch.float32) is None
    return ["torch", "cpu"] if cpu_ok else ["torch"]


def _params(dtypes):
    return [pytest.param(case, dtype, backend, id=f"{case.id}-{DTYPE_IDS[dtype]}-{backend}")
            for case in CASES for dtype in dtypes if dtype == torch.float32 or case.bf16
            for backend in cpu_backends(case.op)]


def make_runs(case: Case, dtype: torch.dtype, backend: str) -> dict[str, tuple]:
    """{"ours" | "torch" | "oracle": (model, optimizer)} from one initial model."""
    base = make_model(edge_cases=True)
    runs = {}
    for who, cls, run_dtype in (("ours", case.ours, dtype), ("torch", case.theirs, dtype),
                                ("oracle", case.theirs, torch.float64)):
        model = clone_model(base, run_dtype)
        extra = {"backend": backend} if who == "ours" else {}
        runs[who] = (model, cls(two_groups(model, case.second), **case.hparams(), **extra))
    return runs


def assert_parity(runs: dict[str, tuple], what: str) -> None:
    """Parameters and state of "ours" against "torch", both against "oracle", by the derived rule."""
    (ours_model, ours), (torch_model, theirs), (oracle_model, oracle) = runs["ours"], runs["torch"], runs["oracle"]
    for (name, p), q, o in zip(ours_model.named_parameters(), torch_model.parameters(), oracle_model.parameters()):
        assert_within_2x_reference(p.detach(), q.detach(), o.detach(), name=f"{what}: param {name}")
        mine, ref, orc = ours.state[p], theirs.state[q], oracle.state[o]
        assert mine.keys() == ref.keys(), f"{what}: state keys of {name}: ours {sorted(mine)}, torch {sorted(ref)}"
        for key, value in ref.items():
            if key == "step":
                assert mine[key].dtype == torch.float32 and mine[key].dim() == 0, f"{what}: {name} step {mine[key]!r}"
                assert mine[key].item() == value.item(), f"{what}: {name} step {mine[key]} != torch's {value}"
                continue
            assert mine[key].dtype == value.dtype and mine[key].shape == value.shape
            assert_within_2x_reference(mine[key], value, orc[key], name=f"{what}: state {name} {key!r}")


def run_lockstep(runs: dict[str, tuple], steps: range, schedulers: dict | None = None,
                 closure_every: int = 3) -> None:
    """Steps every run over `steps` on the oracle's gradients (see the module docstring)."""
    schedulers = schedulers or {}
    oracle_model, oracle = runs["oracle"]
    for k in steps:
        loss = compute_grads(oracle_model, k)
        grads = [p.grad.clone() for p in oracle_model.parameters()]
        for who, (model, opt) in runs.items():
            train(model, opt, [k], grads=lambda _, loss=loss, grads=grads: (loss, grads),
                  closure_every=closure_every, scheduler=schedulers.get(who))


@pytest.mark.parametrize("case, dtype, backend", _params([torch.float32, torch.bfloat16]))
def test_trajectory_matches_torch(case, dtype, backend):
    runs = make_runs(case, dtype, backend)
    run_lockstep(runs, range(STEPS), {who: case.scheduler(opt) for who, (_, opt) in runs.items()})
    assert_parity(runs, f"{case.id} ({dtype}, {backend}) after {STEPS} steps")
    # The scheduler did reach the optimizer: the last lr is the scheduled one, in both.
    ours_lr, torch_lr = (runs[w][1].param_groups[0]["lr"] for w in ("ours", "torch"))
    assert float(ours_lr) == float(torch_lr) < float(case.hparams()["lr"])


@pytest.mark.parametrize("case, backend", [pytest.param(case, backend, id=f"{case.id}-{backend}")
                                           for case in CASES for backend in cpu_backends(case.op)])
def test_float64_trajectory_matches_torch_to_float64_precision(case, backend):
    """fp64 parameters take lr (and every hyper-parameter) as a double: after 20 scheduled steps ours and
    torch.optim agree to 8 fp64 ulps (measured <= 1.6; an lr rounded to fp32 put them 5e-8 apart). A
    tensor lr is made fp64, as torch.tensor(lr) is under torch.set_default_dtype(torch.float64)."""
    base = make_model(torch.float64, edge_cases=True)
    runs = {}
    for who, cls, extra in (("ours", case.ours, {"backend": backend}), ("oracle", case.theirs, {})):
        model = clone_model(base)
        hparams = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in case.hparams().items()}
        runs[who] = (model, cls(two_groups(model, case.second), **hparams, **extra))
    run_lockstep(runs, range(STEPS), {who: case.scheduler(opt) for who, (_, opt) in runs.items()})
    (ours_model, ours), (torch_model, theirs) = runs["ours"], runs["oracle"]
    for (name, p), q in zip(ours_model.named_parameters(), torch_model.parameters()):
        assert_close_ulps(p.detach(), q.detach(), torch.float64, ulps=8, name=f"{case.id}: param {name}")
        assert ours.state[p].keys() == theirs.state[q].keys()
        for key, value in theirs.state[q].items():
            assert_close_ulps(ours.state[p][key], value, torch.float64, ulps=8, name=f"{case.id}: {name} {key!r}")
