"""agd_kernels._C's Python entry points: one per op (csrc/op_call.cpp), which the cpu and cuda backends
call instead of torch.ops, borrowing the tensors of the caller's lists; and collect_grads
(csrc/grads.cpp), which the optimizers' step uses.

An entry point must give torch.ops' results to the bit, leave every reference count as it found it
(borrowing, and the references taken while the GIL is released for large calls), and hand everything it
does not take back to torch.ops by returning NotImplemented: tensor subclasses, torch function and
dispatch modes, argument lists it cannot convert. collect_grads must agree with its Python version.
"""
from __future__ import annotations

import gc
import sys
import weakref

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import agd_kernels as ak
from agd_kernels import _backends, _ext, ops
from agd_kernels.optim._base import _collect_group_grads
from tests.op_cases import VARIANTS, _clone_args, _flat, make_args, shapes_for

pytestmark = pytest.mark.skipif(not _ext.LOADED, reason=f"agd_kernels._C not loaded: {_ext.LOAD_ERROR}")

OPS = list(ops.SCHEMAS)
CPU = torch.device("cpu")


def _args(op: str, sizes=(5, 7, 3)) -> list:
    return list(make_args(op, shapes_for(op, list(sizes)), torch.float32, next(iter(VARIANTS[op]))))


def _tensors(args) -> list[torch.Tensor]:
    return [t for a in args for t in _flat(a)]


def assert_same_bits(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, f"tensor {i}"
        assert torch.equal(g.reshape(-1).view(torch.uint8), w.reshape(-1).view(torch.uint8)), f"tensor {i} differs"


class _Sub(torch.Tensor):
    """A tensor subclass with torch's default __torch_function__, like the ones DTensor builds on."""


@pytest.mark.parametrize("op", OPS)
def test_entry_point_gives_torch_ops_bits(op):
    """Same kernel, other calling convention: every mutated tensor and every output bit-identical. Also
    checks each entry point's C++ signature against the schema (the dispatcher's typed handle refuses a
    mismatch on its first call)."""
    args = _args(op)
    fast_args, ops_args = _clone_args(args), _clone_args(args)
    fast_out = getattr(_ext.MODULE, op)(*fast_args)
    ops_out = getattr(torch.ops.agd_kernels, op)(*ops_args)
    assert fast_out is not NotImplemented
    assert_same_bits(_tensors(fast_args) + _flat(fast_out), _tensors(ops_args) + _flat(ops_out))


@pytest.mark.parametrize("op", OPS)
def test_cpu_backend_calls_the_entry_point(op, monkeypatch):
    calls = []
    fast = getattr(_ext.MODULE, op)

    class Spy:
        def __getattr__(self, name):
            return (lambda *a: calls.append(name) or fast(*a)) if name == op else getattr(_ext.MODULE, name)

    monkeypatch.setattr(_ext, "MODULE", Spy())
    kernel = ops._compiled_kernel(op)
    kernel(*_args(op))
    assert calls == [op]


@pytest.mark.parametrize("numel", [5, 1 << 24], ids=["gil-held", "gil-released"])
def test_reference_counts_are_unchanged_and_tensors_still_free(numel):
    """1 << 24 elements is the size from which a call releases the GIL (csrc/op_call.cpp), holding a
    reference to each tensor object meanwhile: all must be given back."""
    tensors = [torch.ones(numel), torch.ones(3)]
    out = torch.empty(2)
    before = [sys.getrefcount(t) for t in tensors + [out]]
    _ext.MODULE.slice_sumsq_(tensors, out)
    assert out.tolist() == [float(numel), 3.0]
    assert [sys.getrefcount(t) for t in tensors + [out]] == before
    refs = [weakref.ref(t) for t in tensors]
    del tensors
    gc.collect()
    assert all(r() is None for r in refs), "a borrowed tensor outlived its last reference"


def test_tuples_are_taken_like_lists():
    args = _args("adam_step_")
    fast_args, ops_args = _clone_args(args), _clone_args(args)
    fast_args = [tuple(a) if isinstance(a, list) else a for a in fast_args]
    assert _ext.MODULE.adam_step_(*fast_args) is None
    torch.ops.agd_kernels.adam_step_(*ops_args)
    assert_same_bits(_tensors(fast_args), _tensors(ops_args))


def _changed(op: str, change: str, subclass: bool = True) -> list:
    args = _args(op)
    if change == "tensor-subclass" and subclass:
        args[0] = [p.as_subclass(_Sub) for p in args[0]]
    elif change == "generator-list":
        args[1] = (g for g in args[1])
    elif change == "missing-argument":
        args = args[:-1]
    elif change == "string-float":
        args[4] = "0.9"
    elif change == "float-for-int":
        args[6] = 2.0
    elif change == "int-overflow":
        args[6] = 1 << 70
    return args


@pytest.mark.parametrize("change", ["tensor-subclass", "generator-list", "missing-argument", "string-float",
                                    "float-for-int", "int-overflow"])
def test_arguments_it_does_not_take_go_to_torch_ops(change):
    """NotImplemented with nothing written; the backend's kernel then does what torch.ops does: the
    same bits, or the same exception type."""
    op = "agd_step_" if change in ("float-for-int", "int-overflow") else "sgd_step_"
    args = _changed(op, change)
    before = [t.clone() for t in _tensors(args)]
    assert getattr(_ext.MODULE, op)(*args) is NotImplemented
    assert_same_bits(_tensors(args), before)
    args, ops_args = _changed(op, change), _changed(op, change, subclass=False)
    try:
        getattr(torch.ops.agd_kernels, op)(*ops_args)
    except (RuntimeError, TypeError) as exc:
        with pytest.raises(type(exc)):
            _backends.resolve(op, CPU, torch.float32, "cpu")[1](*args)
        return
    _backends.resolve(op, CPU, torch.float32, "cpu")[1](*args)
    assert_same_bits([t.as_subclass(torch.Tensor) for t in _tensors(args)], _tensors(ops_args))


def test_dispatch_and_function_modes_see_the_op():
    seen = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    class FunctionLog(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append("function " + str(func))
            return func(*args, **(kwargs or {}))

    args = _args("rmsprop_step_")
    kernel = _backends.resolve("rmsprop_step_", CPU, torch.float32, "cpu")[1]
    for mode in (Log(), FunctionLog()):
        with mode:
            assert _ext.MODULE.rmsprop_step_(*args) is NotImplemented
            kernel(*args)
    assert "agd_kernels.rmsprop_step_.default" in seen
    assert any(s.startswith("function ") and "rmsprop_step_" in s for s in seen)


def _grad_cases():
    def params(*specs):
        out = []
        for dtype, grad in specs:
            p = torch.nn.Parameter(torch.randn(3, dtype=dtype))
            if grad == "dense":
                p.grad = torch.randn(3, dtype=dtype)
            elif grad == "other-dtype":
                p.grad_dtype = None  # torch refuses a gradient of another dtype unless told
                p.grad = torch.randn(3, dtype=torch.float64)
            elif grad == "sparse":
                p.grad = torch.randn(3, dtype=dtype).to_sparse()
            out.append(p)
        return out

    f32, bf16 = torch.float32, torch.bfloat16
    return {
        "empty": [],
        "all-dense": params((f32, "dense"), (f32, "dense")),
        "some-without-grad": params((f32, None), (f32, "dense"), (f32, None)),
        "none-with-grad": params((f32, None), (bf16, None)),
        "mixed-dtypes": params((f32, "dense"), (bf16, "dense")),
        "mixed-only-without-grad": params((f32, "dense"), (bf16, None)),
        "grad-of-other-dtype": params((f32, "dense"), (f32, None), (f32, "other-dtype"), (f32, "sparse")),
        "sparse-grad": params((f32, "dense"), (f32, "sparse")),
    }


@pytest.mark.parametrize("case", list(_grad_cases()))
def test_collect_grads_matches_python(case):
    group = _grad_cases()[case]
    got = _ext.MODULE.collect_grads(group)
    want = _collect_group_grads(group)
    assert len(got) == 4
    assert [id(p) for p in got[0]] == [id(p) for p in want[0]]
    assert [id(g) for g in got[1]] == [id(g) for g in want[1]]
    assert got[2:] == want[2:]


def test_collect_grads_leaves_subclasses_and_tuples_to_python():
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    assert _ext.MODULE.collect_grads([p.detach().as_subclass(_Sub)]) is NotImplemented
    assert _ext.MODULE.collect_grads((p,)) is NotImplemented


@pytest.mark.parametrize("name", ["Adam", "RMSprop", "SGD", "LAMB"])
def test_step_without_the_entry_points_gives_the_same_bits(name, monkeypatch):
    """The Python paths (no extension module, or torch.compile tracing) against the C++ ones: two
    groups, one holding two dtypes (two buckets), a parameter that has no gradient on the last steps."""
    results = []
    for module in (_ext.MODULE, None):
        monkeypatch.setattr(_ext, "MODULE", module)
        monkeypatch.setattr(_backends, "_KERNELS", dict(_backends._KERNELS))
        monkeypatch.setattr(_backends, "_RESOLVED", {})
        ops._register_compiled()
        gen = torch.Generator().manual_seed(0)
        dtypes = [torch.float32, torch.bfloat16, torch.float32, torch.float32, torch.float32]
        params = [torch.nn.Parameter(torch.randn(n, 3, generator=gen).to(d)) for n, d in zip([4, 5, 6, 7, 1], dtypes)]
        kwargs = {"momentum": 0.9} if name == "SGD" else {}
        opt = getattr(ak, name)([{"params": params[:3]}, {"params": params[3:], "lr": 1e-3}], **kwargs)
        for step in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            if step:
                params[-1].grad = None
            opt.step()
        results.append([p.detach().clone() for p in params] +
                       [v for p in params for v in opt.state[p].values() if isinstance(v, torch.Tensor)])
    assert_same_bits(*results)
