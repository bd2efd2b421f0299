"""The CPU backend (csrc/cpu, C++/OpenMP) against the reference, op by op, on both of its builds.

Matrix: every op of the table x every flag variant of tests/op_cases.py x fp32/bf16/fp16 on tensors of
0, 1, 7 and 4097 elements in one call (sizes that divide no chunk or vector width); per op and dtype also
with a 1_000_003-element tensor among them (62 chunks over both threads) and on 300 tensors of mixed
sizes; all with the derived tolerance of tests/tolerance.py. The AVX2 build of the element loops runs
wherever the CPU has it; the baseline build (AGD_KERNELS_CPU_ISA=base) runs the same matrix on the small
sizes, so both builds are executed in CI. Then: reductions are bit-identical for 1 and 2 threads and from
run to run; found_inf changes no bit; bad input raises naming the argument and changes nothing;
channels_last layouts give the contiguous result; torch.lerp's end-anchored formula (weights >= 0.5).
"""
from __future__ import annotations

import pytest
import torch

from agd_kernels import _backends, _ext, ops
from tests.op_cases import (MANY_SMALL, SIZES, VARIANTS, _clone_args, _flat, check_backend, make_args,
                            mutated_positions, op_dtypes, run, shapes_for)
from tests.tolerance import DTYPE_IDS, assert_within_2x_reference

OPS = list(ops.SCHEMAS)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SMALL = SIZES[:-1]  # 0, 1, 7, 4097 elements


def _cases(ops_, dtypes, all_variants=True):
    return [pytest.param(op, variant, dtype, id=f"{op}-{variant}-{DTYPE_IDS[dtype]}")
            for op in ops_ for variant in (VARIANTS[op] if all_variants else list(VARIANTS[op])[:1])
            for dtype in op_dtypes(op, dtypes, variant)]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, so NaNs compare equal to identical NaNs and nothing else."""
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def _assert_same_bits(got: list[torch.Tensor], want: list[torch.Tensor], what: str) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, f"{what}: tensor {i} changed dtype or shape"
        assert torch.equal(_bits(g), _bits(w)), f"{what}: tensor {i} differs"


def _mutated(op: str, args) -> list[torch.Tensor]:
    return [t for pos in mutated_positions(op) for t in _flat(args[pos])]


@pytest.fixture
def baseline_isa(monkeypatch):
    monkeypatch.setenv("AGD_KERNELS_CPU_ISA", "base")


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_auto_picks_cpu_for_every_op_and_dtype(monkeypatch):
    monkeypatch.delenv(_backends.ENV_VAR, raising=False)
    for op in OPS:
        for dtype in DTYPES + [torch.float64]:
            assert _backends.resolve(op, torch.device("cpu"), dtype, "auto")[0] == "cpu", (op, dtype)


@pytest.mark.parametrize("op, variant, dtype", _cases(OPS, DTYPES))
def test_op_matches_reference(op, variant, dtype):
    check_backend(op, "cpu", shapes_for(op, SMALL), dtype, variant)


# The big tensor and the many small ones exercise chunking and thread balance, which no flag changes:
# one variant per op keeps the matrix at a few seconds per dtype.
@pytest.mark.parametrize("op, variant, dtype", _cases(OPS, DTYPES, all_variants=False))
def test_million_elements_next_to_small_ones(op, variant, dtype):
    check_backend(op, "cpu", shapes_for(op, SIZES), dtype, variant)


@pytest.mark.parametrize("op, variant, dtype", _cases(OPS, DTYPES, all_variants=False))
def test_many_small_tensors(op, variant, dtype):
    check_backend(op, "cpu", shapes_for(op, MANY_SMALL), dtype, variant)


@pytest.mark.parametrize("op, variant, dtype", _cases(OPS, DTYPES))
def test_baseline_build_matches_reference(op, variant, dtype, baseline_isa):
    check_backend(op, "cpu", shapes_for(op, SMALL), dtype, variant)


def _check_args(op: str, args, name: str) -> None:
    """check_backend's comparison for hand-made arguments: cpu vs reference vs float64 oracle."""
    got, ref, oracle = _clone_args(args), _clone_args(args), _clone_args(args, torch.float64)
    run(op, "cpu", got), run(op, "torch", ref), run(op, "torch", oracle)
    for pos in mutated_positions(op):
        for i, (g, r, o) in enumerate(zip(_flat(got[pos]), _flat(ref[pos]), _flat(oracle[pos]))):
            assert_within_2x_reference(g, r, o, name=f"{name} arg {pos} tensor {i}")


# torch.lerp anchors at `end` for weights >= 0.5: Adam with beta1 <= 0.5, centered RMSprop with alpha <= 0.5.
# The tables' variants all use small weights, so this path (a template parameter of the kernels) is here.
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("op, variant, position, value", [
    ("adam_step_", "adam", 7, 0.3), ("adam_step_", "adamw-amsgrad", 7, 0.0),
    ("rmsprop_step_", "centered-momentum", 7, 0.4)],
    ids=["adam-beta1-0.3", "adamw-amsgrad-beta1-0", "rmsprop-alpha-0.4"])
def test_lerp_weights_from_one_half_up(op, variant, position, value, dtype):
    args = list(make_args(op, shapes_for(op, SMALL), dtype, variant))
    args[position] = value
    _check_args(op, tuple(args), f"{op}[{variant}, {value}]")


def test_adam_beta1_zero_copies_the_gradient_into_exp_avg():
    """lerp(m, g, 1) is g to the bit (torch's end-anchored formula), whatever m was."""
    args = list(make_args("adam_step_", shapes_for("adam_step_", SMALL), torch.float32, "adam"))
    args[7] = 0.0
    run("adam_step_", "cpu", tuple(args))
    _assert_same_bits(args[2], args[1], "exp_avgs after beta1 = 0")


@pytest.mark.parametrize("op", [op for op in OPS if op != "yellowfin_tune_"])
def test_float64(op):
    """fp64 parameters run with fp64 math; the reference in fp64 is the oracle itself, so the bound is
    the floor of tests/tolerance.py: 2 fp64 ulps of the largest magnitude."""
    check_backend(op, "cpu", shapes_for(op, SMALL), torch.float64, list(VARIANTS[op])[0])


@pytest.mark.parametrize("op", ["slice_sumsq_", "agd_step_", "lamb_moments_", "yellowfin_stats_", "adam_step_"])
def test_same_bits_for_one_and_two_threads_and_every_run(op, restore_threads):
    """Reductions cut the work into fixed blocks whatever the thread count and add the block partials
    in block order, so sums (and what is computed from them) have one possible value."""
    args = make_args(op, shapes_for(op, [1_000_003, 70_001, 3]), torch.float32, list(VARIANTS[op])[0])
    results = []
    for threads in (1, 2, 2, 1):
        torch.set_num_threads(threads)
        work = _clone_args(args)
        out = run(op, "cpu", work)
        results.append(_mutated(op, work) + _flat(out))
    for i, result in enumerate(results[1:], 1):
        _assert_same_bits(result, results[0], f"{op} run {i}")


@pytest.mark.parametrize("op", ["adam_step_", "sgd_step_", "rmsprop_step_", "adagrad_step_", "agd_step_", "lamb_moments_",
                                "lamb_apply_", "yellowfin_apply_"])
def test_telemetry_same_bits_for_one_and_two_threads(op, restore_threads):
    """Telemetry sums per chunk (in the update's own loop where the types allow) and adds a tensor's chunks in chunk order
    (csrc/cpu/telemetry.h), so its sums do not depend on which thread ran which chunk."""
    args = make_args(op, shapes_for(op, [1_000_003, 70_001, 3]), torch.float32, "telemetry")
    results = []
    for threads in (1, 2, 2, 1):
        torch.set_num_threads(threads)
        work = _clone_args(args)
        run(op, "cpu", work)
        results.append([work[-1]])
    for i, result in enumerate(results[1:], 1):
        _assert_same_bits(result, results[0], f"{op} telemetry run {i}")


@pytest.mark.parametrize("op, variant", [(op, v) for op in OPS for v, hp in VARIANTS[op].items()
                                         if hp.get("found_inf") or v == "non-finite"])
def test_skipped_step_changes_no_bit(op, variant):
    """found_inf (and, for YellowFin, a non-finite sum of squares) skips the step: parameters, state
    and step counters keep every bit, NaNs included."""
    args = make_args(op, shapes_for(op, [1, 4097, 7]), torch.bfloat16, variant)
    for t in _mutated(op, args):
        if t.numel():
            t.reshape(-1)[0] = float("nan")
    before = [t.clone() for t in _mutated(op, args)]
    run(op, "cpu", args)
    _assert_same_bits(_mutated(op, args), before, f"{op}[{variant}]")


def _set(seq_pos: int, index: int, value):
    def corrupt(args):
        args[seq_pos][index] = value(args[seq_pos][index])
    return corrupt


def _replace(pos: int, value):
    def corrupt(args):
        args[pos] = value(args[pos])
    return corrupt


# (op, variant, corruption of the positional args, exception, message pattern)
BAD_INPUT = [
    ("adam_step_", "adam", _set(2, 1, lambda t: torch.zeros(t.numel() + 1)), ValueError,
     r"adam_step_: exp_avgs\[1\] has shape \[8\], params\[1\] has \[7\]"),
    ("adam_step_", "adam", _set(1, 0, lambda t: t.double()), TypeError,
     r"adam_step_: grads\[0\] is Double, params\[0\] is Float"),
    ("adam_step_", "adam", _set(5, 2, lambda t: torch.zeros(2)), ValueError,
     r"adam_step_: state_steps\[2\] must be a one-element float32 or float64 CPU tensor"),
    ("adam_step_", "adam", _replace(6, lambda t: torch.ones(2)), ValueError,
     r"adam_step_: lr must hold exactly one element"),
    ("adam_step_", "adamw-amsgrad", _replace(4, lambda ts: ts[:2]), ValueError,
     r"adam_step_: max_exp_avg_sqs has 2 tensors, params has 3"),
    ("adam_step_", "adam", _set(0, 1, lambda t: torch.zeros(14)[::2]), ValueError,
     r"adam_step_: params\[1\] must be dense and non-overlapping"),
    ("adam_step_", "adam", _set(0, 0, lambda t: t.int()), TypeError,
     r"adam_step_: params\[0\] has dtype Int; the cpu backend takes float32, float64, float16 or bfloat16"),
    ("sgd_step_", "momentum-dampening", _replace(2, lambda ts: []), ValueError,
     r"sgd_step_: momentum_buffers has 0 tensors, params has 3"),
    ("rmsprop_step_", "centered-momentum", _set(3, 2, lambda t: t.half()), TypeError,
     r"rmsprop_step_: grad_avgs\[2\] is Half, params\[2\] is Float"),
    ("adagrad_step_", "amp", _replace(9, lambda t: torch.ones(3)), ValueError,
     r"adagrad_step_: grad_scale must hold exactly one element"),
    ("slice_sumsq_", "plain", _replace(1, lambda t: torch.zeros(t.numel() + 1)), ValueError,
     r"slice_sumsq_: out has \d+ slots but the tensors have \d+ slices"),
    ("agd_step_", "plain", _replace(5, lambda counts: [c + 1 for c in counts]), ValueError,
     r"agd_step_: params\[0\] of shape \[5, 1\] has 1 taps but slice_count\[0\] is 2"),
    ("agd_step_", "plain", _replace(6, lambda depth: 0), ValueError, r"agd_step_: depth must be >= 1"),
    ("lamb_moments_", "apex-clipped", _replace(5, lambda t: t.int()), TypeError,
     r"lamb_moments_: grad_sumsq must be float32 \(or float64\); got Int"),
    ("lamb_moments_", "apex-clipped", _replace(6, lambda t: torch.zeros(t.numel() + 2, dtype=t.dtype)), ValueError,
     r"lamb_moments_: norms must be 1-D with 2 slots per tensor of params \(6\); got shape \[8\]"),
    ("lamb_moments_", "apex-clipped", _replace(6, lambda t: t.half()), TypeError,
     r"lamb_moments_: norms must be float64 \(or float32\); got Half"),
    ("lamb_moments_", "apex-clipped", _replace(6, lambda t: torch.zeros(12, dtype=t.dtype)[::2]), ValueError,
     r"lamb_moments_: norms must be contiguous \(e.g. a narrow\(\) of a 1-D buffer\); got strides \[2\]"),
    ("lamb_apply_", "apex-clipped", _replace(7, lambda t: t.reshape(3, 2)), ValueError,
     r"lamb_apply_: norms must be 1-D with 2 slots per tensor of params \(6\); got shape \[3, 2\]"),
    ("lamb_apply_", "apex-clipped", _replace(5, lambda t: torch.ones(2)), ValueError,
     r"lamb_apply_: lr must hold exactly one element"),
    ("yellowfin_tune_", "default", _replace(0, lambda t: t[:-1].clone()), ValueError,
     r"yellowfin_tune_: tuner must be a contiguous 1-D tensor of 24 slots \+ curv_win_width = 29 values"),
    ("yellowfin_apply_", "momentum", _replace(5, lambda t: t.reshape(-1)[:3].clone()), ValueError,
     r"yellowfin_apply_: stats must hold rows of 4 values"),
    # telemetry (the last argument; agd_kernels/ops.py, "Telemetry")
    ("adam_step_", "telemetry", _replace(-1, lambda t: torch.zeros(3, 4)), ValueError,
     r"adam_step_: telemetry must be a contiguous float32 tensor of shape \(3, 5\) \(one row of "),
    ("sgd_step_", "telemetry", _replace(-1, lambda t: t.double()), ValueError,
     r"sgd_step_: telemetry must be a contiguous float32 tensor of shape \(3, 5\).*got Double"),
    ("rmsprop_step_", "telemetry", _replace(-1, lambda t: torch.zeros(5, 3).t()), ValueError,
     r"rmsprop_step_: telemetry must be a contiguous float32 tensor"),
    ("adagrad_step_", "telemetry", _replace(-1, lambda t: t[:2]), ValueError,
     r"adagrad_step_: telemetry must be a contiguous float32 tensor of shape \(3, 5\).*got Float of shape \[2, 5\]"),
    ("agd_step_", "telemetry", _replace(-1, lambda t: t[:, :4]), ValueError,
     r"agd_step_: telemetry must be a contiguous float32 tensor of shape \(7, 5\).*got Float of shape \[7, 4\]"),
    ("lamb_moments_", "telemetry", _replace(-1, lambda t: t.half()), ValueError,
     r"lamb_moments_: telemetry must be a contiguous float32 tensor of shape \(3, 5\).*got Half"),
    ("lamb_apply_", "telemetry", _replace(-1, lambda t: t.reshape(-1)), ValueError,
     r"lamb_apply_: telemetry must be a contiguous float32 tensor of shape \(3, 5\).*got Float of shape \[15\]"),
    ("yellowfin_apply_", "telemetry", _replace(-1, lambda t: torch.zeros(4, 5)), ValueError,
     r"yellowfin_apply_: telemetry must be a contiguous float32 tensor of shape \(3, 5\).*got Float of shape \[4, 5\]"),
]


@pytest.mark.parametrize("via", ["torch.ops", "_C"])
@pytest.mark.parametrize("op, variant, corrupt, error, match", [pytest.param(*case, id=f"{case[0]}-{i}")
                                                                 for i, case in enumerate(BAD_INPUT)])
def test_bad_input_raises_naming_the_argument_and_changes_nothing(op, variant, corrupt, error, match, via):
    """Through torch.ops and through _C's entry point (csrc/op_call.cpp), which must raise the same
    Python exception types."""
    args = list(make_args(op, shapes_for(op, [5, 7, 3]), torch.float32, variant))
    corrupt(args)
    before = [t.clone() for t in _mutated(op, args)]
    call = getattr(torch.ops.agd_kernels, op) if via == "torch.ops" else getattr(_ext.MODULE, op)
    with pytest.raises(error, match=match):
        call(*args)  # the dispatcher's CPU kernel, whatever the dtypes
    _assert_same_bits(_mutated(op, args), before, f"{op} after a rejected call")


# Mixed precision (csrc/checks.h check_grads, check_grads_and_model_params), on the master-weights samples:
# fp32 params, bf16 grads and model_params (the last argument).
BAD_MIXED_INPUT = [
    ("adam_step_", _replace(16, lambda ts: []), TypeError,
     r"adam_step_: grads are BFloat16 beside Float params; pass the model's BFloat16 parameters as model_params"),
    ("adam_step_", _replace(16, lambda ts: ts[:2]), ValueError,
     r"adam_step_: model_params has 2 tensors, params has 3; pass one per param, or none"),
    ("adam_step_", _set(16, 1, lambda t: t.half()), TypeError, r"adam_step_: model_params\[1\] is Half, grads\[1\] is BFloat16"),
    ("sgd_step_", _set(1, 2, lambda t: t.half()), TypeError,
     r"sgd_step_: grads\[2\] is Half but grads\[0\] is BFloat16; one call takes one gradient dtype"),
    ("rmsprop_step_", _set(15, 0, lambda t: torch.zeros(t.numel() + 1, dtype=t.dtype)), ValueError,
     r"rmsprop_step_: model_params\[0\] has shape \[6\], grads\[0\] has \[5\]"),
    ("adagrad_step_", _replace(1, lambda ts: [t.float() for t in ts]), TypeError,
     r"adagrad_step_: model_params needs float32 params \(the masters\) and float16 or bfloat16 grads"),
    ("agd_step_", _replace(0, lambda ts: [t.double() for t in ts]), TypeError,
     r"agd_step_: grads\[0\] is BFloat16, params\[0\] is Double; grads must have the params' dtype"),
    ("yellowfin_stats_", _replace(1, lambda ts: [t.double() for t in ts]), TypeError,
     r"yellowfin_stats_: grads\[0\] is BFloat16, grad_avgs\[0\] is Double; grads must have the grad_avgs' dtype"),
]


@pytest.mark.parametrize("op, corrupt, error, match", [pytest.param(*case, id=f"{case[0]}-{i}")
                                                       for i, case in enumerate(BAD_MIXED_INPUT)])
def test_bad_mixed_input_raises_naming_the_argument_and_changes_nothing(op, corrupt, error, match):
    args = list(make_args(op, shapes_for(op, [5, 7, 3]), torch.bfloat16, "master-weights"))
    corrupt(args)
    before = [t.clone() for t in _mutated(op, args)]
    with pytest.raises(error, match=match):
        getattr(torch.ops.agd_kernels, op)(*args)
    _assert_same_bits(_mutated(op, args), before, f"{op} after a rejected call")


def test_unknown_isa_override_is_rejected(monkeypatch):
    monkeypatch.setenv("AGD_KERNELS_CPU_ISA", "avx9")
    args = make_args("sgd_step_", [(5,)], torch.float32, "plain")
    with pytest.raises(RuntimeError, match=r"AGD_KERNELS_CPU_ISA must be 'base' or 'avx2'.*'avx9'"):
        run("sgd_step_", "cpu", args)


@pytest.mark.parametrize("op", ["adam_step_", "agd_step_", "slice_sumsq_"])
def test_channels_last_gives_the_contiguous_result(op):
    """Elementwise ops walk memory order (fine for any shared dense layout); per-tap reductions and AGD's
    per-tap update need logical order and work on contiguous copies."""
    shapes = [(8, 6, 3, 3), (5, 4, 1, 1), (7, 1)]
    args = make_args(op, shapes, torch.float32, list(VARIANTS[op])[0])
    plain = _clone_args(args)
    out_plain = run(op, "cpu", plain)

    def channels_last(x):
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return [channels_last(e) for e in x] if isinstance(x, list) else x

    strided = tuple(channels_last(a) for a in _clone_args(args))
    assert not strided[0][0].is_contiguous()
    out_strided = run(op, "cpu", strided)
    _assert_same_bits([t.contiguous() for t in _mutated(op, strided) + _flat(out_strided)],
                      _mutated(op, plain) + _flat(out_plain), f"{op} channels_last")


def test_mixed_layouts_of_one_parameter_are_rejected():
    args = list(make_args("adam_step_", [(8, 6, 3, 3)], torch.float32, "adam"))
    args[0] = [args[0][0].contiguous(memory_format=torch.channels_last)]
    with pytest.raises(ValueError, match=r"exp_avgs\[0\] has strides .*params\[0\] has .*same memory layout"):
        run("adam_step_", "cpu", tuple(args))


# AGD needs depth >= 1 and the YellowFin tuner samples need a bucket: neither has an empty call.
@pytest.mark.parametrize("op", [op for op in OPS if op not in ("agd_step_", "yellowfin_tune_", "yellowfin_apply_")])
def test_empty_lists_are_a_no_op(op):
    """Called directly (agd_kernels.ops returns before calling with no tensors): nothing to do, no error;
    yellowfin_stats_ writes zero sums."""
    args = make_args(op, [], torch.float32, list(VARIANTS[op])[0])
    getattr(torch.ops.agd_kernels, op)(*args)
    if op == "yellowfin_stats_":
        assert torch.equal(args[2], torch.zeros(4, dtype=torch.float64))
