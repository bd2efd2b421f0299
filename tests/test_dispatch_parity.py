"""torch.ops.agd_kernels.<op> takes the path the optimizers take (issue 10, torch.ops parity).

Without a compiled CUDA kernel, an op's CUDA dispatch key used to fall through to the reference
(registered for every key) while the optimizers ran Triton. Now the CUDA key holds a kernel that runs
backend="auto"'s choice, and the "cuda" backend still counts only compiled kernels (else auto would pick
"cuda", call the dispatcher, and come back to itself).
"""
from __future__ import annotations

import pytest
import torch

from agd_kernels import _backends, ops
from tests.op_cases import VARIANTS, _clone_args, _flat, make_args, run, shapes_for


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, so NaNs compare equal to identical NaNs (stochastic_round_'s samples hold some)."""
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


@pytest.mark.parametrize("name", list(ops.SCHEMAS))
def test_cuda_key_has_a_kernel_that_is_not_counted_as_compiled(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"agd_kernels::{name}", "CUDA")
    if name not in _backends.COMPILED_OPS["CUDA"]:
        reason = _backends.unavailable_reason(name, "cuda", torch.device("cuda"), torch.float32)
        assert reason is not None and ("no CUDA kernel" in reason or "without its CUDA part" in reason)


@pytest.mark.parametrize("name", [n for n in ops.SCHEMAS if n != "yellowfin_tune_"])
def test_auto_choice_runs_what_resolve_picks(name, monkeypatch):
    """The CUDA-key kernel asks resolve() for backend 'auto' on the call's device and dtype and runs that
    kernel (exercised on CPU tensors, where auto picks the C++ backend)."""
    asked = []
    real = _backends.resolve

    def spy(op, device, dtype, backend="auto"):
        asked.append((op, device.type, dtype, backend))
        return real(op, device, dtype, backend)

    args = make_args(name, shapes_for(name, [3, 17]), torch.float32, next(iter(VARIANTS[name])))
    monkeypatch.setattr(_backends, "resolve", spy)
    got, want = _clone_args(args), _clone_args(args)
    out = ops._auto_choice(name)(*got)
    expected = run(name, "auto", want)
    assert asked[0] == (name, "cpu", args[0][0].dtype, "auto")  # stochastic_round_'s first list is bf16
    for a, b in zip(_flat(got) + _flat(out), _flat(want) + _flat(expected)):
        assert torch.equal(_bits(a), _bits(b))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", [n for n in ops.SCHEMAS if n != "yellowfin_tune_"])
def test_torch_ops_equals_the_optimizers_path_on_cuda(name, dtype):
    """Same bits from torch.ops.agd_kernels.<op> and from the backend auto picks (Triton without a
    compiled CUDA kernel), which differs from the reference's bits for the reductions and bf16."""
    args = make_args(name, shapes_for(name, [7, 4097, 1000]), dtype, next(iter(VARIANTS[name])), device="cuda")
    via_torch_ops, via_auto = _clone_args(args), _clone_args(args)
    out = getattr(torch.ops.agd_kernels, name)(*via_torch_ops)
    expected = run(name, "auto", via_auto)
    for a, b in zip(_flat(via_torch_ops) + _flat(out), _flat(via_auto) + _flat(expected)):
        assert torch.equal(_bits(a), _bits(b))
