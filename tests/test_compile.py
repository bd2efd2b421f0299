"""torch.compile traces agd_kernels ops (docs/design.md rule 2) and gives eager's results.

The compiler backend is aot_eager: Dynamo tracing plus AOTAutograd functionalization, which is where
the schemas' (x!) annotations matter. Inductor adds only code generation; on this 2-core machine its
C++ compile of the same graph took 30 s against 1.5 s, too slow for the default suite.
Each test starts from a cold backend cache, so the first resolve runs while Dynamo traces (that
broke fullgraph=True once: _backends._choose is now evaluated, not traced).
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import agd_kernels as ak
from agd_kernels import _backends, ops
from tests.models import assert_same_bits, clone_model, compute_grads, make_model, snapshot, two_groups
from tests.tolerance import assert_close_ulps

SHAPES = [(7,), (33,), (1,), (0,), (3, 5)]


@pytest.fixture(autouse=True)
def cold_caches(monkeypatch):
    monkeypatch.setattr(_backends, "_RESOLVED", {})
    monkeypatch.setattr(_backends, "_WARNED", set())
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _tensors(seed: int, scale: float = 1.0, positive: bool = False) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = [torch.randn(s, generator=gen) * scale for s in SHAPES]
    return [t.abs() for t in out] if positive else out


def adam_via_ops(params, grads, exp_avgs, exp_avg_sqs, steps, lr):
    ops.adam_step_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                   weight_decay=0.01, amsgrad=False, maximize=False, decoupled_weight_decay=True)


def adam_via_torch_ops(params, grads, exp_avgs, exp_avg_sqs, steps, lr):
    torch.ops.agd_kernels.adam_step_.default(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr, 0.9, 0.999,
                                             1e-8, 0.01, False, False, True, None, None, [])


def sgd_via_ops(params, grads, buffers, steps, lr):
    ops.sgd_step_(params, grads, buffers, lr, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True,
                  maximize=False, is_first_step=False)


def lamb_via_ops(params, grads, exp_avgs, exp_avg_sqs, steps, lr):
    """Both LAMB ops with the norms buffer between them, as the optimizer calls them (global clip on)."""
    grad_sumsq = torch.stack([g.square().sum() for g in grads])
    norms = torch.empty(2 * len(params), dtype=torch.float64)
    hp = dict(max_grad_norm=1.0, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, bias_correction=True,
              grad_averaging=True, adam_w_mode=True)
    ops.lamb_moments_(params, grads, exp_avgs, exp_avg_sqs, steps, grad_sumsq, norms, **hp)
    ops.lamb_apply_(params, grads, exp_avgs, exp_avg_sqs, steps, lr, grad_sumsq, norms, **hp, use_trust_ratio=True)


_CASES = {
    "adam-ops": (adam_via_ops, lambda: (_tensors(0), _tensors(1), _tensors(2, 0.1), _tensors(3, 0.01, True),
                                        [torch.zeros(()) for _ in SHAPES], torch.tensor(1e-2))),
    "adam-torch-ops": (adam_via_torch_ops, lambda: (_tensors(0), _tensors(1), _tensors(2, 0.1),
                                                    _tensors(3, 0.01, True), [torch.zeros(()) for _ in SHAPES],
                                                    torch.tensor(1e-2))),
    "sgd-ops": (sgd_via_ops, lambda: (_tensors(0), _tensors(1), _tensors(2, 0.1), [], torch.tensor(0.1))),
    "lamb-ops": (lamb_via_ops, lambda: (_tensors(0), _tensors(1), _tensors(2, 0.1), _tensors(3, 0.01, True),
                                        [torch.zeros(()) for _ in SHAPES], torch.tensor(1e-2))),
}


def _flat(args) -> list[torch.Tensor]:
    return [t for a in args for t in (a if isinstance(a, list) else [a])]


@pytest.mark.parametrize("case", _CASES)
def test_fullgraph_op_matches_eager(case):
    fn, make = _CASES[case]
    eager, compiled = make(), make()
    step = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for _ in range(3):  # the steps feed back: a stale or dropped mutation shows up in later steps
        fn(*eager)
        step(*compiled)
    for i, (c, e) in enumerate(zip(_flat(compiled), _flat(eager))):
        assert_close_ulps(c, e, torch.float32, ulps=2, name=f"{case}: tensor {i}")


def test_compiled_optimizer_step_matches_eager():
    eager_model = make_model()
    compiled_model = clone_model(eager_model)
    eager = ak.AdamW(eager_model.parameters(), lr=1e-2, amsgrad=True)
    compiled = ak.AdamW(compiled_model.parameters(), lr=1e-2, amsgrad=True)
    step = torch.compile(compiled.step, backend="aot_eager")  # graph breaks allowed here
    for k in range(3):
        compute_grads(eager_model, k)
        eager.step()
        compute_grads(compiled_model, k)
        step()
    expected, actual = snapshot(eager_model, eager), snapshot(compiled_model, compiled)
    assert actual.keys() == expected.keys()
    for key, e in expected.items():
        assert_close_ulps(actual[key], e, torch.float32, ulps=2, name=key)


# Every optimizer that reads a float lr: hyper-parameters that create all of its state.
_SCHEDULED = {
    "Adam": (ak.Adam, dict(lr=1e-2, amsgrad=True)),
    "AdamW": (ak.AdamW, dict(lr=1e-2)),
    "SGD": (ak.SGD, dict(lr=0.05, momentum=0.9)),
    "RMSprop": (ak.RMSprop, dict(lr=1e-2, centered=True, momentum=0.5)),
    "Adagrad": (ak.Adagrad, dict(lr=0.05)),
    "LAMB": (ak.LAMB, dict(lr=1e-2)),
}


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # compile-first
@pytest.mark.parametrize("order", ["scheduler-first", "compile-first"])
@pytest.mark.parametrize("name", _SCHEDULED)
def test_scheduled_float_lr_compiles_at_most_once_more(name, order):
    """A scheduler moving a float lr every step costs at most one recompile of torch.compile(opt.step)
    (Dynamo makes lr a graph input once it has changed; before, each new value recompiled: frames 1, 2,
    3, ... up to the cache limit), and the compiled steps give eager's bits. "scheduler-first" compiles
    the scheduler's wrapper of step (a graph break into our step), "compile-first" our step directly."""
    cls, hparams = _SCHEDULED[name]
    models = {"eager": make_model(), "compiled": None}
    models["compiled"] = clone_model(models["eager"])
    opts, steps, schedulers = {}, {}, {}
    for who, model in models.items():
        opt = opts[who] = cls(two_groups(model, {"lr": hparams["lr"] / 2}), **hparams)
        if who == "compiled" and order == "compile-first":
            steps[who] = torch.compile(opt.step, backend="aot_eager")
        schedulers[who] = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1.0 + 0.3 * k))
        steps.setdefault(who, torch.compile(opt.step, backend="aot_eager") if who == "compiled" else opt.step)
    counters.clear()
    frames = []
    for k in range(6):
        for who, model in models.items():
            compute_grads(model, k)
            steps[who]()
            schedulers[who].step()
        frames.append(counters["frames"]["total"])
    assert frames[-1] - frames[0] <= 1, f"{name}: compiled frames after each step {frames}"
    assert_same_bits(snapshot(models["compiled"], opts["compiled"]), snapshot(models["eager"], opts["eager"]),
                     f"{name} compiled vs eager")
