"""Derived tolerances (docs/design.md rule 1) and readable mismatch reports, shared by every test.

Two rules:
- `assert_within_2x_reference(kernel, reference, oracle)`: the kernel's max error against a float64
  oracle is at most 2x the same-dtype reference's error against it, plus a floor of a few ulps of
  the oracle's magnitude (so two exact answers never fail on 0 <= 0).
- `assert_close_ulps(actual, expected, dtype, ulps)`: |actual - expected| <= ulps·eps(dtype)·(1 + |expected|).
"""
from __future__ import annotations

import torch

EPS = {
    torch.float64: 2.0 ** -52,
    torch.float32: 2.0 ** -23,
    torch.bfloat16: 2.0 ** -7,
    torch.float16: 2.0 ** -10,
}

DTYPE_IDS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16", torch.float64: "f64"}


def _report(name: str, actual: torch.Tensor, expected: torch.Tensor, bad: torch.Tensor, bound: str) -> str:
    idx = bad.reshape(-1).nonzero().reshape(-1)[:10]
    a, e = actual.reshape(-1), expected.reshape(-1)
    rows = "\n".join(f"  [{int(i)}] got {a[i].item():.9g} expected {e[i].item():.9g}" for i in idx)
    return f"{name}: {int(bad.sum())} of {bad.numel()} elements outside {bound}\n{rows}"


def assert_close_ulps(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, ulps: float = 4,
                      name: str = "tensor") -> None:
    a, e = actual.double(), expected.double()
    tol = ulps * EPS[dtype] * (1 + e.abs())
    nan_mismatch = a.isnan() != e.isnan()
    bad = ((a - e).abs() > tol) & ~(a.isnan() & e.isnan()) | nan_mismatch
    if a.isinf().any() or e.isinf().any():
        bad |= (a.isinf() | e.isinf()) & (a != e)
    assert not bad.any(), _report(name, a, e, bad, f"{ulps} ulps of {dtype}")


def assert_within_2x_reference(kernel: torch.Tensor, reference: torch.Tensor, oracle: torch.Tensor,
                               floor_ulps: float = 2, name: str = "tensor",
                               floor_dtype: torch.dtype | None = None) -> None:
    """kernel and reference share a dtype; oracle is the same computation in float64. `floor_dtype`: the
    dtype the values were computed in, when they are stored in a wider one (its ulps make the floor)."""
    dtype = floor_dtype or reference.dtype
    o = oracle.double()
    # NaN where the float64 oracle has NaN too is agreement (e.g. a found_inf-free overflow); anywhere
    # else it is an error.
    for t, who in ((kernel, "kernel"), (reference, "reference")):
        stray = t.double().isnan() & ~o.isnan()
        assert not stray.any(), f"{name}: {who} has NaN where the float64 oracle has none ({int(stray.sum())} elements)"
    both = o.isnan()
    err_k = (kernel.double() - o).abs().masked_fill(both, 0)
    err_r = (reference.double() - o).abs().masked_fill(both, 0)
    o = o.masked_fill(both, 0)
    floor = floor_ulps * EPS[dtype] * max(o.abs().max().item(), 1e-30) if o.numel() else 0.0
    bound = 2 * err_r.max().item() + floor if o.numel() else 0.0
    worst = err_k.max().item() if o.numel() else 0.0
    assert worst <= bound, (
        f"{name}: max error {worst:.3g} vs float64 exceeds 2x the {dtype} reference's "
        f"{err_r.max().item():.3g} + floor {floor:.3g}\n" + _report(name, kernel.double(), o, err_k > bound, "bound"))
