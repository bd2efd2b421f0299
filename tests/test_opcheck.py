"""torch.library.opcheck on every op of the table (docs/design.md rule 2).

opcheck runs each op for real and under FakeTensor/AOTAutograd, and checks that the schema's (x!)
annotations say exactly which arguments change, that the fake kernel matches the real one, and that
the op works under torch.compile's functionalization. It runs twice per sample:
- through the CPU dispatch of torch.ops.agd_kernels.<op>: the C++ kernel where one is built, else
  the reference (registered as CompositeExplicitAutograd);
- on a test-only copy of each op whose only kernel is the reference function, so the reference is
  checked even where a C++ kernel shadows it on CPU.
Samples come from tests/op_cases.py (`make_args`) with small sizes that divide no block size.
"""
from __future__ import annotations

import pytest
import torch

from agd_kernels import ops
from tests.op_cases import VARIANTS, is_mixed, make_args, op_dtypes, shapes_for
from tests.tolerance import DTYPE_IDS

SIZES = [0, 1, 7, 33]
REFERENCE_NAMESPACE = "agd_kernels_reference_check"


def test_every_op_has_samples():
    missing = sorted(set(ops.SCHEMAS) - set(VARIANTS))
    assert not missing, f"tests/op_cases.py has no sample inputs (VARIANTS / make_args) for {missing}"


def _samples():
    for op, variants in VARIANTS.items():
        for i, variant in enumerate(variants):
            # a mixed-precision variant runs in bf16 (its gradients' dtype; params fp32)
            for dtype in op_dtypes(op, (torch.float32, torch.bfloat16) if i == 0 else (torch.float32,
                                                                                   torch.bfloat16), variant)[:2 if i == 0 else 1]:
                yield pytest.param(op, variant, dtype, id=f"{op}-{variant}-{DTYPE_IDS[dtype]}")


@pytest.fixture(scope="module")
def reference_ops():
    """torch.ops.<REFERENCE_NAMESPACE>: every op of the table with the reference as its only kernel
    and, as fake, the real op's fake (called on the fake tensors it receives)."""
    lib = torch.library.Library(REFERENCE_NAMESPACE, "FRAGMENT")
    for name, (schema, reference) in ops.SCHEMAS.items():
        lib.define(name + schema)
        lib.impl(name, reference, "CompositeExplicitAutograd")
        real = getattr(torch.ops.agd_kernels, name).default
        torch.library.register_fake(f"{REFERENCE_NAMESPACE}::{name}", lambda *args, real=real: real(*args), lib=lib)
    yield getattr(torch.ops, REFERENCE_NAMESPACE)
    lib._destroy()


@pytest.mark.parametrize("op, variant, dtype", list(_samples()))
def test_opcheck_cpu_dispatch(op, variant, dtype):
    args = make_args(op, shapes_for(op, SIZES), dtype, variant)
    torch.library.opcheck(getattr(torch.ops.agd_kernels, op).default, args)


@pytest.mark.parametrize("op, variant, dtype", [p for p in _samples() if p.values[2] == torch.float32
                                                  or is_mixed(p.values[0], p.values[1])])
def test_opcheck_reference_registration(op, variant, dtype, reference_ops):
    args = make_args(op, shapes_for(op, SIZES), dtype, variant)
    torch.library.opcheck(getattr(reference_ops, op).default, args)
