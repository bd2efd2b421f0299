"""agd_kernels.YellowFin as an optimizer: return values, exact resume, skipped steps, AMP, groups,
checkpoints, launch count and bad input. Algorithm-vs-spec checks are in tests/reference/test_yellowfin.py."""
from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import agd_kernels as ak
from agd_kernels import ops
from agd_kernels.optim.yellowfin import TUNER_KEY
from agd_kernels.reference.yellowfin import SCRATCH, SLOT, SLOTS
from tests.models import assert_same_bits, clone_model, compute_grads, make_model, snapshot, two_groups
from tests.yellowfin_oracle import YellowFinOracle

# A short window and beta, so a few dozen steps cover the window wrap, tuning, and force_non_inc_step.
OPTIONS = dict(lr=0.02, mu=0.5, curv_win_width=4, beta=0.9)


@pytest.fixture(autouse=True)
def _quiet_fallback():
    with warnings.catch_warnings():  # the CPU build has no YellowFin kernels: the reference runs
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def make(model, **overrides):
    return ak.YellowFin(two_groups(model, {"weight_decay": 0.01}), **{**OPTIONS, **overrides})


def full_snapshot(model, opt) -> dict:
    """Parameters, per-parameter state, and the tuner without its per-step scratch (the clip factors
    there carry 1/grad_scale)."""
    keep = [i for i, name in enumerate(SLOTS) if name not in SCRATCH]
    return {**snapshot(model, opt), "tuner": opt.tuner[keep], "curv_win": opt.tuner[len(SLOTS):].clone()}


def test_step_returns_applied_lr_and_mu_as_device_tensors():
    model = make_model()
    opt = make(model)
    for k in range(6):
        compute_grads(model, k)
        lr, mu = opt.step()
        for value in (lr, mu):
            assert isinstance(value, torch.Tensor) and value.shape == () and value.dtype == torch.float64
            assert value.device == model.fc1.weight.device
        assert lr.item() == opt.tuner[SLOT["applied_lr"]].item() and mu.item() == opt.tuner[SLOT["mu_t"]].item()
        assert lr is opt.last_lr and mu is opt.last_mu
        if k == 0:
            assert (lr.item(), mu.item()) == (OPTIONS["lr"], OPTIONS["mu"])  # step 0 applies the constructor's
    before = lr.clone()
    compute_grads(model, 6)
    opt.step()
    assert torch.equal(lr, before), "a returned tensor must not alias the tuner"
    loss = opt.step(lambda: compute_grads(model, 7))
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0, "with a closure, step() returns its loss"


def test_weight_decay_per_group_matches_oracle():
    """Two groups with different weight decay against the float64 oracle (fp64 parameters)."""
    model = make_model(torch.float64)
    opt = ak.YellowFin(two_groups(model, {"weight_decay": 0.05}), **OPTIONS, backend="torch")
    params = [p for g in opt.param_groups for p in g["params"]]
    shadows = [p.detach().clone() for p in params]
    decays = [g["weight_decay"] for g in opt.param_groups for _ in g["params"]]
    oracle = YellowFinOracle(shadows, decays, **OPTIONS)
    for k in range(12):
        compute_grads(model, k)
        oracle.step([p.grad for p in params])
        opt.step()
        for p, q in zip(params, shadows):
            # fp64 rounding-order differences only (tests/reference/test_yellowfin.py: 1e-9 relative)
            torch.testing.assert_close(p.detach(), q, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("options", [{}, dict(force_non_inc_step=True, sparsity_debias=True, auto_clip_fac=2.0)],
                         ids=["defaults", "force-sparsity-autoclip"])
def test_resume_from_checkpoint_is_bitwise_exact(options):
    """Save at step 9 (window wrapped, past force_non_inc_step's start), serialize, load into a fresh
    optimizer built with *other* tuner options (the checkpoint's win), continue: equal bits to an
    uninterrupted run, tuner included."""
    straight_model = make_model()
    resumed_model = clone_model(straight_model)
    straight = make(straight_model, **options)
    first_half = make(resumed_model, **options)
    for k in range(9):
        for model, opt in ((straight_model, straight), (resumed_model, first_half)):
            compute_grads(model, k)
            opt.step()
    buffer = io.BytesIO()
    torch.save(first_half.state_dict(), buffer)
    buffer.seek(0)
    resumed = ak.YellowFin(two_groups(resumed_model, {"weight_decay": 0.01}), lr=0.5, curv_win_width=20)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.options == first_half.options
    for k in range(9, 20):
        for model, opt in ((straight_model, straight), (resumed_model, resumed)):
            compute_grads(model, k)
            opt.step()
    assert_same_bits(full_snapshot(resumed_model, resumed), full_snapshot(straight_model, straight), "resumed run")


def _tuner_of(sd):
    """The tuner entry of a state dict: in the first parameter's state (where DCP keeps it)."""
    return sd["state"][sd["param_groups"][0]["params"][0]][TUNER_KEY]


def test_state_dict_layout():
    model = make_model()
    opt = make(model)
    compute_grads(model, 0)
    opt.step()
    sd = opt.state_dict()
    first = sd["param_groups"][0]["params"][0]
    for pid, state in sd["state"].items():
        assert set(state) == {"grad_avg", "momentum_buffer"} | ({TUNER_KEY} if pid == first else set())
    assert set(sd) == {"state", "param_groups"}, "torch.distributed.checkpoint keeps only these two"
    assert TUNER_KEY not in opt.state[opt.param_groups[0]["params"][0]], "state_dict() must not write into state"
    tuner = _tuner_of(sd)
    assert tuner["curv_win"].shape == (OPTIONS["curv_win_width"],) and tuner["curv_win"].dtype == torch.float64
    assert tuner["iter"].item() == 1 and tuner["lr_factor"].item() == 1.0
    assert tuner["options"]["curv_win_width"] == OPTIONS["curv_win_width"]
    assert all(v.dtype == torch.float64 and v.shape == () for k, v in tuner.items() if k not in ("curv_win", "options"))
    assert "stats_coef" not in tuner and "step_coef" not in tuner  # per-step scratch, rewritten before use


def test_loads_checkpoints_with_the_tuner_at_the_top_level():
    """Checkpoints written before the tuner moved into per-parameter state (top-level "tuner") load to
    the same optimizer state."""
    model, opt = _stepped()
    sd = copy.deepcopy(opt.state_dict())
    first = sd["param_groups"][0]["params"][0]
    legacy = {**sd, "state": {**sd["state"], first: dict(sd["state"][first])}}
    legacy["tuner"] = legacy["state"][first].pop(TUNER_KEY)
    fresh_model = make_model()
    fresh = make(fresh_model)
    fresh.load_state_dict(legacy)
    assert torch.equal(fresh.tuner[:SLOT["stats_coef"]], opt.tuner[:SLOT["stats_coef"]])
    assert torch.equal(fresh.tuner[len(SLOTS):], opt.tuner[len(SLOTS):])
    assert all(TUNER_KEY not in s for s in fresh.state.values())


def test_tuner_stays_float64_for_half_parameters():
    model = make_model(torch.float16)
    opt = make(model)
    compute_grads(model, 0)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    other = make(clone_model(model))
    other.load_state_dict(sd)
    assert other.tuner.dtype == torch.float64 and torch.equal(other.tuner[:SLOT["stats_coef"]],
                                                               opt.tuner[:SLOT["stats_coef"]])
    assert other.state[other.param_groups[0]["params"][0]]["grad_avg"].dtype == torch.float16


def _stepped(steps=3, **overrides):
    model = make_model()
    opt = make(model, **overrides)
    for k in range(steps):
        compute_grads(model, k)
        opt.step()
    return model, opt


def test_found_inf_skips_the_whole_step_tuner_included():
    model, opt = _stepped()
    compute_grads(model, 3, scale=8.0)
    before, tuner = full_snapshot(model, opt), opt.tuner.clone()
    opt.grad_scale, opt.found_inf = torch.tensor(8.0), torch.tensor(1.0)
    lr, mu = opt.step()
    assert_same_bits(full_snapshot(model, opt), before, "after found_inf")
    assert torch.equal(opt.tuner, tuner), "found_inf must leave the whole tuner, scratch included"
    assert lr.item() == opt.tuner[SLOT["applied_lr"]].item() and mu.item() == opt.tuner[SLOT["mu_t"]].item()


def test_non_finite_gradient_skips_the_step_as_if_it_never_came():
    """Without GradScaler: an inf or NaN gradient skips the step (statistics included); the run then
    continues exactly as one that never saw that step."""
    model, opt = _stepped()
    reference_model = clone_model(model)
    reference = make(reference_model)
    reference.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch's load would alias the tensors
    for bad in (float("inf"), float("nan")):
        compute_grads(model, 3)
        model.fc2.bias.grad[1] = bad
        before = full_snapshot(model, opt)
        opt.step()
        assert_same_bits(full_snapshot(model, opt), before, f"after a {bad} gradient")
    for k in (4, 5):
        for m, o in ((model, opt), (reference_model, reference)):
            compute_grads(m, k)
            o.step()
    assert_same_bits(full_snapshot(model, opt), full_snapshot(reference_model, reference), "after the skips")


def test_grad_scale_is_exactly_unscaled():
    """Power-of-two scales: unscaling is exact, so the scaled run equals the plain one bit for bit,
    tuner included (the registry's GradScaler test allows 2 ulps for every optimizer)."""
    plain_model = make_model()
    scaled_model = clone_model(plain_model)
    plain, scaled = make(plain_model), make(scaled_model)
    scaled.found_inf = torch.tensor(0.0)
    for k in range(8):
        compute_grads(plain_model, k)
        plain.step()
        scale = 2.0 ** (12 - k)
        compute_grads(scaled_model, k, scale=scale)
        scaled.grad_scale = torch.tensor(scale)
        scaled.step()
    assert_same_bits(full_snapshot(scaled_model, scaled), full_snapshot(plain_model, plain), "grad_scale run")


def test_parameters_without_gradient_are_left_alone():
    model = make_model()
    opt = make(model)
    compute_grads(model, 0)
    opt.step()
    compute_grads(model, 1)
    model.conv.weight.grad = None
    before = snapshot(model, opt)
    opt.step()
    after = snapshot(model, opt)
    for key in before:
        if "conv.weight" in key:
            assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["param fc1.weight"], before["param fc1.weight"])
    model.zero_grad(set_to_none=True)
    tuner = opt.tuner.clone()
    lr, _ = opt.step()
    assert torch.equal(opt.tuner, tuner) and lr.item() == tuner[SLOT["applied_lr"]].item(), \
        "a step without any gradient changes nothing"


def test_set_lr_factor_scales_the_applied_lr():
    model, opt = _stepped(steps=5)
    twin_model = clone_model(model)
    twin = make(twin_model)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch's load would alias the tensors
    opt.set_lr_factor(0.25)
    assert opt.get_lr_factor().item() == 0.25
    for m, o in ((model, opt), (twin_model, twin)):
        compute_grads(m, 5)
        o.step()
    assert opt.tuner[SLOT["applied_lr"]].item() == pytest.approx(0.25 * twin.tuner[SLOT["applied_lr"]].item(),
                                                                 rel=1e-15)
    assert opt.tuner[SLOT["lr_t"]].item() == twin.tuner[SLOT["lr_t"]].item()
    with pytest.raises(ValueError, match="lr factor"):
        opt.set_lr_factor(-1.0)


def test_three_launches_per_step_for_one_bucket(monkeypatch):
    """stats, tune, apply: one call each for a one-group, one-dtype model (docs/design.md rule 4)."""
    calls = []
    for name in ("yellowfin_stats_", "yellowfin_tune_", "yellowfin_apply_"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
    model = make_model()
    opt = ak.YellowFin(model.parameters(), **OPTIONS)
    compute_grads(model, 0)
    opt.step()
    assert calls == ["yellowfin_stats_", "yellowfin_tune_", "yellowfin_apply_"]


BAD = {
    "lr": (dict(lr=-1.0), r"learning rate"),
    "mu": (dict(mu=1.0), r"Invalid mu"),
    "weight_decay": (dict(weight_decay=-0.1), r"weight_decay"),
    "beta": (dict(beta=1.0), r"Invalid beta"),
    "curv_win_width": (dict(curv_win_width=0), r"curv_win_width"),
    "clip_thresh": (dict(clip_thresh=0.0), r"clip_thresh"),
    "auto_clip_fac": (dict(auto_clip_fac=-1.0), r"auto_clip_fac"),
    "stat_protect_fac": (dict(stat_protect_fac=float("nan")), r"stat_protect_fac"),
    "catastrophic_move_thresh": (dict(catastrophic_move_thresh=0), r"catastrophic_move_thresh"),
    "flag": (dict(adapt_clip=1), r"adapt_clip"),
    "backend": (dict(backend="gpu"), r"backend must be one of"),
}


@pytest.mark.parametrize("kwargs, match", BAD.values(), ids=BAD.keys())
def test_invalid_arguments_raise_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ak.YellowFin(make_model().parameters(), **kwargs)


def test_parameters_on_two_devices_rejected():
    opt = ak.YellowFin([nn.Parameter(torch.ones(3))])
    with pytest.raises(ValueError, match="YellowFin needs all parameters on one device"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(3, device="meta"))]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("corrupt, match", [
    (lambda sd: sd["state"][0].pop(TUNER_KEY), r"no 'yellowfin_tuner' entry"),
    (lambda sd: _tuner_of(sd).pop("h_max"), r"'h_max'"),
    (lambda sd: _tuner_of(sd).__setitem__("curv_win", torch.zeros(3, dtype=torch.float64)), r"curv_win.*\(4,\)"),
    (lambda sd: _tuner_of(sd)["options"].__setitem__("beta", 2.0), r"Invalid beta"),
], ids=["no-tuner", "missing-slot", "window-length", "bad-option"])
def test_bad_checkpoint_rejected_changing_nothing(corrupt, match):
    model, opt = _stepped()
    sd = copy.deepcopy(opt.state_dict())
    corrupt(sd)
    before, options = full_snapshot(model, opt), dict(opt.options)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert_same_bits(full_snapshot(model, opt), before, "after a rejected checkpoint")
    assert opt.options == options


def test_compiled_step_matches_eager():
    """torch.compile(step, fullgraph=True): no graph break (no host sync, every tuner decision a
    tensor op), and the same bits as eager, tuner included."""
    eager_model = make_model()
    compiled_model = clone_model(eager_model)
    eager, compiled = make(eager_model), make(compiled_model)
    step = torch.compile(compiled.step, fullgraph=True, backend="aot_eager")
    for k in range(4):
        compute_grads(eager_model, k)
        eager.step()
        compute_grads(compiled_model, k)
        step()
    assert_same_bits(full_snapshot(compiled_model, compiled), full_snapshot(eager_model, eager), "compiled step")
