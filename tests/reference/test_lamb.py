"""The LAMB reference (backend="torch") against the spec: an independent float64 oracle of apex
FusedLAMB and of the paper variant (tests/lamb_oracle.py), and the edge cases of the op.

Tolerances. In float64 the reference and the oracle differ only in rounding order: per step about
ten rounded operations per element plus two norms, each ~1 ulp, so 5 steps stay within
5·(10 + 2) ≈ 64 ulps·(1 + |x|). That needs the global norm exact, though the op receives it as
fp32 sums of squares (slice_sumsq_'s contract): the fp64 tests round gradients to multiples of
2^-10, so every square is a multiple of 2^-20 and every sum (< 16 here) is exact in fp32's 24 bits.
In 16-bit and fp32 parameters, one step rounds each stored value once (½ ulp) after fp32 math whose
own few roundings are ≤ 1.5 fp32 ulps: 2 ulps of the dtype.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import agd_kernels as ak
from agd_kernels import ops
from agd_kernels.reference import lamb as ref_lamb
from agd_kernels.reference.lamb import clip_divisor
from tests.lamb_oracle import LambOracle
from tests.models import compute_grads, make_model, two_groups
from tests.tolerance import DTYPE_IDS, assert_close_ulps

STEPS = 5
FP64_ULPS = 64
LR = 2.0 ** -7  # exact in fp32, the dtype of the lr tensor the op reads (also for fp64 parameters)


@pytest.fixture(autouse=True)
def _quiet_fallback():
    with warnings.catch_warnings():  # the reference runs where the build has no LAMB kernels
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# name -> (constructor kwargs, overrides of group 0 (conv), overrides of group 1 (MLP))
CONFIGS = {
    "apex-defaults-clip-wd0-group": (dict(), {}, dict(weight_decay=0.0)),
    "apex-l2-mode": (dict(adam_w_mode=False), {}, dict(weight_decay=0.1)),
    "apex-nvlamb-wd0": (dict(use_nvlamb=True, weight_decay=0.0), {}, {}),
    "apex-no-bias-correction-no-averaging": (dict(bias_correction=False, grad_averaging=False), {}, {}),
    "apex-unclipped": (dict(max_grad_norm=None, weight_decay=0.05), {}, {}),
    "paper-exclusions-phi": (dict(variant="paper"),
                             dict(exclude_from_weight_decay=True, exclude_from_layer_adaptation=True),
                             dict(phi_min=0.5, phi_max=1.0)),
    "paper-clipped-wd-excluded": (dict(variant="paper", max_grad_norm=1.0), {},
                                  dict(exclude_from_weight_decay=True)),
}


def _oracle_setup(model, kwargs, first, second):
    """The oracle's groups and settings for the optimizer LAMB(two_groups(...), **kwargs)."""
    variant = kwargs.get("variant", "apex")
    shared = {k: v for k, v in kwargs.items() if k not in ("variant", "max_grad_norm")}
    groups = []
    for names, overrides in ((("conv",), first), (("fc1", "fc2"), second)):
        params = [p.detach().clone() for n, p in model.named_parameters() if n.split(".")[0] in names]
        groups.append(dict(params=params, lr=LR, **shared, **overrides))
    max_grad_norm = kwargs.get("max_grad_norm", 1.0 if variant == "apex" else None)
    return LambOracle(groups, variant=variant, max_grad_norm=max_grad_norm)


@pytest.mark.parametrize("name", CONFIGS)
def test_matches_float64_oracle(name):
    """5 steps with two groups; fc2.bias has no gradient at step 2 (its step counter must lag)."""
    kwargs, first, second = CONFIGS[name]
    model = make_model(torch.float64)
    oracle = _oracle_setup(model, kwargs, first, second)
    groups = two_groups(model)
    groups[0].update(first)
    groups[1].update(second)
    opt = ak.LAMB(groups, lr=LR, backend="torch", **kwargs)
    params = [p for g in opt.param_groups for p in g["params"]]
    clipped = 0
    for k in range(STEPS):
        compute_grads(model, k)
        for p in params:
            p.grad = torch.round(p.grad * 2.0 ** 10) / 2.0 ** 10
        if k == 2:
            model.fc2.bias.grad = None
        grads = [p.grad for p in params]
        norm = math.sqrt(sum(float(g.square().sum()) for g in grads if g is not None))
        clipped += oracle.max_grad_norm is not None and norm > oracle.max_grad_norm
        oracle.step([grads[:2], grads[2:]])
        opt.step()
        shadows = [q for g in oracle.groups for q in g["params"]]
        for i, (p, q) in enumerate(zip(params, shadows)):
            assert_close_ulps(p.detach(), q, torch.float64, FP64_ULPS, name=f"{name} step {k} param {i}")
            state, expected = opt.state[p], oracle.state[id(q)]
            assert state["step"].item() == expected["step"]
            assert_close_ulps(state["exp_avg"], expected["m"], torch.float64, FP64_ULPS, name=f"exp_avg {i}")
            assert_close_ulps(state["exp_avg_sq"], expected["v"], torch.float64, FP64_ULPS, name=f"exp_avg_sq {i}")
    assert opt.state[model.fc2.bias]["step"].item() == STEPS - 1
    if oracle.max_grad_norm is not None:
        assert 0 < clipped < STEPS, "the clip should be active on some steps and not on others"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("variant", ["apex", "paper"])
def test_one_step_in_parameter_dtype(dtype, variant):
    model = make_model(dtype)
    kwargs = dict(variant=variant, max_grad_norm=1.0)
    oracle = _oracle_setup(model, kwargs, {}, dict(weight_decay=0.0) if variant == "apex" else dict(phi_min=0.5))
    opt = ak.LAMB(two_groups(model, dict(weight_decay=0.0) if variant == "apex" else dict(phi_min=0.5)), lr=LR,
                  backend="torch", **kwargs)
    for g in oracle.groups:
        g["params"] = [q.double() for q in g["params"]]
    compute_grads(model, 0)
    params = [p for g in opt.param_groups for p in g["params"]]
    oracle.step([[p.grad.double() for p in params[:2]], [p.grad.double() for p in params[2:]]])
    opt.step()
    shadows = [q for g in oracle.groups for q in g["params"]]
    for i, (p, q) in enumerate(zip(params, shadows)):
        assert_close_ulps(p.detach(), q, dtype, 2, name=f"param {i}")
        assert_close_ulps(opt.state[p]["exp_avg"], oracle.state[id(q)]["m"], dtype, 2, name=f"exp_avg {i}")
        assert_close_ulps(opt.state[p]["exp_avg_sq"], oracle.state[id(q)]["v"], dtype, 2, name=f"exp_avg_sq {i}")


def test_clip_divisor():
    """k = N/max_grad_norm above the threshold, 1 at or below it; a NaN norm fails apex's comparison
    (k = 1), an inf one gives k = inf; max_grad_norm = inf never clips; N is unscaled first."""
    def k(sumsq, max_norm, scale=None):
        return clip_divisor(torch.tensor(sumsq, dtype=torch.float32), max_norm, scale).item()
    assert k([9.0, 16.0], 1.0) == 5.0
    assert k([9.0, 16.0], 5.0) == 1.0
    assert k([9.0, 16.0], math.inf) == 1.0
    assert k([9.0 * 64, 16.0 * 64], 1.0, torch.tensor(8.0)) == 5.0
    assert k([math.nan, 1.0], 1.0) == 1.0 and k([math.inf], 1.0) == math.inf
    assert k([], 1.0) == 1.0


def _step(params, grads, grad_scale=None, found_inf=None, **overrides):
    """lamb_moments_ then lamb_apply_ (torch backend) on fresh zero state; returns (state lists, norms)."""
    hp = dict(max_grad_norm=1.0, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, bias_correction=True,
              grad_averaging=True, adam_w_mode=True, grad_scale=grad_scale, found_inf=found_inf, backend="torch")
    trust = dict(use_trust_ratio=True)
    for key, value in overrides.items():
        (trust if key in ("use_trust_ratio", "phi_min", "phi_max") else hp)[key] = value
    sumsq = torch.stack([g.float().square().sum() for g in grads]) if grads else torch.zeros(0)
    state = ([torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params],
             [torch.zeros((), dtype=torch.float32) for _ in params])
    norms = torch.full((2 * len(params),), math.nan, dtype=torch.float64)
    ops.lamb_moments_(params, grads, *state, sumsq, norms, **hp)
    ops.lamb_apply_(params, grads, *state, torch.tensor(0.1), sumsq, norms, **hp, **trust)
    return state, norms


def test_zero_norms_give_trust_ratio_one():
    """‖p‖ = 0 (fresh zero bias): ratio 1, so p moves by lr·u; ‖u‖ = 0 as well (no gradient, no
    decay): nothing moves; empty and one-element tensors are fine."""
    zero_p, zero_both = torch.zeros(3), torch.zeros(2)
    params = [zero_p, zero_both, torch.empty(0), torch.ones(1)]
    grads = [torch.tensor([0.1, -0.2, 0.3]), torch.zeros(2), torch.empty(0), torch.tensor([0.5])]
    _, norms = _step(params, grads, max_grad_norm=math.inf)
    u = torch.tensor([0.1, -0.2, 0.3]).sign() / (1 + 1e-6 / 0.1 * torch.tensor([1.0, 0.5, 1 / 3]))
    assert_close_ulps(zero_p, -0.1 * u, torch.float32, 4)
    assert torch.equal(zero_both, torch.zeros(2))
    # one element: ‖p‖ = 1 and u = sign(g) + wd·p: ratio = 1/‖u‖, the step is lr·sign(u)
    assert_close_ulps(params[3], torch.tensor([0.9]), torch.float32, 4)
    assert norms[:6].tolist()[::2] == [0.0, 0.0, 0.0] and norms[6].item() == 1.0
    assert norms[3].item() == 0.0 and norms[5].item() == 0.0


def test_non_finite_gradient_propagates_without_found_inf():
    """As apex: a NaN global norm does not clip (k = 1) and the NaN reaches the parameters."""
    params = [torch.ones(4), torch.ones(2)]
    grads = [torch.tensor([1.0, math.nan, 0.0, 1.0]), torch.ones(2)]
    _step(params, grads)
    assert params[0].isnan().all() and params[1].isfinite().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=DTYPE_IDS.get)
def test_found_inf_changes_nothing_at_op_level(dtype):
    params = [torch.randn(5).to(dtype), torch.randn(3).to(dtype)]
    grads = [torch.randn(5).to(dtype), torch.tensor([1.0, math.inf, 2.0]).to(dtype)]
    before = [t.clone() for t in params]
    state, norms = _step(params, grads, grad_scale=torch.tensor(4.0), found_inf=torch.tensor(1.0))
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    assert all(not t.any() for lst in state for t in lst) and norms.isnan().all()


def _split_step(dtype):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(n, generator=gen).to(dtype) for n in (7, 1, 300)]
    grads = [torch.randn(n, generator=gen).to(dtype) for n in (7, 1, 300)]
    sumsq = torch.stack([g.float().square().sum() for g in grads])
    m = [torch.randn(p.shape, generator=gen).mul(0.1).to(dtype) for p in params]
    v = [torch.rand(p.shape, generator=gen).mul(0.01).to(dtype) for p in params]
    steps = [torch.tensor(3.0) for _ in params]
    return params, grads, m, v, steps, sumsq


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=DTYPE_IDS.get)
def test_moments_store_only_wide_moments_and_apply_reads_steps(dtype):
    """The deferred-moments rule: lamb_moments_ stores m', v' for fp32 and leaves 16-bit ones alone, for
    lamb_apply_ to store; the steps advance once, in lamb_moments_; norms hold Σp² (p before the update)."""
    params, grads, m, v, steps, sumsq = _split_step(dtype)
    m0, v0, p0 = [t.clone() for t in m], [t.clone() for t in v], [t.clone() for t in params]
    hp = dict(max_grad_norm=1.0, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, bias_correction=True,
              grad_averaging=True, adam_w_mode=True, backend="torch")
    norms = torch.empty(6, dtype=torch.float64)
    ops.lamb_moments_(params, grads, m, v, steps, sumsq, norms, **hp)
    deferred = dtype != torch.float32
    assert all(torch.equal(a, b) == deferred for a, b in zip(m + v, m0 + v0))
    assert [s.item() for s in steps] == [4.0] * 3
    assert_close_ulps(norms[::2], torch.stack([p.double().square().sum() for p in p0]), torch.float32, 8)
    m1, v1 = [t.clone() for t in m], [t.clone() for t in v]
    ops.lamb_apply_(params, grads, m, v, steps, torch.tensor(0.1), sumsq, norms, **hp, use_trust_ratio=True)
    assert [s.item() for s in steps] == [4.0] * 3
    # m' - m = 0.1·(g/k - m) shows in every dtype; v' - v = 0.001·(g²/k² - v) may round away in bf16
    assert all(torch.equal(a, b) != deferred for a, b in zip(m, m1))
    if not deferred:
        assert all(torch.equal(a, b) for a, b in zip(v, v1))


def test_norms_of_a_larger_buffer_and_in_fp32():
    """norms may be a narrow() of a larger buffer (only its slots are written) or float32; the result is
    the float64 one's (fp32 rounds Σp², Σu² by 2^-24, far below what the ratio moves)."""
    results = []
    for make_norms in (lambda: torch.full((10,), -1.0, dtype=torch.float64).narrow(0, 2, 6),
                       lambda: torch.empty(6, dtype=torch.float32)):
        params, grads, m, v, steps, sumsq = _split_step(torch.float32)
        norms = make_norms()
        hp = dict(max_grad_norm=1.0, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, bias_correction=True,
                  grad_averaging=True, adam_w_mode=True, backend="torch")
        ops.lamb_moments_(params, grads, m, v, steps, sumsq, norms, **hp)
        ops.lamb_apply_(params, grads, m, v, steps, torch.tensor(0.1), sumsq, norms, **hp, use_trust_ratio=True)
        if norms.dtype == torch.float64:
            base = norms._base
            assert base[:2].tolist() == [-1.0, -1.0] and base[8:].tolist() == [-1.0, -1.0]
        results.append(params)
    for a, b in zip(*results):
        assert_close_ulps(a, b, torch.float32, 2)


@pytest.mark.parametrize("op", ["lamb_moments_", "lamb_apply_"])
@pytest.mark.parametrize("norms, error, match", [
    (torch.zeros(5, dtype=torch.float64), ValueError, r"norms must be 1-D with 2 slots per tensor of params \(6\)"),
    (torch.zeros(6, dtype=torch.int64), TypeError, r"norms must be float64 \(or float32\); got torch.int64"),
], ids=["numel", "dtype"])
def test_bad_norms_raise_naming_them(op, norms, error, match):
    params, grads, m, v, steps, sumsq = _split_step(torch.float32)
    before = [t.clone() for t in params + m + v + steps]
    hp = (1.0, 0.9, 0.999, 1e-6, 0.01, True, True, True)
    args = ((params, grads, m, v, steps, sumsq, norms, *hp, None, None) if op == "lamb_moments_" else
            (params, grads, m, v, steps, torch.tensor(0.1), sumsq, norms, *hp, True, 0.0, math.inf, None, None,
             []))
    with pytest.raises(error, match=f"{op}: {match}"):
        getattr(ref_lamb, op)(*args)
    assert all(torch.equal(a, b) for a, b in zip(params + m + v + steps, before))
