"""Ahead-of-time compile check of the real GPU path: every @triton.jit kernel of agd_kernels.triton_kernels,
compiled for sm_80 and sm_90 for every parameter dtype, with exactly the argument types and tile sizes its
launcher passes on a GPU (tests/backends/triton_aot.py records the launches and compiles them)."""
import pytest

from tests.backends.triton_aot import ARCHS, DTYPES, KERNELS, MIXED, Compiled


@pytest.mark.parametrize("dtype", list(DTYPES.values()))
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_compiles_for_sm80_and_sm90(triton_aot, kernel, dtype):
    ids = triton_aot.owners.get((kernel, dtype))
    assert ids, f"no launcher launched {kernel} for {dtype}: it is dead code or the recording misses it"
    failures = {f"{Compiled.describe(triton_aot.jobs[i])} @sm_{arch}": triton_aot.errors[arch][i]
                for i in ids for arch in ARCHS if triton_aot.errors[arch][i]}
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())


#: Kernels of the ops that read 16-bit grads beside fp32 params (and write model params when they write params).
MIXED_KERNELS = [k for k in KERNELS if k.split(".")[1].removesuffix("_tensor_kernel").removesuffix("_kernel") in (
    "_adam", "_sgd", "_rmsprop", "_adagrad", "_agd_update", "_lamb_moments", "_lamb_apply", "_yellowfin_stats",
    "_yellowfin_apply")]


@pytest.mark.parametrize("dtype", list(MIXED.values()))
@pytest.mark.parametrize("kernel", MIXED_KERNELS)
def test_master_weights_kernel_compiles_for_sm80_and_sm90(triton_aot, kernel, dtype):
    """The (fp32 params, 16-bit grads and model params) specialisation of every kernel that takes it."""
    test_kernel_compiles_for_sm80_and_sm90(triton_aot, kernel, dtype)


def test_every_launch_belongs_to_a_listed_kernel(triton_aot):
    """A kernel the enumeration above misses would escape the per-kernel test."""
    assert {kernel for kernel, _ in triton_aot.owners} <= set(KERNELS)
