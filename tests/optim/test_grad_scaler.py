"""The GradScaler contract (`_step_supports_amp_scaling`, docs/torch_optim_semantics.md §6).

GradScaler attaches `grad_scale` and `found_inf` tensors to the optimizer instead of unscaling the
gradients itself: with found_inf = 1 the step must change nothing at all, and with grads multiplied
by grad_scale it must equal the unscaled step. Scales here are powers of two, so unscaling is exact
and the scaled and unscaled runs agree to within rounding (2 ulps).
"""
from __future__ import annotations

import pytest
import torch

from tests.models import assert_same_bits, clone_model, compute_grads, loss_of, make_model, snapshot, two_groups
from tests.optim.registry import entries
from tests.tolerance import assert_close_ulps

pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_close_snapshots(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys(), f"{what}: {sorted(actual.keys() ^ expected.keys())}"
    for key, e in expected.items():
        assert_close_ulps(actual[key], e, e.dtype, ulps=2, name=f"{what}: {key}")


@pytest.mark.parametrize("entry", entries())
def test_found_inf_changes_nothing(entry):
    model = make_model(edge_cases=True)
    opt = entry.make(two_groups(model, entry.second_group))
    compute_grads(model, 0)
    opt.step()
    compute_grads(model, 1, scale=64.0)
    before = snapshot(model, opt)
    opt.grad_scale, opt.found_inf = torch.tensor(64.0), torch.tensor(1.0)
    opt.step()
    assert_same_bits(snapshot(model, opt), before, "after a step with found_inf=1")


@pytest.mark.parametrize("entry", entries())
def test_found_inf_on_first_step_leaves_params_and_step_counters(entry):
    model = make_model(edge_cases=True)
    opt = entry.make(two_groups(model, entry.second_group))
    before = snapshot(model)
    compute_grads(model, 0)
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert_same_bits(snapshot(model), before, "params after a skipped first step")
    steps = [s["step"] for s in opt.state.values() if "step" in s]
    assert all(s.item() == 0 for s in steps), f"step counters advanced on a skipped step: {steps}"


@pytest.mark.parametrize("entry", entries())
def test_grad_scale_matches_unscaled(entry):
    plain_model = make_model(edge_cases=True)
    scaled_model = clone_model(plain_model)
    plain = entry.make(two_groups(plain_model, entry.second_group))
    scaled = entry.make(two_groups(scaled_model, entry.second_group))
    scaled.found_inf = torch.tensor(0.0)
    for k in range(3):
        compute_grads(plain_model, k)
        plain.step()
        scale = 2.0 ** (10 + k)  # a different scale each step, as GradScaler's growth produces
        compute_grads(scaled_model, k, scale=scale)
        scaled.grad_scale = torch.tensor(scale)
        scaled.step()
    _assert_close_snapshots(snapshot(scaled_model, scaled), snapshot(plain_model, plain), "grad_scale run")


@pytest.mark.parametrize("entry", entries())
def test_torch_grad_scaler_flow(entry):
    """torch.amp.GradScaler("cpu") end to end: growth every 2 steps, an inf gradient at step 3
    (skipped, scale halved); the same as plain steps that leave out step 3."""
    plain_model = make_model(edge_cases=True)
    amp_model = clone_model(plain_model)
    plain = entry.make(two_groups(plain_model, entry.second_group))
    opt = entry.make(two_groups(amp_model, entry.second_group))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
    scales = []
    for k in range(6):
        if k != 3:
            compute_grads(plain_model, k)
            plain.step()
        amp_model.zero_grad(set_to_none=True)
        scaler.scale(loss_of(amp_model, k)).backward()
        if k == 3:
            amp_model.fc1.weight.grad[0, 0] = float("inf")
        scales.append(scaler.get_scale())
        scaler.step(opt)
        scaler.update()
        assert not hasattr(opt, "found_inf"), "GradScaler should have detached found_inf after step()"
    assert scales == [2.0 ** 10, 2.0 ** 10, 2.0 ** 11, 2.0 ** 11, 2.0 ** 10, 2.0 ** 10], scales
    _assert_close_snapshots(snapshot(amp_model, opt), snapshot(plain_model, plain), "GradScaler run")
