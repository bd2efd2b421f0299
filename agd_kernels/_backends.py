"""The one place that decides which backend runs an op: auto | cuda | triton | cpu | torch.

- `auto` takes, per (device type, dtype), the first available of: cuda, triton (CUDA tensors only),
  cpu (CPU tensors only), torch (the reference, always available). Falling back because a
  compiled part is missing or failed to load warns once, with the reason.
- A backend named explicitly (argument or AGD_KERNELS_BACKEND) that cannot run raises a clear error.
- AGD_KERNELS_BACKEND, when set, overrides the backend argument (e.g. force the reference everywhere
  while debugging).

Kernels register themselves per (op, backend) with `register_kernel`; optimizers never branch on
the backend.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Callable

import torch

from . import _ext

BACKENDS = ("auto", "cuda", "triton", "cpu", "torch")
ENV_VAR = "AGD_KERNELS_BACKEND"

# Parameter dtypes each backend's kernels accept; math is fp32 for the 16-bit types.
_DTYPES = {
    "cuda": (torch.float32, torch.bfloat16, torch.float16),
    "triton": (torch.float32, torch.bfloat16, torch.float16),
    "cpu": (torch.float32, torch.bfloat16, torch.float16, torch.float64),
    "torch": (torch.float32, torch.bfloat16, torch.float16, torch.float64),
}

_KERNELS: dict[tuple[str, str], Callable] = {}
#: Ops with a kernel from agd_kernels._C per dispatch key ("CPU", "CUDA"), recorded by agd_kernels.ops
#: right after loading the extension: the CUDA key also gets a Python kernel (the auto choice, so that
#: torch.ops.agd_kernels.* takes the optimizers' path), which must not count as a compiled one.
COMPILED_OPS: dict[str, set[str]] = {"CPU": set(), "CUDA": set()}
_RESOLVED: dict[tuple, str] = {}
_WARNED: set[str] = set()


def register_kernel(op: str, backend: str, fn: Callable) -> None:
    """Make `fn` the implementation of op `op` (e.g. "adam_step_") for `backend`."""
    if backend not in BACKENDS[1:]:
        raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")
    _KERNELS[(op, backend)] = fn
    _RESOLVED.clear()


def validate(backend: str, name: str = "backend") -> str:
    """Check a backend name; returns it. The error names the parameter and the accepted values."""
    if backend not in BACKENDS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    return backend


def requested(backend: str | None) -> str:
    """The backend to use given the caller's argument; AGD_KERNELS_BACKEND overrides it when set."""
    env = os.environ.get(ENV_VAR)
    if env:
        return validate(env.strip().lower(), ENV_VAR)
    return validate(backend or "auto")


def _triton_reason(device: torch.device) -> str | None:
    """None when Triton can run on `device`, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return "Triton runs on CPU tensors only under TRITON_INTERPRET=1"
    if device.type not in ("cpu", "cuda"):
        return f"Triton does not run on {device.type} tensors"
    return None


def unavailable_reason(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None when `backend` can run `op` on (device, dtype); otherwise a sentence saying why not."""
    if dtype not in _DTYPES[backend]:
        return f"the {backend} backend has no kernel for {dtype}"
    if backend == "torch":
        return None
    if backend in ("cpu", "cuda"):
        if device.type != backend:
            return f"the {backend} backend runs on {backend} tensors, these are on {device}"
        if not _ext.LOADED:
            return f"the compiled extension is unavailable: {_ext.LOAD_ERROR}"
        if backend == "cuda" and not _ext.has_cuda_part():
            return "agd_kernels._C was built without its CUDA part (" \
                   f"{_ext.BUILD_INFO.get('cuda_reason', 'see python -m agd_kernels.info')})"
        key = "CPU" if backend == "cpu" else "CUDA"
        if op not in COMPILED_OPS[key]:
            return f"agd_kernels._C has no {key} kernel for {op}"
        return None
    # triton: its kernels register on import of agd_kernels.triton_kernels
    reason = _triton_reason(device)
    if reason is None and (op, "triton") not in _KERNELS:
        try:
            import agd_kernels.triton_kernels  # noqa: F401  (registers its kernels)
        except Exception as exc:  # any import failure of an optional backend is a reason, not a crash
            return f"agd_kernels.triton_kernels failed to import: {exc}"
        if (op, "triton") not in _KERNELS:
            return f"no Triton kernel for {op}"
    return reason


def _auto_order(device: torch.device) -> tuple[str, ...]:
    if device.type == "cuda":
        return ("cuda", "triton", "torch")
    if device.type == "cpu":
        return ("cpu", "torch")
    return ("torch",)


def resolve(op: str, device: torch.device, dtype: torch.dtype, backend: str | None = "auto") -> tuple[str, Callable]:
    """(backend name, kernel) that runs `op` on tensors of (device, dtype)."""
    chosen = _choose(op, device, dtype, requested(backend))
    return chosen, _KERNELS[(op, chosen)]


# The choice is a constant of the process, so torch.compile runs it while tracing instead of tracing
# into it: dispatcher queries and warnings.warn cannot be traced, and fullgraph=True failed on the
# first call of an op (a cold cache) before this.
@torch.compiler.assume_constant_result
def _choose(op: str, device: torch.device, dtype: torch.dtype, want: str) -> str:
    """The backend name for `op` on (device, dtype) given the requested one; cached per key."""
    key = (op, device.type, dtype, want)
    chosen = _RESOLVED.get(key)
    if chosen is not None:
        return chosen
    if want != "auto":
        reason = unavailable_reason(op, want, device, dtype)
        if reason is not None:
            raise RuntimeError(f"agd_kernels: backend={want!r} cannot run {op} on {device.type}/{dtype}: {reason}")
        chosen = want
    else:
        skipped = []
        for chosen in _auto_order(device):
            reason = unavailable_reason(op, chosen, device, dtype)
            if reason is None:
                break
            skipped.append(f"{chosen}: {reason}")
        # The reference is a silent, expected choice only where no compiled backend applies at all.
        if skipped and chosen == "torch":
            message = (f"agd_kernels: using the pure-PyTorch reference for {op} on {device.type}/{dtype} "
                       f"({'; '.join(skipped)})")
            if message not in _WARNED:
                _WARNED.add(message)
                warnings.warn(message, RuntimeWarning, stacklevel=4)  # points at the agd_kernels.ops call
    _RESOLVED[key] = chosen
    return chosen


def available(device_type: str = "cpu") -> dict[str, str | None]:
    """{backend: None if usable for a representative op on fp32 tensors of `device_type`, else why not}."""
    device = torch.device(device_type)
    return {b: unavailable_reason("adam_step_", b, device, torch.float32) for b in BACKENDS[1:]}
