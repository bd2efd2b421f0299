"""`telemetry=True` on the optimizers (docs/telemetry.md): every statistic against a direct torch
computation on the same step, for each optimizer whose update ops accumulate the sums, on each backend that
runs on CPU tensors; telemetry on vs off gives the same parameter bits; names, skipped parameters, AMP
unscaling, master weights and the equilibrium prediction; the errors. The sharded case (FSDP2 on two ranks
equal to one process) is tests/distributed/test_fsdp.py's."""
from __future__ import annotations

import math

import pytest
import torch

from agd_kernels import _backends
from agd_kernels.optim._base import MASTER
from agd_kernels.reference.agd import target_scale
from agd_kernels.reference.yellowfin import SLOT
from agd_kernels.telemetry import equilibrium_angular_update
from tests.models import compute_grads, make_model, train, two_groups
from tests.optim.registry import REGISTRY

#: The optimizers whose update ops take a telemetry buffer (agd_kernels/ops.py, "Telemetry"): all of them.
NAMES = ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "AGD", "LAMB", "YellowFin")
BACKENDS = [b for b in ("torch", "cpu", "triton") if _backends.available("cpu")[b] is None]
STATS = ("weight_norm", "grad_norm", "update_norm", "update_ratio", "grad_cosine", "angular_update")


def _make(name: str, model, backend: str, named: bool = False, **kw):
    entry = REGISTRY[name]
    return entry.make(two_groups(model, entry.second_group, named), backend=backend, **kw)


def direct_stats(before: dict, grads: dict, after: dict, grad_scale: float = 1.0) -> dict[str, list[float]]:
    """The statistics of one step computed from the tensors in float64, per parameter in order."""
    out = {s: [] for s in STATS}
    for name in before:
        w, g, w_new = before[name].double(), grads[name].double() / grad_scale, after[name].double()
        d = w_new - w
        wn, gn, dn = w.norm().item(), g.norm().item(), d.norm().item()
        out["weight_norm"].append(wn)
        out["grad_norm"].append(gn)
        out["update_norm"].append(dn)
        out["update_ratio"].append(dn / wn)
        out["grad_cosine"].append((w * g).sum().item() / (wn * gn))
        cos = ((w * w_new).sum() / (w.norm() * w_new.norm())).clamp(-1, 1)
        # the angle from sin and cos in float64: arccos alone loses precision near 0
        sin = (1 - cos * cos).clamp_min(0).sqrt()
        out["angular_update"].append(math.atan2(sin.item(), cos.item()))
    return out


def _assert_stats(telemetry, expected: dict[str, list[float]], what: str, rtol: float = 1e-4) -> None:
    for stat, values in expected.items():
        got = telemetry.layers[stat].double().cpu()
        want = torch.tensor(values, dtype=torch.float64)
        # angular updates of ~1e-3 rad: cos is 1 - 5e-7, so the float64 reference's own error is ~1e-12 rad
        assert torch.allclose(got, want, rtol=rtol, atol=1e-7), (
            f"{what}: {stat} = {got.tolist()}, direct torch computation {want.tolist()}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_each_statistic_matches_a_direct_computation(name, backend):
    model = make_model()
    opt = _make(name, model, backend, telemetry=True)
    train(model, opt, range(2))  # state is past its first step
    compute_grads(model, 2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    telemetry = opt.telemetry()
    assert telemetry.names == list(range(len(before)))
    _assert_stats(telemetry, direct_stats(before, grads, after), f"{name} (backend={backend})")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_telemetry_on_and_off_give_the_same_parameters(name, backend):
    runs = []
    for on in (False, True):
        model = make_model(torch.bfloat16)
        train(model, _make(name, model, backend, telemetry=on, master_weights=True), range(4))
        runs.append([p.detach().clone() for p in model.parameters()])
    for off, on in zip(*runs):
        assert torch.equal(off, on), f"{name} (backend={backend}): telemetry changed the parameters"


def test_named_parameters_key_the_layers_and_skipped_ones_are_nan():
    model = make_model()
    opt = _make("AdamW", model, "cpu", named=True, telemetry=True)
    compute_grads(model, 0)
    model.fc2.bias.grad = None
    norm_before = model.fc1.weight.detach().double().norm()
    opt.step()
    telemetry = opt.telemetry()
    names = [n for n, _ in model.named_parameters() if n.startswith("conv.")]
    names += [n for n, _ in model.named_parameters() if not n.startswith("conv.")]
    assert telemetry.names == names
    skipped = telemetry["fc2.bias"]
    assert all(skipped[s].isnan() for s in STATS), f"a parameter without a gradient must read NaN: {skipped}"
    assert torch.isclose(telemetry["fc1.weight"]["weight_norm"], norm_before, rtol=1e-5)
    with pytest.raises(KeyError, match="no layer 'nope'"):
        telemetry["nope"]


def test_grad_norm_is_the_loss_gradient_under_amp():
    """GradScaler's scale is divided out and maximize does not flip the gradient."""
    model = make_model()
    opt = _make("SGD", model, "cpu", telemetry=True, maximize=True)
    compute_grads(model, 0, scale=64.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.grad_scale = torch.tensor(64.0)  # what GradScaler hands a fused optimizer
    opt.step()
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    _assert_stats(opt.telemetry(), direct_stats(before, grads, after, grad_scale=64.0), "SGD under AMP")


def test_master_weights_report_the_fp32_masters():
    model = make_model(torch.bfloat16)
    opt = _make("Adam", model, "cpu", telemetry=True, master_weights=True)
    train(model, opt, range(1))
    masters = [opt.state[p][MASTER] for p in model.parameters()]
    before = {str(i): m.clone() for i, m in enumerate(masters)}
    compute_grads(model, 1)
    grads = {str(i): p.grad.float() for i, p in enumerate(model.parameters())}
    opt.step()
    after = {str(i): m.clone() for i, m in enumerate(masters)}
    _assert_stats(opt.telemetry(), direct_stats(before, grads, after), "Adam with bf16 master weights")


@pytest.mark.parametrize("name, momentum, decoupled", [("SGD", 0.9, False), ("AdamW", 0.9, True)])
def test_equilibrium_prediction_per_group(name, momentum, decoupled):
    """SGD's first group has weight decay 0 (no prediction: NaN), its second 0.01; AdamW's both decay."""
    model = make_model()
    opt = _make(name, model, "cpu", telemetry=True)
    train(model, opt, range(1))
    telemetry = opt.telemetry()
    for gi, group in enumerate(opt.param_groups):
        rows = range(0, 2) if gi == 0 else range(2, len(telemetry.names))
        want = (equilibrium_angular_update(group["lr"], group["weight_decay"], momentum, decoupled)
                if group["weight_decay"] else math.nan)
        for i in rows:
            got = telemetry.layers["equilibrium_angular_update"][i].item()
            assert got == pytest.approx(want, nan_ok=True), f"{name} group {gi} layer {i}"
            ratio = telemetry.layers["angular_update_vs_equilibrium"][i].item()
            assert ratio == pytest.approx(telemetry.layers["angular_update"][i].item() / want, nan_ok=True)


def test_no_equilibrium_statistics_where_none_applies():
    model = make_model()
    opt = _make("RMSprop", model, "cpu", telemetry=True)
    train(model, opt, range(1))
    assert "equilibrium_angular_update" not in opt.telemetry().layers


def test_errors():
    model = make_model()
    with pytest.raises(ValueError, match="telemetry must be True or False; got 'yes'"):
        _make("Adam", model, "cpu", telemetry="yes")
    opt = _make("Adam", model, "cpu", telemetry=True)
    with pytest.raises(RuntimeError, match=r"telemetry\(\): no step has run yet"):
        opt.telemetry()
    with pytest.raises(RuntimeError, match="needs the optimizer built with telemetry=True"):
        _make("Adam", model, "cpu").telemetry()


@pytest.mark.parametrize("backend", BACKENDS)
def test_agd_eta_and_g_match_a_direct_computation(backend):
    """G = (1/depth)·Σ over weights and kernel taps of sv·‖g_tap‖ (docs/agd.md §5), eta = log((1 + √(1 + 4G))/2)."""
    model = make_model()
    opt = _make("AGD", model, backend, telemetry=True)
    compute_grads(model, 0)
    weights = [p for p in model.parameters() if p.dim() >= 2]
    G = sum(target_scale(w.shape) * w.grad.double().reshape(*w.shape[:2], -1).norm(dim=(0, 1)).sum().item()
            for w in weights) / len(weights)
    eta = opt.step()
    scalars = opt.telemetry().scalars
    assert set(scalars) == {"eta", "G"}
    assert scalars["G"].item() == pytest.approx(G, rel=1e-5)
    assert scalars["eta"].item() == pytest.approx(math.log((1 + math.sqrt(1 + 4 * G)) / 2), rel=1e-5)
    assert torch.equal(scalars["eta"], eta)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lamb_trust_ratio_per_layer_matches_a_direct_computation(backend):
    """First step from zero moments: m̂ = g_c and v̂ = g_c² (bias-corrected), so u = g_c/(|g_c| + eps) +
    wd·w with g_c the clipped gradient, and the trust ratio is ‖w‖/‖u‖ where the group adapts (apex: weight
    decay on, the first group) and 1 where it does not (the second group has weight_decay 0)."""
    model = make_model()
    opt = _make("LAMB", model, backend, telemetry=True)
    compute_grads(model, 0)
    params = list(model.parameters())
    grads = [p.grad.double() for p in params]
    clip = max(1.0, torch.cat([g.reshape(-1) for g in grads]).norm().item() / 1.0)  # max_grad_norm = 1
    want = []
    for gi, group in enumerate(opt.param_groups):
        for p in group["params"]:
            if group["weight_decay"] == 0:
                want.append(1.0)
                continue
            g, w = p.grad.double() / clip, p.detach().double()
            u = g / (g.abs() + group["eps"]) + group["weight_decay"] * w
            want.append((w.norm() / u.norm()).item())
    opt.step()
    got = opt.telemetry().layers["trust_ratio"].double().cpu()
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-5), (got.tolist(), want)
    assert (got[:2] != 1).all() and (got[2:] == 1).all()  # both branches ran


def test_lamb_trust_ratio_is_nan_without_a_gradient_or_on_a_skipped_step():
    model = make_model()
    opt = _make("LAMB", model, "torch", named=True, telemetry=True)
    compute_grads(model, 0)
    model.conv.bias.grad = None
    opt.step()
    telemetry = opt.telemetry()
    assert telemetry["conv.bias"]["trust_ratio"].isnan()
    assert telemetry["conv.weight"]["trust_ratio"].isfinite()
    opt.found_inf = torch.tensor(1.0)  # what GradScaler hands a fused optimizer on an overflow
    opt.step()
    assert opt.telemetry().layers["trust_ratio"].isnan().all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_yellowfin_scalars_are_the_tuner_values_the_step_applied(backend):
    model = make_model()
    opt = _make("YellowFin", model, backend, telemetry=True)
    train(model, opt, range(3))  # tuning runs from step 1
    compute_grads(model, 3)
    lr, mu = opt.step()
    scalars = opt.telemetry().scalars
    assert torch.equal(scalars["lr"], lr) and torch.equal(scalars["momentum"], mu)
    for stat, slot in (("h_min", "h_min"), ("h_max", "h_max"), ("C", "grad_var"), ("D", "dist_to_opt")):
        assert torch.equal(scalars[stat], opt.tuner[SLOT[slot]]), stat
    assert 0 < scalars["h_min"] <= scalars["h_max"] and scalars["C"] > 0 and scalars["D"] > 0
