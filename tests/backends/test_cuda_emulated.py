"""The CUDA backend's kernel bodies (csrc/include/agd_kernels/grid) executed on CPU tensors by the grid
emulator (csrc/testing, built by tests/backends/emulated.py): what CI can run of the CUDA kernels without a
GPU. The bodies, the table layout, the block map, the vector/scalar-tail split, the arrival counters and the
launchers' checks are the ones the .cu files compile; only the block context differs (emulator.h).

Matrix: every op of the table (all have grid kernels) x every flag variant of tests/op_cases.py x
fp32/bf16/fp16 on tensors of 0, 1, 7 and 4097 elements in one launch; per op and dtype also with a 1_000_003-element tensor (31
blocks of one tensor: the step counter must still advance once) and on 300 tensors of mixed sizes; all
with the CPU backend's derived tolerance (yellowfin_tune_: the Triton backend's derived bound). Then: misaligned views take the scalar path; found_inf changes
no bit; bad input raises naming the argument and changes nothing; the emulator reports a barrier that
not every thread reaches; the CUDA build registers exactly these ops as compiled CUDA kernels.
"""
from __future__ import annotations

import pytest
import torch

from agd_kernels import _backends, _ext
from tests.backends import emulated
from tests.backends.test_triton import check_yellowfin_tune
from tests.op_cases import (MANY_SMALL, SIZES, TELEMETRY_OPS, VARIANTS, _clone_args, _flat, check_backend,
                            check_telemetry, make_args, mutated_positions, op_dtypes, run, shapes_for)
from tests.tolerance import DTYPE_IDS, assert_within_2x_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SMALL = SIZES[:-1]  # 0, 1, 7, 4097 elements


@pytest.fixture(scope="module", autouse=True)
def emulator():
    emulated.load()


# yellowfin_tune_ is a scalar fp64 step whose root no two implementations round alike: it has its own check
# (test_yellowfin_tune), the derived bound of the Triton backend's.
LIST_OPS = [op for op in emulated.OPS if op != "yellowfin_tune_"]


def _cases(all_variants=True):
    return [pytest.param(op, variant, dtype, id=f"{op}-{variant}-{DTYPE_IDS[dtype]}")
            for op in LIST_OPS for variant in (VARIANTS[op] if all_variants else list(VARIANTS[op])[:1])
            for dtype in op_dtypes(op, DTYPES, variant)]


def _check(op, shapes, dtype, variant):
    check_backend(op, "emulated cuda", shapes, dtype, variant, kernel=emulated.kernel(op))


@pytest.mark.parametrize("op, variant, dtype", _cases())
def test_op_matches_reference(op, variant, dtype):
    _check(op, shapes_for(op, SMALL), dtype, variant)


@pytest.mark.parametrize("op, variant, dtype", _cases(all_variants=False))
def test_million_elements_next_to_small_ones(op, variant, dtype):
    _check(op, shapes_for(op, SIZES), dtype, variant)


@pytest.mark.parametrize("op, variant, dtype", _cases(all_variants=False))
def test_many_small_tensors(op, variant, dtype):
    _check(op, shapes_for(op, MANY_SMALL), dtype, variant)


@pytest.mark.parametrize("variant", list(VARIANTS["yellowfin_tune_"]))
def test_yellowfin_tune(variant):
    check_yellowfin_tune(variant, kernel=emulated.kernel("yellowfin_tune_"))


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of t starting one element into its storage: 2 or 4 bytes off any 16-byte boundary."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    view = buf[1:].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("op, variant", [("adam_step_", "adamw-amsgrad"), ("sgd_step_", "momentum-dampening"),
                                         ("rmsprop_step_", "centered-momentum"), ("adagrad_step_", "plain")])
def test_misaligned_tensors_take_the_scalar_path(op, variant, dtype):
    """A tensor whose pointers are not all 16-byte aligned gets no vector access (table word vector_ok);
    here the gradient alone is misaligned, which must not mislead the other streams."""
    args = make_args(op, shapes_for(op, [4097, 1000, 7]), dtype, variant)
    got, ref, oracle = list(_clone_args(args)), _clone_args(args), _clone_args(args, torch.float64)
    got[1] = [_misaligned(g) for g in got[1]]
    emulated.kernel(op)(*got)
    run(op, "torch", ref), run(op, "torch", oracle)
    for pos in mutated_positions(op):
        for i, (g, r, o) in enumerate(zip(_flat(got[pos]), _flat(ref[pos]), _flat(oracle[pos]))):
            assert_within_2x_reference(g, r, o, name=f"misaligned {op} arg {pos} tensor {i}")


@pytest.mark.parametrize("op", [op for op in emulated.OPS if any(hp.get("found_inf") for hp in VARIANTS[op].values())])
def test_found_inf_changes_no_bit(op):
    """found_inf is read on the device by every block: nothing is written, step counters included (also
    across a multi-block tensor), NaNs keep their bits."""
    variant = next(v for v, hp in VARIANTS[op].items() if hp.get("found_inf"))
    args = make_args(op, shapes_for(op, [70_001, 1, 0]), torch.bfloat16, variant)
    mutated = [t for pos in mutated_positions(op) for t in _flat(args[pos])]
    for t in mutated:
        if t.numel():
            t.reshape(-1)[0] = float("nan")
    before = [t.clone() for t in mutated]
    emulated.kernel(op)(*args)
    for t, b in zip(mutated, before):
        assert torch.equal(_bits(t), _bits(b))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("op", sorted(TELEMETRY_OPS))
def test_telemetry_of_multi_block_tensors(op, dtype):
    """The 1M-element tensor spans 31 blocks: each block's sums (all five, or LAMB's phase's columns) go to
    its scratch slots and whichever block arrives last adds them in block order (grid/telemetry.h); also 300
    tensors in one launch."""
    for sizes in (SIZES, MANY_SMALL):
        _check(op, shapes_for(op, sizes), dtype, "telemetry")


def test_agd_telemetry_counts_tensors_without_slots():
    """A weight with a zero-size kernel dim has no slots, and neither has its rank-1 follower: nothing moves,
    yet the follower's sums count (Δw = 0), here over the 3 blocks of a 70,001-element follower."""
    args = list(make_args("agd_step_", [(5, 3), (70_001, 3, 0), (70_001, 1), (6, 1)], torch.float32, "telemetry"))
    for pos in (0, 1):  # (70_001, 1) becomes the rank-1 follower of the weight before it: its (empty) slots
        args[pos][2] = args[pos][2].reshape(-1)
    args[4][2], args[5][2] = args[4][1], 0
    got, ref = _clone_args(tuple(args)), _clone_args(tuple(args))
    emulated.kernel("agd_step_")(*got)
    run("agd_step_", "torch", ref)
    assert torch.equal(got[0][2], args[0][2]) and torch.equal(ref[0][2], args[0][2]), "the follower moved"
    assert not torch.equal(got[0][3], args[0][3])
    check_telemetry("agd_step_", "agd_step_ without slots (emulated cuda)", args, got)


def test_step_counters_advance_once_per_call():
    """31 blocks of one tensor each read the old step; only the last to arrive writes step + 1."""
    args = make_args("adam_step_", shapes_for("adam_step_", [1_000_003, 0, 5]), torch.float32, "adam")
    for _ in range(3):
        emulated.kernel("adam_step_")(*args)
    assert [s.item() for s in args[5]] == [6.0, 6.0, 6.0]  # make_args starts them at 3


BAD_INPUT = [
    ("adam_step_", "adam", lambda a: a[2].__setitem__(1, torch.zeros(8)), ValueError,
     r"adam_step_: exp_avgs\[1\] has shape \[8\], params\[1\] has \[7\]"),
    ("adam_step_", "adam", lambda a: a[0].__setitem__(0, a[0][0].double()), TypeError,
     r"adam_step_: params\[0\] has dtype Double; the emulated cuda backend takes float32, float16 or bfloat16"),
    ("adam_step_", "adam", lambda a: a[5].__setitem__(2, torch.zeros((), dtype=torch.float64)), ValueError,
     r"adam_step_: state_steps\[2\] must be a one-element float32 tensor \(the dtype of state_steps\[0\]\)"),
    ("sgd_step_", "plain", lambda a: a.__setitem__(3, torch.ones(2)), ValueError,
     r"sgd_step_: lr must hold exactly one element"),
    ("rmsprop_step_", "centered-momentum", lambda a: a.__setitem__(3, a[3][:2]), ValueError,
     r"rmsprop_step_: grad_avgs has 2 tensors, params has 3"),
    ("adagrad_step_", "amp", lambda a: a.__setitem__(9, torch.ones((), dtype=torch.int32)), TypeError,
     r"adagrad_step_: grad_scale must be float32 or float64; got Int"),
    ("adam_step_", "adam", lambda a: a[1].__setitem__(0, torch.zeros(10)[::2]), ValueError,
     r"adam_step_: grads\[0\] has strides \[2\], params\[0\] has \[1\]"),
    ("sgd_step_", "telemetry", lambda a: a.__setitem__(-1, torch.zeros(3, 4)), ValueError,
     r"sgd_step_: telemetry must be a contiguous float32 tensor of shape \(3, 5\)"),
    ("adam_step_", "telemetry", lambda a: a.__setitem__(-1, a[-1].half()), ValueError,
     r"adam_step_: telemetry must be a contiguous float32 tensor of shape \(3, 5\).*got Half"),
    ("agd_step_", "telemetry", lambda a: a.__setitem__(-1, torch.zeros(3, 5)), ValueError,
     r"agd_step_: telemetry must be a contiguous float32 tensor of shape \(7, 5\)"),
    ("lamb_moments_", "telemetry", lambda a: a.__setitem__(-1, torch.zeros(5, 3).t()), ValueError,
     r"lamb_moments_: telemetry must be a contiguous float32 tensor of shape \(3, 5\)"),
    ("lamb_apply_", "telemetry", lambda a: a.__setitem__(-1, torch.zeros(3, 4)), ValueError,
     r"lamb_apply_: telemetry must be a contiguous float32 tensor of shape \(3, 5\)"),
    ("yellowfin_apply_", "telemetry", lambda a: a.__setitem__(-1, a[-1].double()), ValueError,
     r"yellowfin_apply_: telemetry must be a contiguous float32 tensor of shape \(3, 5\).*got Double"),
]


@pytest.mark.parametrize("op, variant, corrupt, error, match",
                         [pytest.param(*case, id=f"{case[0]}-{i}") for i, case in enumerate(BAD_INPUT)])
def test_bad_input_raises_naming_the_argument_and_changes_nothing(op, variant, corrupt, error, match):
    args = list(make_args(op, shapes_for(op, [5, 7, 3]), torch.float32, variant))
    corrupt(args)
    mutated = [t for pos in mutated_positions(op) for t in _flat(args[pos])]
    before = [t.clone() for t in mutated]
    with pytest.raises(error, match=match):
        emulated.kernel(op)(*args)
    assert all(torch.equal(_bits(t), _bits(b)) for t, b in zip(mutated, before))  # lamb's norms start NaN


def test_a_barrier_not_all_threads_reach_is_reported():
    """Half the threads of a block return while the other half wait at a barrier: a hang or undefined
    behaviour on a GPU, an error naming the block and the barrier here (emulator.h)."""
    with pytest.raises(RuntimeError, match=r"block 0: 128 of 256 threads returned while 128 wait at barrier 0"):
        torch.ops.agd_kernels_emu.divergent_barrier_probe()


@pytest.mark.skipif(not _ext.has_cuda_part(), reason="agd_kernels._C was built without its CUDA part")
def test_cuda_build_registers_the_grid_kernels():
    """The CUDA build attaches a compiled CUDA kernel to exactly the ops with grid kernels, so `auto` picks
    the cuda backend for them on CUDA tensors, and the Python fallback (the auto choice, Triton) stays on
    the CUDA key of the others only."""
    assert _backends.COMPILED_OPS["CUDA"] == set(emulated.OPS)
    device = torch.device("cuda")
    for op in emulated.OPS:
        assert _backends.unavailable_reason(op, "cuda", device, torch.float32) is None, op
