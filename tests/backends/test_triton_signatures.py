"""Triton reads every kernel parameter's annotation as we meant it (the compiled path; the interpreter ignores
annotations, so only this test sees it).

A module with `from __future__ import annotations` stringifies `beta1: "fp64"` into "'fp64'", which Triton's JIT
does not recognise: the Python float then specialises as fp32 on the GPU, and fp64 hyper-parameters lose
precision (1 − β2 off by 1.3e-5 for β2 = 0.999), as the first H200 runs showed (docs/gpu_runs.md).
"""
import importlib
import pkgutil

import pytest

triton = pytest.importorskip("triton")

import agd_kernels.triton_kernels as package  # noqa: E402

JIT = triton.runtime.jit.JITFunction


def _kernels():
    """(module.name, JITFunction) of every @triton.jit function. Under TRITON_INTERPRET=1 (CI) the decorator
    makes an InterpretedFunction: its Python function is wrapped in a JITFunction to read the parameters as
    the compiled path would."""
    out = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, JIT):
                out.append((f"{info.name}.{name}", obj))
            elif type(obj).__name__ == "InterpretedFunction":
                out.append((f"{info.name}.{name}", JIT(obj.fn)))
    return out


KERNELS = _kernels()


def test_the_kernels_are_found():
    names = {name for name, _ in KERNELS}
    assert {"adam._adam_kernel", "lamb._lamb_moments_kernel", "yellowfin._yellowfin_tune_kernel"} <= names


@pytest.mark.parametrize("name, kernel", KERNELS, ids=[name for name, _ in KERNELS])
def test_every_annotation_is_one_triton_recognises(name, kernel):
    for param in kernel.params:
        if param.annotation and not param.is_constexpr:
            assert param.annotation_type, (f"{name}({param.name}: {param.annotation}): Triton ignores this "
                                           "annotation, so the argument's type comes from its Python value")


def test_float64_hyper_parameters_reach_the_kernels_as_float64():
    fp64 = {(name, p.name) for name, kernel in KERNELS for p in kernel.params if p.annotation_type == "fp64"}
    for expected in [("adam._adam_kernel", "beta2"), ("rmsprop._rmsprop_kernel", "alpha"),
                     ("lamb._lamb_moments_kernel", "beta2"), ("yellowfin._yellowfin_tune_kernel", "beta")]:
        assert expected in fp64
