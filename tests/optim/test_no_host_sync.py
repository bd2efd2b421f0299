"""step() never converts a tensor to a Python value (docs/design.md rule 3).

While step() runs, every Tensor method that copies device data to the host (item, tolist, cpu,
numpy, and the float/int/index/bool conversions) is replaced by a trap. On CPU none of these would
actually stall, but the same Python path runs for CUDA tensors, where each one is a device sync.
The C++ kernels read their scalars in C++, which the trap does not see (and which is fine on CPU).
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from tests.models import compute_grads, make_model, two_groups
from tests.optim.registry import entries

pytestmark = pytest.mark.usefixtures("one_thread")

_HOST_COPIES = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__index__", "__bool__")


@contextlib.contextmanager
def host_copies_trapped(monkeypatch):
    """Within the block, the methods above raise; calls are also recorded, so code that swallows
    exceptions still fails the test."""
    calls: list[str] = []
    with monkeypatch.context() as m:
        for name in _HOST_COPIES:
            def trap(self, *args, _name=name, **kwargs):
                calls.append(_name)
                raise AssertionError(f"host sync inside step(): Tensor.{_name}() called")
            m.setattr(torch.Tensor, name, trap)
        yield calls
    assert not calls, f"step() called {calls}"


def test_trap_catches_host_copies(monkeypatch):
    t = torch.ones(())
    for convert in (lambda x: x.item(), float, int, bool, lambda x: x.tolist(), lambda x: x.cpu()):
        with pytest.raises(AssertionError, match="host sync"):
            with host_copies_trapped(monkeypatch):
                convert(t)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("entry", entries())
def test_step_without_host_sync(entry, backend, monkeypatch):
    model = make_model(edge_cases=True)
    opt = entry.make(two_groups(model, entry.second_group), backend=backend)
    compute_grads(model, 0)
    with host_copies_trapped(monkeypatch):
        opt.step()  # first step: state is created
    # GradScaler's contract: scale and overflow flag arrive as tensors attached to the optimizer.
    opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
    compute_grads(model, 1, scale=1024.0)
    with host_copies_trapped(monkeypatch):
        opt.step()
    opt.found_inf = torch.tensor(1.0)
    with host_copies_trapped(monkeypatch):
        opt.step()
    del opt.grad_scale, opt.found_inf
    for group in opt.param_groups:  # what an LR scheduler does between steps
        if "lr" in group:
            group["lr"] = group["lr"] * 0.5
    with host_copies_trapped(monkeypatch):
        loss = opt.step(lambda: compute_grads(model, 2))
    assert isinstance(loss, torch.Tensor)


@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop", "Adagrad", "AGD", "LAMB", "YellowFin"])
def test_telemetry_steps_and_reads_without_host_sync(name, monkeypatch):
    """telemetry=True adds a buffer per op call to step(), and telemetry() builds the statistics on the
    device: neither copies to the host (the user's TelemetryWriter does, every N steps)."""
    from tests.optim.registry import REGISTRY
    entry = REGISTRY[name]
    model = make_model(edge_cases=True)
    opt = entry.make(two_groups(model, entry.second_group), telemetry=True)
    for k in range(2):
        compute_grads(model, k)
        with host_copies_trapped(monkeypatch):
            opt.step()
            stats = opt.telemetry()
    assert stats.layers["grad_norm"].isfinite().all()
