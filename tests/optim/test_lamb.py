"""agd_kernels.LAMB as an optimizer: state layout, checkpoints, the global clip setting, AMP, launch
count and bad input. Algorithm-vs-spec checks are in tests/reference/test_lamb.py."""
from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
from torch import nn

import agd_kernels as ak
from agd_kernels import ops
from tests.models import assert_same_bits, clone_model, compute_grads, make_model, snapshot, two_groups


@pytest.fixture(autouse=True)
def _quiet_fallback():
    with warnings.catch_warnings():  # the reference runs where the build has no LAMB kernels
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def make(model, **kwargs):
    return ak.LAMB(two_groups(model, {"weight_decay": 0.0}), **{"lr": 1e-2, **kwargs})


def run(model, opt, steps):
    for k in steps:
        compute_grads(model, k)
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_state_layout(dtype):
    """exp_avg, exp_avg_sq in the parameter's dtype; step a 0-d fp32 tensor per parameter on its
    device, advanced only by steps where the parameter has a gradient."""
    model = make_model(dtype)
    opt = make(model)
    run(model, opt, range(2))
    compute_grads(model, 2)
    model.fc2.bias.grad = None
    opt.step()
    for name, p in model.named_parameters():
        state = opt.state[p]
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        assert state["step"].shape == () and state["step"].dtype == torch.float32 and state["step"].device == p.device
        assert state["step"].item() == (2 if name == "fc2.bias" else 3)
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].dtype == dtype and state[key].shape == p.shape
    assert all("step" not in g for g in opt.param_groups), "apex keeps step in the group; we keep it per parameter"


def test_checkpoint_round_trip_resumes_bitwise():
    straight_model = make_model()
    resumed_model = clone_model(straight_model)
    straight, first_half = make(straight_model), make(resumed_model)
    run(straight_model, straight, range(3))
    run(resumed_model, first_half, range(3))
    buffer = io.BytesIO()
    torch.save(first_half.state_dict(), buffer)
    buffer.seek(0)
    resumed = make(resumed_model, lr=0.5)  # the checkpoint's hyper-parameters win, as in torch
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    run(straight_model, straight, range(3, 6))
    run(resumed_model, resumed, range(3, 6))
    assert_same_bits(snapshot(resumed_model, resumed), snapshot(straight_model, straight), "resumed run")


def test_max_grad_norm_none_disables_the_clip():
    """None equals a threshold no norm reaches, bit for bit, and differs from an active clip."""
    base = make_model()
    runs = {}
    for label, value in (("none", None), ("huge", 1e30), ("tight", 1e-3)):
        model = clone_model(base)
        opt = make(model, max_grad_norm=value)
        run(model, opt, range(3))
        runs[label] = snapshot(model, opt)
    assert_same_bits(runs["none"], runs["huge"], "max_grad_norm=None vs 1e30")
    assert not torch.equal(runs["none"]["param fc1.weight"], runs["tight"]["param fc1.weight"])


def test_paper_variant_defaults_to_no_clip():
    model = make_model()
    assert ak.LAMB(model.parameters(), variant="paper").param_groups[0]["max_grad_norm"] is None
    assert ak.LAMB(model.parameters()).param_groups[0]["max_grad_norm"] == 1.0


def test_grad_scale_is_exactly_unscaled_with_the_clip_active():
    """The clip reads N/grad_scale: with power-of-two scales the scaled run equals the plain one bit
    for bit (the norm of 2^k·g is exactly 2^k·‖g‖)."""
    plain_model = make_model()
    scaled_model = clone_model(plain_model)
    plain, scaled = make(plain_model, max_grad_norm=0.5), make(scaled_model, max_grad_norm=0.5)
    scaled.found_inf = torch.tensor(0.0)
    for k in range(4):
        compute_grads(plain_model, k)
        plain.step()
        scale = 2.0 ** (10 + k)
        compute_grads(scaled_model, k, scale=scale)
        scaled.grad_scale = torch.tensor(scale)
        scaled.step()
    assert_same_bits(snapshot(scaled_model, scaled), snapshot(plain_model, plain), "grad_scale run")


def test_found_inf_skips_step_and_counters():
    model = make_model()
    opt = make(model)
    run(model, opt, range(2))
    compute_grads(model, 2, scale=4.0)
    model.fc1.weight.grad[0, 0] = math.inf
    before = snapshot(model, opt)
    opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(1.0)
    opt.step()
    assert_same_bits(snapshot(model, opt), before, "after found_inf")


@pytest.mark.parametrize("max_grad_norm, launches", [(1.0, ["slice_sumsq_", "lamb_moments_", "lamb_apply_"]),
                                                     (None, ["lamb_moments_", "lamb_apply_"])])
def test_launches_per_step_for_one_bucket(monkeypatch, max_grad_norm, launches):
    """The global-norm pass (skipped when nothing clips), then lamb_moments_ and lamb_apply_ (docs/design.md rule 4)."""
    calls = []
    for name in ("slice_sumsq_", "lamb_moments_", "lamb_apply_"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
    model = make_model()
    opt = ak.LAMB(model.parameters(), max_grad_norm=max_grad_norm)
    compute_grads(model, 0)
    opt.step()
    assert calls == launches


@pytest.mark.parametrize("value", [0, 0.0, -1.0, math.nan, True, "1.0"])
def test_invalid_max_grad_norm_rejected(value):
    with pytest.raises(ValueError, match="max_grad_norm"):
        ak.LAMB(make_model().parameters(), max_grad_norm=value)


def test_per_group_max_grad_norm_rejected():
    model = make_model()
    with pytest.raises(ValueError, match=r"param_groups\[2\] sets max_grad_norm=2.0.*global"):
        make(model).add_param_group({"params": [nn.Parameter(torch.ones(2))], "max_grad_norm": 2.0})
    opt = ak.LAMB(two_groups(model, {"max_grad_norm": 1.0}))  # the optimizer's own value is fine
    compute_grads(model, 0)
    opt.param_groups[1]["max_grad_norm"] = 3.0  # changed behind the constructor's back
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="max_grad_norm is global"):
        opt.step()
    assert_same_bits(snapshot(model, opt), before, "after a rejected step")


def test_load_adopts_the_checkpoint_max_grad_norm():
    model = make_model()
    source = make(model, max_grad_norm=0.25)
    run(model, source, range(1))
    opt = make(clone_model(model))
    opt.load_state_dict(copy.deepcopy(source.state_dict()))
    assert opt.defaults["max_grad_norm"] == 0.25
    opt.add_param_group({"params": [nn.Parameter(torch.ones(2))]})  # inherits 0.25: accepted
    bad = copy.deepcopy(source.state_dict())
    bad["param_groups"][1]["max_grad_norm"] = 2.0
    with pytest.raises(ValueError, match="different max_grad_norm"):
        make(clone_model(model)).load_state_dict(bad)


BAD = {
    "amsgrad": (dict(amsgrad=True), r"amsgrad"),
    "variant": (dict(variant="lars"), r"variant must be one of"),
    "lr": (dict(lr=-1.0), r"learning rate"),
    "eps": (dict(eps=-1.0), r"epsilon"),
    "beta2": (dict(betas=(0.9, 1.0)), r"beta parameter at index 1"),
    "betas-length": (dict(betas=(0.9,)), r"betas must be a pair"),
    "weight_decay": (dict(weight_decay=-0.1), r"weight_decay"),
    "apex-phi": (dict(phi_min=0.1), r"phi_min/phi_max.*variant='paper'"),
    "paper-l2": (dict(variant="paper", adam_w_mode=False), r"variant='apex'"),
    "paper-nvlamb": (dict(variant="paper", use_nvlamb=True), r"variant='apex'"),
    "paper-phi-order": (dict(variant="paper", phi_min=2.0, phi_max=1.0), r"phi_min/phi_max"),
    "backend": (dict(backend="gpu"), r"backend must be one of"),
}


@pytest.mark.parametrize("kwargs, match", BAD.values(), ids=BAD.keys())
def test_invalid_arguments_raise_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ak.LAMB(make_model().parameters(), **kwargs)


@pytest.mark.parametrize("variant, key", [("apex", "exclude_from_layer_adaptation"), ("paper", "use_nvlamb")])
def test_group_key_of_the_other_variant_rejected(variant, key):
    opt = ak.LAMB([nn.Parameter(torch.ones(2))], variant=variant)
    with pytest.raises(ValueError, match=rf"param_groups\[1\].*{key} is an option of LAMB variant="):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2))], key: True})
    assert len(opt.param_groups) == 1


def test_parameters_on_two_devices_rejected():
    opt = ak.LAMB([nn.Parameter(torch.ones(3))])
    with pytest.raises(ValueError, match="LAMB needs all parameters on one device"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(3, device="meta"))]})
    assert len(opt.param_groups) == 1


def test_compiled_step_matches_eager():
    """torch.compile(step, fullgraph=True): no graph break, and the same bits as eager."""
    eager_model = make_model()
    compiled_model = clone_model(eager_model)
    eager, compiled = make(eager_model), make(compiled_model)
    step = torch.compile(compiled.step, fullgraph=True, backend="aot_eager")
    for k in range(3):
        compute_grads(eager_model, k)
        eager.step()
        compute_grads(compiled_model, k)
        step()
    assert_same_bits(snapshot(compiled_model, compiled), snapshot(eager_model, eager), "compiled step")
