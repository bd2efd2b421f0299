"""The grid emulator's test-only extension (csrc/testing): the CUDA kernel bodies compiled by g++ and run on
CPU tensors, registered as CPU kernels of `torch.ops.agd_kernels_emu.<op>`.

Built on first use with torch.utils.cpp_extension.load into build/agdk_emulator (git-ignored), so the wheel
carries no test code and a local rerun reuses the objects (ninja rebuilds only what changed). Compiled
with -ffp-contract=off, as csrc/cuda is with -fmad=false: no fused multiply-adds on either side, so
emulated and real kernels round alike, operation by operation (the bit-equality test of test_cuda.py).
"""
from __future__ import annotations

import functools
import os

import torch

from agd_kernels import ops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMESPACE = "agd_kernels_emu"
#: Every op of the table has a grid kernel, hence an emulated one.
OPS = tuple(ops.SCHEMAS)
_LIB = None


@functools.cache
def load() -> None:
    """Defines the agd_kernels_emu schemas (the op table's) and loads the emulator library; idempotent."""
    global _LIB
    from torch.utils import cpp_extension

    _LIB = torch.library.Library(NAMESPACE, "DEF")
    for name in OPS:
        _LIB.define(name + ops.SCHEMAS[name][0])
    build = os.path.join(ROOT, "build", "agdk_emulator")
    os.makedirs(build, exist_ok=True)
    cpp_extension.load(
        name="agdk_emulator",
        sources=[os.path.join(ROOT, "csrc", "testing", "emulated_ops.cpp")],
        extra_include_paths=[os.path.join(ROOT, "csrc", "include")],
        # -O1: the emulator's speed is the fiber switches, not the math; -O3 doubled the compile time.
        extra_cflags=["-O1", "-ffp-contract=off", "-fno-math-errno", "-Wall"],
        build_directory=build,
        is_python_module=False,
        verbose=False,
    )


def kernel(op: str):
    load()
    return getattr(torch.ops.agd_kernels_emu, op).default
