"""Bad input gets a clear error naming what is wrong, and leaves parameters and state bit-identical.

Each test steps the optimizer once first, so there is state to corrupt, then feeds it one kind of bad
input and compares a snapshot of every parameter and state tensor before and after. Parametrized
over tests/optim/registry.py.
"""
from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import agd_kernels as ak
from tests.models import assert_same_bits, compute_grads, make_model, snapshot, two_groups
from tests.optim.registry import REGISTRY, entries

pytestmark = pytest.mark.usefixtures("one_thread")


def _stepped(entry, steps: int = 1):
    """(model, optimizer) after `steps` steps, on named parameters so errors can name them."""
    model = make_model(edge_cases=True)
    opt = entry.make(two_groups(model, entry.second_group, named=True))
    for k in range(steps):
        compute_grads(model, k)
        opt.step()
    compute_grads(model, steps)
    return model, opt


@pytest.mark.parametrize("entry", entries())
def test_sparse_gradient_rejected(entry):
    model, opt = _stepped(entry)
    model.fc1.weight.grad = model.fc1.weight.grad.to_sparse()
    before = snapshot(model, opt)
    with pytest.raises(RuntimeError, match=r"sparse.*'fc1\.weight'"):
        opt.step()
    assert_same_bits(snapshot(model, opt), before, "after a rejected sparse gradient")


@pytest.mark.parametrize("entry", entries())
def test_gradient_of_wrong_dtype_rejected(entry):
    model, opt = _stepped(entry)
    model.fc2.bias.grad_dtype = None  # torch refuses a float64 .grad on a float32 tensor otherwise
    model.fc2.bias.grad = model.fc2.bias.grad.double()
    before = snapshot(model, opt)
    with pytest.raises(RuntimeError, match=r"'fc2\.bias'.*gradient of torch\.float64"):
        opt.step()
    assert_same_bits(snapshot(model, opt), before, "after a rejected float64 gradient")


def _meta_and_cpu() -> list[tuple[str, nn.Parameter]]:
    # Rank-2 tensors, so optimizers that only take weights (AGD) reach the device check.
    return [("extra.cpu", nn.Parameter(torch.ones(4, 3))),
            ("extra.meta", nn.Parameter(torch.ones(5, 4, device="meta")))]


@pytest.mark.parametrize("entry", entries())
def test_mixed_devices_in_one_group_rejected(entry):
    with pytest.raises(ValueError, match=r"param_groups\[0\] mixes devices.*cpu.*meta|one device"):
        entry.make(_meta_and_cpu())
    model, opt = _stepped(entry)
    groups = len(opt.param_groups)
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=r"mixes devices|one device"):
        opt.add_param_group({"params": _meta_and_cpu()})
    assert len(opt.param_groups) == groups, "the rejected group was kept"
    assert_same_bits(snapshot(model, opt), before, "after a rejected mixed-device group")
    opt.step()  # still usable


def _param_group_ids(state_dict, group: int) -> list[int]:
    return state_dict["param_groups"][group]["params"]


@pytest.mark.parametrize("entry", entries(has_param_state=True))
def test_load_state_with_wrong_tensor_shape_rejected(entry):
    source_model, source = _stepped(entry)
    bad = copy.deepcopy(source.state_dict())
    pid = _param_group_ids(bad, 1)[0]  # fc1.weight, shape (7, 27)
    key = next(k for k, v in bad["state"][pid].items()
               if isinstance(v, torch.Tensor) and v.shape == source_model.fc1.weight.shape)
    bad["state"][pid][key] = bad["state"][pid][key][:, :-1].clone()
    model, opt = _stepped(entry, steps=2)
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=rf"state '{re.escape(key)}' of parameter 'fc1\.weight'.*shape \(7, 26\)"):
        opt.load_state_dict(bad)
    assert_same_bits(snapshot(model, opt), before, "after a rejected checkpoint")


@pytest.mark.parametrize("entry", entries())
def test_load_state_with_wrong_param_count_rejected(entry):
    _, source = _stepped(entry)
    fewer_params = copy.deepcopy(source.state_dict())
    _param_group_ids(fewer_params, 1).pop()
    fewer_groups = copy.deepcopy(source.state_dict())
    fewer_groups["param_groups"].pop()
    model, opt = _stepped(entry, steps=2)
    before = snapshot(model, opt)
    groups_before = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    count = len(opt.param_groups[1]["params"])
    with pytest.raises(ValueError, match=rf"param_groups\[1\] has {count - 1} parameters.*has {count}"):
        opt.load_state_dict(fewer_params)
    with pytest.raises(ValueError, match=r"1 parameter groups.*has 2"):
        opt.load_state_dict(fewer_groups)
    assert_same_bits(snapshot(model, opt), before, "after rejected checkpoints")
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups_before


_BAD_CASES = [pytest.param(entry, bad, id=f"{entry.name}-{case}")
              for entry in REGISTRY.values() for case, bad in entry.bad_hparams.items()]


@pytest.mark.parametrize("entry, bad", _BAD_CASES)
def test_invalid_hyperparameter_rejected(entry, bad):
    model = make_model(edge_cases=True)
    before = snapshot(model)
    with pytest.raises(ValueError, match=bad.match):
        entry.make(two_groups(model, entry.second_group), **bad.kwargs)
    assert_same_bits(snapshot(model), before, "after a rejected constructor")


@pytest.mark.parametrize("entry, bad", [c for c in _BAD_CASES if c.values[1].per_group])
def test_invalid_hyperparameter_in_added_group_rejected(entry, bad):
    model, opt = _stepped(entry)
    groups = len(opt.param_groups)
    before = snapshot(model, opt)
    extra = nn.Parameter(torch.ones(3, 2))
    where = rf"param_groups\[{groups}\]"
    with pytest.raises(ValueError, match=rf"{where}.*{bad.match}|{bad.match}.*{where}"):
        opt.add_param_group({"params": [("extra.weight", extra)], **bad.kwargs})
    assert len(opt.param_groups) == groups, "the rejected group was kept"
    assert all(extra is not p for g in opt.param_groups for p in g["params"])
    assert_same_bits(snapshot(model, opt), before, "after a rejected param group")


def _error_of(make) -> tuple[type, str] | None:
    """(type, message) of what make() raises, or None when it returns."""
    try:
        make()
    except Exception as exc:  # noqa: BLE001 - the exception itself is what is compared
        return type(exc), str(exc)
    return None


# torch.optim is the oracle: for each of these arguments ours must raise what torch raises.
_TORCH_REJECTS = {
    "betas-tensor-float": (("Adam", "AdamW"), dict(betas=(torch.tensor(0.9), 0.999))),
    "betas-float-tensor": (("Adam", "AdamW"), dict(betas=(0.9, torch.tensor(0.999)))),
    "fused-foreach": (("Adam", "AdamW", "SGD", "Adagrad"), dict(fused=True, foreach=True)),
    "fused-differentiable": (("Adam", "AdamW", "SGD", "Adagrad"), dict(fused=True, differentiable=True)),
    "fused-foreach-differentiable": (("Adam", "AdamW", "SGD", "Adagrad"),
                                     dict(fused=True, foreach=True, differentiable=True)),
}


@pytest.mark.parametrize("name, kwargs", [pytest.param(name, kwargs, id=f"{name}-{case}")
                                          for case, (names, kwargs) in _TORCH_REJECTS.items() for name in names])
def test_rejected_like_torch(name, kwargs):
    params = [nn.Parameter(torch.ones(3))]
    lr = {"lr": 0.1}
    expected = _error_of(lambda: getattr(torch.optim, name)(params, **lr, **kwargs))
    assert expected is not None, f"torch.optim.{name} accepts {kwargs}: the oracle changed"
    assert _error_of(lambda: getattr(ak, name)(params, **lr, **kwargs)) == expected


def test_mixed_betas_rejected_by_lamb():
    with pytest.raises(ValueError, match="betas must be either both floats or both Tensors"):
        ak.LAMB([nn.Parameter(torch.ones(3))], betas=(torch.tensor(0.9), 0.999))


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_tensor_hyperparameters_with_foreach_accepted(name):
    """torch.optim.Adam(W) refuse a tensor lr or tensor betas with foreach=True unless capturable; ours
    read them on the device (betas once, as floats), so they are accepted, as the docstring says, and
    step as the same floats would."""
    def run(lr, betas):
        p = nn.Parameter(torch.ones(3))
        opt = getattr(ak, name)([p], lr=lr, betas=betas, foreach=True)
        p.grad = torch.full((3,), 0.5)
        opt.step()
        return p.detach()
    tensors = run(torch.tensor(0.125), (torch.tensor(0.75), torch.tensor(0.875)))  # exact in fp32
    assert torch.equal(tensors, run(0.125, (0.75, 0.875)))
