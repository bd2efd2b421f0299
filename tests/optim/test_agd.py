"""agd_kernels.AGD as an optimizer, against the independent float64 oracle of tests/agd_oracle.py (docs/agd.md
§5 decisions, §7 tests): layer shapes, followers, missing gradients, gain, init_weights, the one-step
identities, AMP, dtype buckets, launches per step, checkpoints, no host sync, and two small trainings."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import agd_kernels
from agd_kernels import AGD
from tests.agd_oracle import agd_oracle, rounded, sv_of
from tests.tolerance import DTYPE_IDS, EPS, assert_within_2x_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# Linear out > in and out < in, one element, Linear(3, 0); 3x3, 1x1, 7x7 and 2x3 kernels, a grouped conv
# (in/groups = 2), Conv1d and Conv3d. Sizes divide no block size.
SHAPES = [(7, 5), (3, 7), (1, 1), (0, 3), (4, 3, 3, 3), (6, 2, 1, 1), (2, 3, 7, 7), (3, 5, 2, 3), (6, 2, 3, 3),
          (5, 4, 3), (2, 3, 2, 2, 2)]


def params_of(shapes, dtypes, seed=0, zero=False):
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.zeros(s, dtype=d) if zero else torch.randn(s, generator=gen, dtype=torch.float64).to(d))
            for s, d in zip(shapes, dtypes)]


def grads_of(params, seed, zero_taps=True):
    """Random gradients in each parameter's dtype; with zero_taps, the (1, 1) tap of 4-D weights is zero."""
    gen = torch.Generator().manual_seed(1000 + seed)
    grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params]
    for g in grads:
        if zero_taps and g.dim() == 4 and g.shape[2] > 1 and g.shape[3] > 1:
            g[:, :, 1, 1] = 0
    return grads


def compare_with_oracle(opt, params, owners, gains, steps=3, seed=0):
    """Steps `opt` and the oracle side by side on the same gradients; after every step checks each parameter,
    eta and G with the derived rule: error vs float64 <= 2x that of the jxbz-style fp32 reference."""
    dtypes = [p.dtype for p in params]
    exact = [p.detach().double() for p in params]
    ref = [p.detach().clone() for p in params]
    for step in range(steps):
        grads = grads_of(params, seed + step)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        eta = opt.step()
        truth = agd_oracle(exact, grads, owners, gains)
        same_dtype = agd_oracle(ref, grads, owners, gains, math_dtype=torch.float32)
        exact, ref = truth.params, rounded(same_dtype, dtypes)
        for i, p in enumerate(params):
            assert_within_2x_reference(p.detach(), ref[i], exact[i], name=f"step {step} param {i} {tuple(p.shape)}")
        assert eta is opt.last_eta and eta.dtype == torch.float32 and eta.shape == ()
        assert_within_2x_reference(eta, torch.tensor(same_dtype.eta, dtype=torch.float32), torch.tensor(truth.eta),
                                   name=f"step {step} eta")
        assert_within_2x_reference(opt.last_G, torch.tensor(same_dtype.G), torch.tensor(truth.G), name="G")


# ---------------------------------------------------------------- against the oracle
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_weights_match_oracle(dtype):
    # Parameters start at 0 so the first step's result is the update itself (no rounding of p to hide it).
    params = params_of(SHAPES, [dtype] * len(SHAPES), zero=True)
    compare_with_oracle(AGD(params), params, [None] * len(params), [1.0] * len(params))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
def test_followers_across_groups_with_own_gain(dtype):
    # Groups [conv.weight] and [conv.bias, bn scale, fc.weight, fc.bias, a 0-d scalar]: conv.bias and the
    # bn scale follow conv.weight across the group boundary, the last two follow fc.weight; all of
    # group 1 moves with its own gain.
    shapes = [(4, 3, 3, 3), (4,), (4,), (5, 36), (5,), ()]
    params = params_of(shapes, [dtype] * len(shapes))
    groups = [dict(params=params[:1]), dict(params=params[1:], gain=3.0)]
    opt = AGD(groups, bias_mode="follow")
    compare_with_oracle(opt, params, [None, 0, 0, None, 3, 3], [1.0, 3.0, 3.0, 3.0, 3.0, 3.0])


def test_several_dtype_buckets_in_one_optimizer():
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.bfloat16, torch.float32, torch.float16]
    shapes = [(7, 5), (5, 7), (4, 3, 3, 3), (4,), (6, 2, 1, 1), (6,)]
    params = params_of(shapes, dtypes)
    compare_with_oracle(AGD(params, bias_mode="follow"), params, [None, None, None, 2, None, 4], [1.0] * 6)


def test_duplicate_parameter_counts_once():
    w, v = params_of([(4, 3), (3, 4)], [torch.float32] * 2)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = AGD([w, v, w])
    compare_with_oracle(opt, [w, v], [None, None], [1.0, 1.0], steps=1)


def test_missing_gradients_are_excluded_from_depth():
    params = params_of([(7, 5), (5, 5), (3, 5), (3,)], [torch.float32] * 4)
    opt = AGD(params, bias_mode="follow")
    params[1].grad = None
    frozen = params[1].detach().clone()
    grads = grads_of(params, seed=0)
    for i in (0, 2, 3):
        params[i].grad = grads[i].clone()
    kept = [params[i].detach().clone() for i in (0, 2, 3)]
    opt.step()
    assert torch.equal(params[1], frozen)
    grads = [grads[i] for i in (0, 2, 3)]
    truth = agd_oracle(kept, grads, [None, None, 1], [1.0] * 3)          # L = 2, not 3
    same_dtype = agd_oracle(kept, grads, [None, None, 1], [1.0] * 3, math_dtype=torch.float32)
    for p, r, o in zip((params[0], params[2], params[3]), same_dtype.params, truth.params):
        assert_within_2x_reference(p.detach(), r, o)


def test_follower_whose_owner_has_no_gradient_is_not_updated():
    params = params_of([(4, 3), (4,), (2, 4), (2,)], [torch.float32] * 4)
    opt = AGD(params, bias_mode="follow")
    grads = grads_of(params, seed=1)
    for p, g in zip(params, grads):
        p.grad = g
    params[0].grad = None  # the owner; its follower params[1] still has a gradient
    before = [p.detach().clone() for p in params]
    opt.step()
    assert torch.equal(params[0], before[0]) and torch.equal(params[1], before[1])
    truth = agd_oracle(before[2:], grads[2:], [None, 0], [1.0, 1.0])
    same_dtype = agd_oracle(before[2:], grads[2:], [None, 0], [1.0, 1.0], math_dtype=torch.float32)
    for p, r, o in zip(params[2:], same_dtype.params, truth.params):
        assert_within_2x_reference(p.detach(), r, o)


def test_parameters_cast_after_construction_get_their_own_bucket(monkeypatch):
    model = nn.Sequential(nn.Linear(5, 7, bias=False), nn.Linear(7, 3, bias=False))
    opt = AGD(model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    model[1].to(torch.bfloat16)  # the same Parameter object with new data: the step plan must be rebuilt
    calls = _count_ops(monkeypatch)
    compare_with_oracle(opt, list(model.parameters()), [None, None], [1.0, 1.0], steps=1)
    assert calls == {"slice_sumsq_": 2, "agd_step_": 2}  # fp32 and bf16 buckets, never one mixed list


# ---------------------------------------------------------------- identities (spec §7)
def _norm_rel_tol(m: int) -> float:
    """Relative bound on ‖c·g‖ vs c·‖g‖ for an fp32 slice of m elements: (m + 1)·eps on the sum of squares,
    half that after the square root, ~6 roundings in the coefficient and one per element in c·g."""
    return ((m + 1) / 2 + 8) * EPS[torch.float32]


def test_one_step_identities():
    gain = 2.5
    shapes = [(7, 5), (3, 7), (4, 3, 3, 3), (6, 2, 1, 1), (5, 4, 3)]
    params = params_of(shapes, [torch.float32] * len(shapes), zero=True)
    opt = AGD(params, gain=gain)
    grads = grads_of(params, seed=3)  # the 3x3 conv has a zero (1, 1) tap
    for p, g in zip(params, grads):
        p.grad = g
    eta = opt.step()
    L, eta_d, G_d = len(shapes), eta.double().item(), opt.last_G.double().item()
    # eta is the positive root of e^eta (e^eta - 1) = G: closed form in double, fp32 within 6 ulps
    assert math.isclose(eta_d, math.log((1 + math.sqrt(1 + 4 * G_d)) / 2), rel_tol=6 * EPS[torch.float32])
    for p, g in zip(params, grads):
        out_f, in_f = p.shape[0], p.shape[1]
        delta = p.detach().double().reshape(out_f, in_f, -1)  # started at 0
        for tap in range(delta.shape[2]):
            if (g.reshape(out_f, in_f, -1)[:, :, tap] == 0).all():
                assert (delta[:, :, tap] == 0).all()
            else:  # ‖ΔW_tap‖_F = gain·(eta/L)·sv
                assert math.isclose(delta[:, :, tap].norm().item(), gain * eta_d / L * sv_of(p.shape),
                                    rel_tol=_norm_rel_tol(out_f * in_f)), (tuple(p.shape), tap)
    # Whole tensors: a linear layer, and a conv with every tap nonzero, both get gain·(eta/L)·√(out/in).
    assert math.isclose(params[0].detach().double().norm().item(), gain * eta_d / L * math.sqrt(7 / 5),
                        rel_tol=_norm_rel_tol(35))
    params[2].grad[:, :, 1, 1] = torch.randn(4, 3)
    with torch.no_grad():
        params[2].zero_()
    eta = opt.step()
    assert math.isclose(params[2].detach().double().norm().item(), gain * eta.item() / L * math.sqrt(4 / 3),
                        rel_tol=_norm_rel_tol(12))


def test_zero_gradients_give_zero_eta_and_no_change():
    params = params_of([(5, 4), (4,), (3, 2, 3, 3)], [torch.float32] * 3)
    opt = AGD(params, bias_mode="follow")
    for p in params:
        p.grad = torch.zeros_like(p)
    before = [p.detach().clone() for p in params]
    eta = opt.step()
    assert eta == 0 and opt.last_G == 0
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_gain_multiplies_the_update_only():
    shapes = [(6, 4), (6,), (3, 6)]
    runs = []
    for gain in (1.0, 4.0):
        params = params_of(shapes, [torch.float32] * 3, zero=True)
        opt = AGD(params, gain=gain, bias_mode="follow")
        for p, g in zip(params, grads_of(params, seed=4)):
            p.grad = g
        runs.append((opt.step(), opt.last_G, params))
    (eta1, G1, one), (eta4, G4, four) = runs
    assert eta1 == eta4 and G1 == G4
    for a, b in zip(one, four):
        assert torch.allclose(b, 4 * a, rtol=4 * EPS[torch.float32], atol=0)


# ---------------------------------------------------------------- init_weights
INIT_SHAPES = [(16, 40), (40, 16), (24, 24), (8, 6, 3, 3), (12, 4, 1, 1), (5, 7, 2, 3), (6, 5, 3), (4, 3, 2, 2, 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
def test_init_weights_every_tap_has_singular_values_sv(dtype):
    params = params_of(INIT_SHAPES, [dtype] * len(INIT_SHAPES))
    AGD(params).init_weights()
    for p in params:
        out_f, in_f = p.shape[0], p.shape[1]
        taps = p.detach().double().reshape(out_f, in_f, -1)
        sv = sv_of(p.shape)
        # fp32 Householder QR loses orthogonality by at most ~m·n·eps (Higham Thm 19.4); rounding to a
        # 16-bit dtype moves each singular value by at most ‖E‖_F <= (eps/2)·‖W‖_F (Weyl).
        tol = sv * (out_f * in_f * EPS[torch.float32] + EPS[dtype] / 2 * math.sqrt(min(out_f, in_f)))
        for k in range(taps.shape[2]):
            s = torch.linalg.svdvals(taps[:, :, k])
            assert s.numel() == min(out_f, in_f) and ((s - sv).abs() <= tol).all(), (tuple(p.shape), k, s, sv)
        if taps.shape[2] > 1:  # an independent draw per tap
            assert not torch.allclose(taps[:, :, 0], taps[:, :, 1])


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
def test_init_weights_zeroes_named_biases_and_keeps_norm_scales():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2), nn.Linear(2, 0))
    with torch.no_grad():
        model[1].weight.fill_(1.5)
        model[1].bias.fill_(0.5)
    opt = AGD(model.named_parameters(), bias_mode="follow")
    opt.init_weights()
    assert (model[0].bias == 0).all() and (model[1].bias == 0).all() and (model[3].bias == 0).all()
    assert (model[1].weight == 1.5).all()
    s = torch.linalg.svdvals(model[3].weight.detach().double())
    sv = math.sqrt(2 / 4)
    assert ((s - sv).abs() <= sv * 2 * 4 * EPS[torch.float32]).all()  # sv·m·n·eps, as above


# ---------------------------------------------------------------- validation
def test_bias_reject_names_the_parameter():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))
    with pytest.raises(ValueError, match=r"AGD cannot take parameter '0\.bias' \(param_groups\[0\]\['params'\]\[1\], "
                                         r"shape \(4,\)\).*bias_mode='follow'"):
        AGD(model.named_parameters())
    with pytest.raises(ValueError, match=r"AGD cannot take param_groups\[0\]\['params'\]\[1\] \(shape \(4,\)\)"):
        AGD(model.parameters())


def test_follow_needs_a_preceding_weight():
    bias, weight = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"'b'.*needs a preceding weight of rank >= 2"):
        AGD([dict(params=[bias, weight], param_names=["b", "w"])], bias_mode="follow")


@pytest.mark.parametrize("kwargs, message", [
    (dict(bias_mode="freeze"), r"bias_mode must be one of \('reject', 'follow'\); got 'freeze'"),
    (dict(gain=0.0), r"Invalid gain: 0.0; expected a finite number > 0"),
    (dict(gain=float("nan")), r"Invalid gain: nan"),
    (dict(gain="1"), r"Invalid gain: '1'"),
    (dict(backend="fast"), r"backend must be one of"),
])
def test_bad_arguments_name_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AGD([nn.Parameter(torch.zeros(2, 2))], **kwargs)


def test_failed_add_param_group_changes_nothing():
    opt = AGD([nn.Parameter(torch.zeros(2, 2))])
    with pytest.raises(ValueError, match=r"Invalid gain in param_groups\[1\]: -1.0"):
        opt.add_param_group(dict(params=[nn.Parameter(torch.zeros(2, 2))], gain=-1.0))
    with pytest.raises(ValueError, match="AGD cannot take"):
        opt.add_param_group(dict(params=[nn.Parameter(torch.zeros(2))]))
    with pytest.raises(ValueError, match="AGD needs all parameters on one device"):
        opt.add_param_group(dict(params=[nn.Parameter(torch.zeros(2, 2, device="meta"))]))
    assert len(opt.param_groups) == 1


def test_bad_gradient_raises_and_changes_nothing():
    params = params_of([(4, 3), (3, 4)], [torch.float32] * 2)
    opt = AGD(params)
    params[0].grad = torch.ones(4, 3)
    params[1].grad = torch.ones(3, 4).to_sparse()
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match=r"AGD does not support sparse gradients: "
                                           r"param_groups\[0\]\['params'\]\[1\]"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and opt.last_eta is None


# ---------------------------------------------------------------- AMP
def _loss(model, x):
    return model(x).square().mean()


def test_grad_scaler_matches_unscaled_run():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    scaled = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    scaled.load_state_dict(plain.state_dict())
    opt_plain, opt_scaled = AGD(plain.parameters(), bias_mode="follow"), AGD(scaled.parameters(), bias_mode="follow")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    for step in range(3):
        x = torch.randn(5, 6)
        opt_plain.zero_grad()
        _loss(plain, x).backward()
        eta = opt_plain.step()
        opt_scaled.zero_grad()
        scaler.scale(_loss(scaled, x)).backward()
        scaler.step(opt_scaled)
        scaler.update()
        # A power-of-two loss scale is exact in every square, root and quotient: the runs agree bitwise.
        assert opt_scaled.last_eta == eta and opt_scaled.last_G == opt_plain.last_G
        assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), scaled.parameters()))


def test_grad_scaler_skips_a_step_with_inf_gradients():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    opt = AGD(model.parameters(), bias_mode="follow")
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(_loss(model, torch.randn(2, 4))).backward()
    model[0].weight.grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)
    assert opt.last_eta == 0 and opt.last_G == 0
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_found_inf_attribute_skips_the_step():
    params = params_of([(5, 4), (4,), (3, 2, 3, 3)], [torch.float32] * 3)
    opt = AGD(params, bias_mode="follow")
    for p, g in zip(params, grads_of(params, seed=5)):
        p.grad = g
    opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(1.0)
    before = [p.detach().clone() for p in params]
    eta = opt.step()
    assert eta == 0 and opt.last_G == 0
    assert all(torch.equal(p, b) for p, b in zip(params, before))


# ---------------------------------------------------------------- launches, checkpoints, host syncs
def _count_ops(monkeypatch):
    calls = {"slice_sumsq_": 0, "agd_step_": 0}
    for name in calls:
        original = getattr(agd_kernels.ops, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(agd_kernels.ops, name, counted)
    return calls


def test_one_norm_and_one_update_launch_per_bucket(monkeypatch):
    calls = _count_ops(monkeypatch)
    # 60 tensors (30 weights + 30 followers) in one (device, dtype) bucket: 1 + 1 per step.
    params = params_of([(5 + i % 7, 3 + i % 5) if i % 2 == 0 else (5 + (i - 1) % 7,) for i in range(60)],
                       [torch.float32] * 60)
    opt = AGD(params, bias_mode="follow")
    for p in params:
        p.grad = torch.randn_like(p)
    for _ in range(2):
        opt.step()
    assert calls == {"slice_sumsq_": 2, "agd_step_": 2}
    # Two groups x two dtypes: norms once per (device, dtype), updates once per (group, device, dtype).
    calls.update(slice_sumsq_=0, agd_step_=0)
    dtypes = [torch.float32, torch.bfloat16] * 4
    params = params_of([(4, 3)] * 8, dtypes)
    opt = AGD([dict(params=params[:4]), dict(params=params[4:], gain=2.0)])
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert calls == {"slice_sumsq_": 2, "agd_step_": 4}


def test_state_dict_holds_only_param_groups_and_loads_back():
    shapes = [(6, 4), (6,), (3, 6)]
    params = params_of(shapes, [torch.float32] * 3)
    twin = [nn.Parameter(p.detach().clone()) for p in params]
    opt = AGD([dict(params=params[:2]), dict(params=params[2:], gain=3.0)], bias_mode="follow")
    for p, g in zip(params, grads_of(params, seed=6)):
        p.grad = g
    opt.step()
    state = opt.state_dict()
    assert state["state"] == {} and [g["gain"] for g in state["param_groups"]] == [1.0, 3.0]
    assert set(state) == {"state", "param_groups"}
    resumed = AGD([dict(params=twin[:2]), dict(params=twin[2:])], bias_mode="follow")  # gain 1 until loaded
    with torch.no_grad():
        for t, p in zip(twin, params):
            t.copy_(p)
    resumed.load_state_dict(state)
    assert [g["gain"] for g in resumed.param_groups] == [1.0, 3.0]
    for step in range(2):
        grads = grads_of(params, seed=7 + step)
        for p, t, g in zip(params, twin, grads):
            p.grad, t.grad = g.clone(), g.clone()
        assert opt.step() == resumed.step()
        assert all(torch.equal(p, t) for p, t in zip(params, twin))


def test_step_never_reads_a_device_value_back():
    # Meta tensors have no data: any .item(), float(t), bool(t), .tolist() or .cpu() in the step raises.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2), nn.Linear(2, 2, bias=False)).to("meta")
    params = list(model.parameters())
    opt = AGD([dict(params=params[:2]), dict(params=params[2:], gain=2.0)], bias_mode="follow")
    for p in params:
        p.grad = torch.empty_like(p)
    eta = opt.step()
    opt.grad_scale = torch.ones((), device="meta")
    opt.found_inf = torch.zeros((), device="meta")
    eta = opt.step()
    assert eta.device.type == "meta" and eta.shape == () and opt.last_G.device.type == "meta"


@pytest.mark.cuda
def test_cuda_step_does_not_synchronize():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2)).cuda()
    opt = AGD(model.parameters(), bias_mode="follow")
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()  # builds and caches the step plan (its sv table upload is non-blocking too)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_closure_is_evaluated_and_eta_returned():
    model = nn.Linear(3, 2, bias=False)
    opt = AGD(model.parameters())
    x = torch.randn(4, 3)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss
    eta = opt.step(closure)
    assert calls == [1] and eta is opt.last_eta and eta > 0


def test_step_without_any_gradient_changes_nothing():
    params = params_of([(3, 2), (2, 3)], [torch.float32] * 2)
    before = [p.detach().clone() for p in params]
    eta = AGD(params).step()
    assert eta == 0 and all(torch.equal(p, b) for p, b in zip(params, before))


# ---------------------------------------------------------------- small trainings
@pytest.mark.parametrize("bias", [False, True])
def test_micronetwork_learning_addition_never_nans(bias):
    # C1510/agd_exp#1: Linear(2, 1) learning y = x1 + x2. Without bias the fit becomes exact, the
    # gradient exactly 0 and G = 0: the guarded update keeps the weights (the unguarded one gives 0/0).
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = x.sum(1, keepdim=True)
    net = nn.Linear(2, 1, bias=bias)
    opt = AGD(net.named_parameters(), bias_mode="follow")
    opt.init_weights()
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = (net(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        assert all(torch.isfinite(p).all() for p in net.parameters()) and torch.isfinite(opt.last_eta)
    assert losses[-1] < 1e-8 * losses[0]
    assert torch.allclose(net.weight.detach(), torch.ones(1, 2), atol=1e-4)
    # Exactly at the solution: zero gradient, eta = 0, nothing moves, no NaN (any bias follows a zero owner).
    with torch.no_grad():
        net.weight.fill_(1.0)
        if bias:
            net.bias.zero_()
    opt.zero_grad()
    (net(x) - y).square().mean().backward()
    assert (net.weight.grad == 0).all()
    opt.step()
    assert opt.last_eta == 0 and (net.weight == 1).all() and (not bias or (net.bias == 0).all())


def test_micronetwork_on_raw_integers_stays_finite():
    # The setting: unnormalised integer inputs break AGD's scale assumptions, so it need not
    # train, but the update must stay finite.
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 10, (64, 2), generator=gen).float()
    y = x.sum(1, keepdim=True)
    net = nn.Linear(2, 1)
    opt = AGD(net.named_parameters(), bias_mode="follow")
    opt.init_weights()
    for _ in range(100):
        opt.zero_grad()
        (net(x) - y).square().mean().backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())


class FCN(nn.Module):
    """jxbz/agd's FCN: `depth` bias-free Linear layers, ReLU outputs scaled by √2."""

    def __init__(self, depth, width, d_in, d_out):
        super().__init__()
        dims = [d_in] + [width] * (depth - 1) + [d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims, dims[1:]))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x)) * math.sqrt(2)
        return self.layers[-1](x)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32)
    X = (X - X.mean(0)) / X.std(0).clamp_min(1e-6)
    X = X / X.norm(dim=1, keepdim=True) * math.sqrt(X.shape[1])  # ‖x‖ = √d0, the input AGD assumes
    y = torch.tensor(y)
    return X, y, math.sqrt(10) * nn.functional.one_hot(y, 10).float()


@pytest.mark.parametrize("depth", [2, 4, 8, 16])
def test_fcn_trains_at_every_depth_without_tuning(digits, depth):
    X, y, target = digits
    torch.manual_seed(depth)
    net = FCN(depth, 128, X.shape[1], 10)
    opt = AGD(net.parameters())
    opt.init_weights()

    def evaluate():
        with torch.no_grad():
            out = net(X)
            return (out - target).square().mean().item(), (out.argmax(1) == y).float().mean().item()
    loss0, acc0 = evaluate()
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):  # epochs of batch 128
        for idx in torch.randperm(len(X), generator=gen).split(128):
            opt.zero_grad()
            (net(X[idx]) - target[idx]).square().mean().backward()
            opt.step()
    loss, acc = evaluate()
    # Measured margins: loss 1.0-1.2 -> 0.2-0.7 and accuracy 0.04-0.13 -> 0.44-0.94 over depths and seeds.
    assert loss < 0.8 * loss0 and acc > acc0 + 0.2, (depth, loss0, loss, acc0, acc)


# ---------------------------------------------------------------- lr (LR schedulers)
def test_scheduler_lr_scales_the_update_like_gain():
    """An LR scheduler multiplies each group's lr (default 1.0), which multiplies the gain: LambdaLR
    with a linear warmup (Hugging Face's default schedule is this LambdaLR) gives the same bits as
    setting gain·factor by hand each step; the first warmup step (lr 0) changes nothing."""
    shapes = [(6, 4), (6,), (3, 6)]
    factor = lambda k: min(1.0, k / 3)  # noqa: E731 - warmup over 3 steps, then 1
    scheduled_params, manual_params = params_of(shapes, [torch.float32] * 3), params_of(shapes, [torch.float32] * 3)
    scheduled = AGD([dict(params=scheduled_params[:2]), dict(params=scheduled_params[2:], gain=2.0)],
                    bias_mode="follow")
    manual = AGD([dict(params=manual_params[:2]), dict(params=manual_params[2:], gain=2.0)], bias_mode="follow")
    schedule = torch.optim.lr_scheduler.LambdaLR(scheduled, factor)
    for k in range(5):
        grads = grads_of(scheduled_params, seed=20 + k)
        for p, q, g in zip(scheduled_params, manual_params, grads):
            p.grad, q.grad = g.clone(), g.clone()
        eta = scheduled.step()
        if k > 0:  # manual's gain cannot be 0: at k = 0 it skips the step the scheduled run takes at lr 0
            for group, gain in zip(manual.param_groups, (1.0, 2.0)):
                group["gain"] = gain * factor(k)
            assert torch.equal(eta, manual.step())
        assert all(torch.equal(p, q) for p, q in zip(scheduled_params, manual_params)), f"step {k}"
        schedule.step()
    assert [g["lr"] for g in scheduled.param_groups] == [1.0, 1.0]


def test_lr_round_trips_and_old_checkpoints_load_as_one():
    params = params_of([(6, 4), (3, 6)], [torch.float32] * 2)
    opt = AGD([dict(params=params[:1], lr=0.5), dict(params=params[1:])])
    state = opt.state_dict()
    assert [g["lr"] for g in state["param_groups"]] == [0.5, 1.0]
    resumed = AGD([dict(params=params[:1]), dict(params=params[1:])], lr=0.25)
    resumed.load_state_dict(state)
    assert [g["lr"] for g in resumed.param_groups] == [0.5, 1.0]
    for group in state["param_groups"]:
        del group["lr"]  # written before AGD groups had an lr
    resumed.load_state_dict(state)
    assert [g["lr"] for g in resumed.param_groups] == [1.0, 1.0]


@pytest.mark.parametrize("lr", [-0.1, math.inf, torch.tensor(1.0), "1"], ids=["negative", "inf", "tensor", "str"])
def test_bad_lr_says_what_to_pass(lr):
    with pytest.raises(ValueError, match=r"Invalid learning rate.*AGD's lr multiplies its gain.*finite Python number"):
        AGD([nn.Parameter(torch.zeros(2, 2))], lr=lr)
    opt = AGD([nn.Parameter(torch.zeros(2, 2))])
    with pytest.raises(ValueError, match=r"param_groups\[1\].*Invalid learning rate"):
        opt.add_param_group(dict(params=[nn.Parameter(torch.zeros(2, 2))], lr=lr))
    assert len(opt.param_groups) == 1
