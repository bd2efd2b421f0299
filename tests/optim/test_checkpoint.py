"""Checkpoints are interchangeable with torch.optim (docs/design.md rule 7).

- ours -> torch.optim -> ours, then continuing, is bit-identical to never having stopped;
- torch.optim's checkpoint continued by ours follows torch continuing (the parity rule);
- state_dict() has torch's layout: group keys, state keys, shapes, dtypes, `step` a 0-d fp32 tensor;
- every registered optimizer resumes bit-identically from torch.save / torch.load(map_location=...).
"""
from __future__ import annotations

import copy
import io

import pytest
import torch

from tests.models import assert_same_bits, clone_model, make_model, snapshot, train, two_groups
from tests.optim.registry import entries
from tests.optim.test_torch_parity import CASES, STEPS, assert_parity, cpu_backends, make_runs, run_lockstep

pytestmark = pytest.mark.usefixtures("one_thread")

HALF = STEPS // 2
# One case per algorithm with the most state (amsgrad, momentum + dampening, centered + momentum, ...),
# and a tensor lr, which checkpoints carry in param_groups.
_RICH = ("adam-amsgrad-wd", "adamw-amsgrad-maximize", "sgd-momentum-dampening-wd", "rmsprop-centered-momentum",
         "adagrad-decay-init-eps-wd", "adam-tensor-lr")
_CASES = [pytest.param(case, backend, id=f"{case.id}-{backend}")
          for case in CASES if case.id in _RICH for backend in cpu_backends(case.op)]


def save_load(state_dict: dict, map_location="cpu") -> dict:
    """A state dict after torch.save and torch.load (weights_only, torch's default)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location=map_location)


@pytest.mark.parametrize("case, backend", _CASES)
def test_round_trip_through_torch_is_bitwise(case, backend):
    base = make_model(edge_cases=True)
    whole_model, half_model = clone_model(base), clone_model(base)
    whole = case.ours(two_groups(whole_model, case.second), **case.hparams(), backend=backend)
    train(whole_model, whole, range(STEPS))

    first = case.ours(two_groups(half_model, case.second), **case.hparams(), backend=backend)
    train(half_model, first, range(HALF))
    theirs = case.theirs(two_groups(half_model, case.second), **case.hparams())
    theirs.load_state_dict(save_load(first.state_dict()))
    second = case.ours(two_groups(half_model, case.second), **case.hparams(), backend=backend)
    second.load_state_dict(save_load(theirs.state_dict()))
    train(half_model, second, range(HALF, STEPS))
    assert_same_bits(snapshot(half_model, second), snapshot(whole_model, whole),
                     f"{case.id}: ours -> torch -> ours at step {HALF}")


@pytest.mark.parametrize("case, backend", _CASES)
def test_torch_checkpoint_continued_by_ours_follows_torch(case, backend):
    runs = make_runs(case, torch.float32, backend)
    run_lockstep({who: runs[who] for who in ("torch", "oracle")}, range(HALF))
    ours_model, ours = runs["ours"]
    torch_model, theirs = runs["torch"]
    ours_model.load_state_dict(torch_model.state_dict())
    ours.load_state_dict(save_load(theirs.state_dict()))
    run_lockstep(runs, range(HALF, STEPS))
    assert_parity(runs, f"{case.id}: torch for {HALF} steps, then ours for {STEPS - HALF}")


#: Group keys of agd_kernels only (docs/design.md rule 7), at their defaults: torch.optim keeps them
#: when it loads our checkpoint and ignores them.
OUR_GROUP_KEYS = {"master_weights": False, "stochastic_rounding": False}


def _torch_groups(state_dict: dict) -> dict:
    """`state_dict` with our own group keys checked to be at their defaults and left out."""
    groups = []
    for g in state_dict["param_groups"]:
        assert all(g.get(k, v) == v for k, v in OUR_GROUP_KEYS.items()), g
        groups.append({k: v for k, v in g.items() if k not in OUR_GROUP_KEYS})
    return {**state_dict, "param_groups": groups}


def _layout(state_dict: dict) -> dict:
    """What must match torch: group keys and non-tensor values (but OUR_GROUP_KEYS), per-parameter state
    keys, shapes, dtypes and devices (values are compared by the parity tests)."""
    groups = [{k: (v if not isinstance(v, torch.Tensor) else ("tensor", v.shape, v.dtype)) for k, v in g.items()}
              for g in _torch_groups(state_dict)["param_groups"]]
    state = {pid: {k: (tuple(v.shape), v.dtype, v.device) for k, v in s.items()}
             for pid, s in state_dict["state"].items()}
    return {"param_groups": groups, "state": state}


@pytest.mark.parametrize("case", [c for c in CASES if c.id in _RICH], ids=lambda c: c.id)
def test_state_dict_layout_matches_torch(case):
    runs = make_runs(case, torch.float32, "auto")
    if case.theirs is torch.optim.Adagrad:  # state exists before the first step, in both
        assert _layout(runs["ours"][1].state_dict()) == _layout(runs["torch"][1].state_dict())
    run_lockstep(runs, range(3))
    ours, theirs = runs["ours"][1].state_dict(), runs["torch"][1].state_dict()
    assert _layout(ours) == _layout(theirs)
    for pid, state in ours["state"].items():
        if "step" in state:
            step = state["step"]
            assert step.dtype == torch.float32 and step.dim() == 0, f"param {pid}: step {step!r}"


@pytest.mark.parametrize("case", [c for c in CASES if c.id in _RICH and c.theirs is not torch.optim.SGD],
                         ids=lambda c: c.id)
def test_old_step_formats_load_as_0d_fp32(case):
    """Checkpoints with `step` as a Python float (torch < 1.12) or a 1-element 1-D tensor
    (pytorch/pytorch #108860) load as 0-d fp32 tensors, and the run continues the same."""
    runs = make_runs(case, torch.float32, "auto")
    model, opt = runs["ours"]
    train(model, opt, range(3))
    state_dict = copy.deepcopy(opt.state_dict())
    for i, state in enumerate(state_dict["state"].values()):
        state["step"] = 3.0 if i % 2 else torch.tensor([3.0])
    twin_model = clone_model(model)
    twin = case.ours(two_groups(twin_model, case.second), **case.hparams())
    twin.load_state_dict(state_dict)
    for state in twin.state.values():
        assert state["step"].dtype == torch.float32 and state["step"].dim() == 0 and state["step"].item() == 3.0
    train(model, opt, range(3, 5))
    train(twin_model, twin, range(3, 5))
    assert_same_bits(snapshot(twin_model, twin), snapshot(model, opt), f"{case.id} after an old-format load")


@pytest.mark.parametrize("map_location", ["cpu", torch.device("cpu"), {"cpu": "cpu"}],
                         ids=["str", "device", "dict"])
@pytest.mark.parametrize("entry", entries())
def test_resume_from_saved_checkpoint_is_bitwise(entry, map_location):
    base = make_model(edge_cases=True)
    whole_model, half_model = clone_model(base), clone_model(base)
    whole = entry.make(two_groups(whole_model, entry.second_group))
    train(whole_model, whole, range(6))
    first = entry.make(two_groups(half_model, entry.second_group))
    train(half_model, first, range(3))
    saved = save_load({"model": half_model.state_dict(), "optimizer": first.state_dict()}, map_location)

    resumed_model = make_model(seed=1, edge_cases=True)  # different weights until the checkpoint is loaded
    resumed_model.load_state_dict(saved["model"])
    resumed = entry.make(two_groups(resumed_model, entry.second_group))
    resumed.load_state_dict(saved["optimizer"])
    for state in resumed.state.values():
        if "step" in state:
            assert state["step"].dtype == torch.float32 and state["step"].dim() == 0
    train(resumed_model, resumed, range(3, 6))
    assert_same_bits(snapshot(resumed_model, resumed), snapshot(whole_model, whole), f"{entry.name} resumed")


@pytest.mark.parametrize("backend", cpu_backends("sgd_step_"))
def test_sgd_without_momentum_writes_torchs_state_dict(backend):
    """torch.optim.SGD keeps no state without momentum: state_dict() has an empty 'state', not one
    empty entry per parameter; switching momentum on later creates the buffers, as in torch."""
    runs = make_runs(CASES[[c.id for c in CASES].index("sgd")], torch.float32, backend)
    run_lockstep(runs, range(3))
    ours, theirs = runs["ours"][1], runs["torch"][1]
    assert _torch_groups(ours.state_dict()) == theirs.state_dict() and not ours.state_dict()["state"]
    for _, opt in runs.values():
        opt.param_groups[0]["momentum"] = 0.9
    run_lockstep(runs, range(3, 5))
    assert _layout(ours.state_dict()) == _layout(theirs.state_dict())
    assert_parity(runs, "SGD with momentum switched on at step 3")
