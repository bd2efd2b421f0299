"""Backend selection (agd_kernels/_backends.py; docs/design.md rule 6).

auto takes the first available backend per device type (cuda > triton > torch on CUDA, cpu > torch
on CPU, torch elsewhere) and warns once when it falls back to the reference; a backend named by the
caller or by AGD_KERNELS_BACKEND that cannot run raises. Availability is simulated with a fake op
and a patched `unavailable_reason`, so these tests mean the same on every machine.
"""
from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

import agd_kernels as ak
from agd_kernels import _backends, ops
from tests.models import assert_same_bits, compute_grads, make_model, snapshot

FAKE_OP = "fake_step_"
CUDA, CPU, META = torch.device("cuda"), torch.device("cpu"), torch.device("meta")


@pytest.fixture
def isolated(monkeypatch):
    """Private kernel table and caches, a fake op with a kernel per backend, and a switch for which
    backends are available: returns the set of unavailable backend names (initially empty)."""
    monkeypatch.setattr(_backends, "_KERNELS", dict(_backends._KERNELS))
    monkeypatch.setattr(_backends, "_RESOLVED", {})
    monkeypatch.setattr(_backends, "_WARNED", set())
    monkeypatch.delenv(_backends.ENV_VAR, raising=False)
    for backend in _backends.BACKENDS[1:]:
        _backends.register_kernel(FAKE_OP, backend, lambda *args, _b=backend: _b)
    missing: set[str] = set()
    real = _backends.unavailable_reason

    def reason(op, backend, device, dtype):
        if op != FAKE_OP:
            return real(op, backend, device, dtype)
        if backend in missing:
            return f"simulated: no {backend} kernel"
        if backend in ("cpu", "cuda") and device.type != backend:
            return f"the {backend} backend runs on {backend} tensors"
        return None
    monkeypatch.setattr(_backends, "unavailable_reason", reason)
    return missing


def _resolve(device, backend="auto"):
    _backends._RESOLVED.clear()  # resolve afresh, as a new (device, dtype) or process would
    return _backends.resolve(FAKE_OP, device, torch.float32, backend)[0]


# No id is exactly "cuda": tests/conftest.py would take it for the `cuda` marker and skip the case.
@pytest.mark.parametrize("device, missing, expected", [
    (CUDA, set(), "cuda"), (CUDA, {"cuda"}, "triton"), (CUDA, {"cuda", "triton"}, "torch"),
    (CPU, set(), "cpu"), (CPU, {"cpu"}, "torch"), (META, set(), "torch"),
], ids=["gpu-all", "gpu-no-cuda", "gpu-no-compiled", "cpu-all", "cpu-no-cpu", "meta"])
def test_auto_resolution_order(isolated, device, missing, expected):
    isolated.update(missing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _resolve(device) == expected
    # Falling back to the reference warns; on a device no compiled backend serves it does not.
    fell_back = expected == "torch" and device.type != "meta"
    assert len(caught) == int(fell_back), [str(w.message) for w in caught]


def test_auto_fallback_warns_once_with_the_reason(isolated):
    isolated.add("cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert _resolve(CPU) == "torch"
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert FAKE_OP in message and "simulated: no cpu kernel" in message and "reference" in message


def test_explicit_backend_wins_over_auto(isolated):
    assert _resolve(CUDA, "triton") == "triton"
    assert _resolve(CPU, "torch") == "torch"


def test_explicit_unavailable_backend_raises(isolated):
    isolated.add("triton")
    with pytest.raises(RuntimeError, match=r"backend='triton' cannot run fake_step_ on cuda.*simulated"):
        _resolve(CUDA, "triton")
    with pytest.raises(RuntimeError, match=r"backend='cuda' cannot run fake_step_ on cpu"):
        _resolve(CPU, "cuda")


def test_environment_overrides_argument(isolated, monkeypatch):
    monkeypatch.setenv(_backends.ENV_VAR, " Torch ")
    assert _resolve(CUDA, "cuda") == "torch"
    assert _resolve(CPU) == "torch"
    isolated.add("torch")
    with pytest.raises(RuntimeError, match="backend='torch'"):  # named by the environment: no fallback
        _resolve(CPU)


def test_invalid_environment_value_raises(isolated, monkeypatch):
    monkeypatch.setenv(_backends.ENV_VAR, "gpu")
    with pytest.raises(ValueError, match=rf"{_backends.ENV_VAR} must be one of .*'gpu'"):
        _resolve(CPU)


def test_register_kernel_rejects_unknown_backend(isolated):
    with pytest.raises(ValueError, match="backend must be one of"):
        _backends.register_kernel(FAKE_OP, "auto", lambda: None)


def test_optimizer_with_unavailable_backend_raises_and_changes_nothing(monkeypatch):
    monkeypatch.delenv(_backends.ENV_VAR, raising=False)
    model = make_model()
    opt = ak.Adam(model.parameters(), backend="cuda")
    compute_grads(model, 0)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match=r"backend='cuda' cannot run adam_step_ on cpu/torch.float32"):
        opt.step()
    assert_same_bits(snapshot(model), before, "params after a refused backend")


def test_optimizer_follows_environment(monkeypatch):
    model = make_model()
    opt = ak.SGD(model.parameters(), lr=0.1, backend="cuda")  # would raise on CPU tensors
    compute_grads(model, 0)
    monkeypatch.setenv(_backends.ENV_VAR, "torch")
    opt.step()
    monkeypatch.setenv(_backends.ENV_VAR, "bogus")
    before = snapshot(model)
    with pytest.raises(ValueError, match=_backends.ENV_VAR):
        opt.step()
    assert_same_bits(snapshot(model), before, "params after an invalid AGD_KERNELS_BACKEND")


def test_op_rejects_unknown_backend_name():
    p, g = torch.ones(3), torch.ones(3)
    with pytest.raises(ValueError, match=r"backend must be one of .*'gpu'"):
        ops.sgd_step_([p], [g], [], torch.tensor(0.1), momentum=0.0, dampening=0.0, weight_decay=0.0,
                      nesterov=False, maximize=False, is_first_step=False, backend="gpu")
    assert torch.equal(p, torch.ones(3))


def test_reference_is_always_available():
    assert _backends.available("cpu")["torch"] is None
    assert set(_backends.available("cuda")) == {"cuda", "triton", "cpu", "torch"}


def test_info_lists_every_backend():
    out = subprocess.run([sys.executable, "-m", "agd_kernels.info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for device in ("cpu", "cuda"):
        section = out.stdout.split(f"backends for {device} tensors")[1].splitlines()[1:5]
        assert [line.split()[0] for line in section] == ["cuda", "triton", "cpu", "torch"], out.stdout
    assert "torch   live" in out.stdout and _backends.ENV_VAR in out.stdout
