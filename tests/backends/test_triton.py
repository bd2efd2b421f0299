"""The Triton backend against the reference, op by op, executed by the Triton interpreter on CPU tensors.

tests/conftest.py sets TRITON_INTERPRET=1 when no GPU is visible; on a GPU machine these CPU-tensor tests
skip and tests/backends/test_triton_cuda.py runs the same matrix on CUDA tensors.

Sizes: tensors of 1, 7, 1000, 4097, 3 and 0 elements in one launch (plus 4 conv-shaped weights for the
sliced ops). With the interpreter's tiles (multi_tensor.INTERPRETER: BLOCK 1024, CHUNK 2048) that crosses
tile, chunk and tensor boundaries, and has full tiles (unmasked path) next to partial and empty ones.

bf16 and the interpreter: the interpreter rounds fp32 -> bf16 toward zero, a GPU to nearest even. A bf16
result of a kernel can therefore be off by up to 1 bf16 ulp where the reference (round to nearest) is off
by at most half of one. The derived bound of tests/tolerance.py (2x the reference's max error, plus a floor
of 2 ulps of the largest magnitude, i.e. >= 1 ulp of every element) absorbs that 1 ulp: bf16 cases pass here
with the truncation, and would pass on a GPU without it. test_interpreter_truncates_bf16 pins the
truncation down, so a change of interpreter behaviour shows up as a failure, not as silently tighter or
looser bf16 checks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import agd_kernels as ak
from agd_kernels import _backends, ops
from agd_kernels.reference import yellowfin as ref_yellowfin
from agd_kernels.reference.agd import target_scale
from agd_kernels.reference.sumsq import num_slices
from agd_kernels.triton_kernels import multi_tensor, op_table
from tests.models import clone_model, compute_grads, make_model, set_grads, two_groups
from tests.op_cases import (MANY_SMALL, VARIANTS, _clone_args, _flat, check_backend, is_mixed, make_args,
                            mutated_positions, op_dtypes, run, shapes_for)
from tests.tolerance import DTYPE_IDS, EPS, assert_within_2x_reference

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="CPU tensors run Triton only under TRITON_INTERPRET=1, which tests/conftest.py sets when no GPU is "
           "visible; with a GPU, tests/backends/test_triton_cuda.py covers this matrix")

SIZES = [1, 7, 1000, 4097, 3, 0]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
OPS = list(op_table.LAUNCHERS)


def _cases(ops_, dtypes):
    return [pytest.param(op, variant, dtype, id=f"{op}-{variant}-{DTYPE_IDS[dtype]}")
            for op in ops_ for variant in VARIANTS[op] for dtype in op_dtypes(op, dtypes, variant)]


def test_every_op_of_the_table_has_a_triton_kernel():
    assert set(op_table.LAUNCHERS) == set(ops.SCHEMAS)
    for op in ops.SCHEMAS:
        name, kernel = _backends.resolve(op, torch.device("cpu"), ops.RESOLVE_DTYPE.get(op, torch.float32), "triton")
        assert name == "triton" and kernel is getattr(torch.ops.agd_kernels_triton, op).default
        # the same schema as the op table, mutation annotations included
        assert str(kernel._schema) == f"agd_kernels_triton::{op}{ops.SCHEMAS[op][0]}"


# ------------------------------------------------------------------------------ the op-table matrix
@pytest.mark.parametrize("op, variant, dtype", _cases([op for op in OPS if op != "yellowfin_tune_"], DTYPES))
def test_op_matches_reference(op, variant, dtype):
    check_backend(op, "triton", shapes_for(op, SIZES), dtype, variant)


@pytest.mark.parametrize("op, variant, dtype", _cases(["slice_sumsq_", "agd_step_"], DTYPES))
def test_matrices_only(op, variant, dtype):
    """Matrices alone take the flat (tap width 1) path of the slice sums, with unmasked vector tiles."""
    check_backend(op, "triton", [(n, 1) for n in SIZES], dtype, variant)


@pytest.mark.parametrize("op, variant, dtype", _cases([op for op in OPS if op != "yellowfin_tune_"],
                                                      [torch.float32]))
def test_per_tensor_path_matches_reference(op, variant, dtype, monkeypatch):
    """The launches torch.compile traces (one per tensor through wrap_triton, no pointer table), run eagerly."""
    monkeypatch.setattr(multi_tensor, "traced", lambda tensor: True)
    check_backend(op, "triton", shapes_for(op, SIZES), dtype, variant)


@pytest.mark.parametrize("op, variant, dtype", [
    pytest.param(op, variant, dtype, id=f"{op}-{variant}-{DTYPE_IDS[dtype]}")
    for op in OPS for variant in VARIANTS[op] if is_mixed(op, variant) for dtype in (torch.bfloat16, torch.float16)])
def test_per_tensor_path_master_weights(op, variant, dtype, monkeypatch):
    """The per-tensor kernels' specialisation for 16-bit grads and model params beside fp32 masters."""
    monkeypatch.setattr(multi_tensor, "traced", lambda tensor: True)
    check_backend(op, "triton", shapes_for(op, SIZES), dtype, variant)


@pytest.mark.parametrize("op, variant, dtype", _cases(["lamb_moments_", "lamb_apply_"],
                                                      [torch.bfloat16, torch.float16]))
def test_lamb_per_tensor_path_16_bit(op, variant, dtype, monkeypatch):
    """16-bit LAMB updates the moments in lamb_apply_, not lamb_moments_ (triton_kernels/lamb.py, DEFER): the
    per-tensor kernels take that path too."""
    monkeypatch.setattr(multi_tensor, "traced", lambda tensor: True)
    check_backend(op, "triton", shapes_for(op, SIZES), dtype, variant)


@pytest.mark.parametrize("op", [op for op in OPS if op != "yellowfin_tune_"])
def test_many_small_tensors(op):
    """96 tensors of 1 to 2053 elements in one launch: one table row each, most of them one partial tile."""
    check_backend(op, "triton", shapes_for(op, MANY_SMALL[:96]), torch.float32, next(iter(VARIANTS[op])))


# ------------------------------------------------------------------------------ YellowFin's scalar step
#: Tuner slots computed from x = √μ, the root of the cubic.
_FROM_ROOT = ("lr_t", "mu_t", "lr", "mu", "applied_lr", "lr_grad_norm_avg", "lr_grad_norm_avg_min")


def _root_rel_error(tuner: torch.Tensor) -> torch.Tensor:
    """Relative error any fp64 evaluation of μ and lr can have from the cancellation in the Vieta form.

    x = w − p/(3(w + eps)) + 1 subtracts terms of size |w| ~ √p to get x ~ 1/p: a rounding of u = 2^-53 in
    the terms moves x by u·(|w| + |p/3w| + 1), and two implementations whose cube roots differ by an ulp
    (torch's pow(a, 1/3) vs the kernel's exp/log/Newton cube root) differ by several of those. Allowing 8:
    |δx| <= 8u·(|w| + |p/3w| + 1). μ = x² then has relative error 2|δx|/x, lr ∝ (1 − x)² has 2|δx|/(1 − x).
    """
    slot, eps = ref_yellowfin.SLOT, ref_yellowfin.EPS
    d, h, c = (tuner[slot[k]] for k in ("dist_to_opt", "h_min", "grad_var"))
    p = (d + eps) ** 2 * (h + eps) ** 2 / 2 / (c + eps)
    w3 = (-(p ** 2 + 4.0 / 27.0 * p ** 3).sqrt() - p) / 2.0
    w = torch.copysign(w3.abs().pow(1.0 / 3.0), w3)
    x = ref_yellowfin.cubic_root(p)
    dx = 8 * 2.0 ** -53 * (w.abs() + (p / 3 / (w + eps)).abs() + 1)
    return 2 * dx / torch.minimum(x, 1 - x).clamp(min=2.0 ** -1022)


def check_yellowfin_tune(variant: str, device: str = "cpu", kernel=None) -> None:
    """The tuner is fp64 on both sides, so the 2x-reference rule has no reference error to scale and would
    demand 2 ulps everywhere. That holds for every slot except the ones computed from the cubic's root,
    which no two fp64 implementations reproduce to the bit (see _root_rel_error): those get the derived
    relative bound, x2. `kernel`: the tune kernel to check instead of Triton's (the CUDA backend's tests)."""
    args = make_args("yellowfin_tune_", [(1,), (7,), (4097,)], torch.float32, variant, device=device)
    got_args, ref_args = _clone_args(args), _clone_args(args)
    got = kernel(*got_args) if kernel is not None else run("yellowfin_tune_", "triton", got_args)
    ref = run("yellowfin_tune_", "torch", ref_args)
    ulps = 2 * EPS[torch.float64]
    rel = torch.full_like(ref_args[0], ulps)
    root = 2 * _root_rel_error(ref_args[0])
    for name in _FROM_ROOT:
        rel[ref_yellowfin.SLOT[name]] = torch.maximum(root, rel[0])
    for g, r, bound, name in ((got_args[0], ref_args[0], rel, "tuner"), (got[0], ref[0], rel[0].maximum(root), "lr"),
                              (got[1], ref[1], rel[0].maximum(root), "mu")):
        assert torch.equal(g.isnan(), r.isnan()), f"{variant}: {name} NaN pattern differs"
        err = (g - r).abs().nan_to_num(0.0)
        bad = (err > bound * r.abs().nan_to_num(0.0)).reshape(-1).nonzero().flatten().tolist()
        slots = [(ref_yellowfin.SLOTS[i] if name == "tuner" and i < len(ref_yellowfin.SLOTS) else i,
                  g.reshape(-1)[i].item(), r.reshape(-1)[i].item()) for i in bad]
        assert not bad, f"{variant}: {name} outside the bound at {slots}"
    if VARIANTS["yellowfin_tune_"][variant].get("found_inf") or variant == "non-finite":
        assert torch.equal(got_args[0], args[0]), "a skipped step changed the tuner"


# the non-finite sample computes the whole step on inf before discarding it: numpy warns about inf − inf
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("variant", list(VARIANTS["yellowfin_tune_"]))
def test_yellowfin_tune_matches_reference(variant):
    check_yellowfin_tune(variant)


# ------------------------------------------------------------------------------ AGD edge shapes
def agd_edge_case(nan: bool, device: str = "cpu"):
    """Weights (5, 3), (4, 3, 3, 3) with one all-zero tap, (2, 3, 0) (no slots) and (6, 1), each followed by
    a rank-1 follower; norms from the triton slice sums. Returns the arguments before the step, the
    (triton, reference, float64) argument tuples after it, and their (eta, G) outputs."""
    shapes = [(5, 3), (5,), (4, 3, 3, 3), (4,), (2, 3, 0), (2,), (6, 1)]
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=gen).to(device) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(device) for s in shapes]
    grads[2][:, :, 1, 1] = 0.0
    if nan:
        grads[6][3, 0] = float("nan")
    weights = [i for i, s in enumerate(shapes) if len(s) >= 2]
    first, starts_of = 0, {}
    for i in weights:
        starts_of[i] = (first, num_slices(shapes[i]))
        first += num_slices(shapes[i])
    owner = [max(w for w in weights if w <= i) for i in range(len(shapes))]
    sumsq = torch.empty(first, device=device)
    ops.slice_sumsq_([grads[i] for i in weights], sumsq, backend="triton")
    sv = torch.tensor([target_scale(shapes[i]) for i in weights for _ in range(starts_of[i][1])], device=device)
    args = (params, grads, sumsq, sv, [starts_of[o][0] for o in owner], [starts_of[o][1] for o in owner], 4, 2.0,
            None, None, [])
    runs = [_clone_args(args), _clone_args(args), _clone_args(args, torch.float64)]
    outs = [run("agd_step_", backend, a) for backend, a in zip(("triton", "torch", "torch"), runs)]
    return args, runs, outs


def check_agd_edge_case(nan: bool, device: str = "cpu") -> None:
    """Followers (rank <= 1) take their owner's pooled norm and sv; a weight with a zero-size kernel dim has no
    slots; an all-zero tap gets no update; a NaN gradient makes G NaN, so every parameter (a NaN, as the
    reference has it: only exact zeros are guarded)."""
    before, (got, ref, oracle), outs = agd_edge_case(nan, device)
    for i, (g, r, o) in enumerate(zip(got[0], ref[0], oracle[0])):
        assert torch.equal(g.isnan(), r.isnan()), f"param {i}: NaN pattern"
        assert_within_2x_reference(g.nan_to_num(), r.nan_to_num(), o.nan_to_num(), name=f"param {i}")
    for g, r in zip(outs[0], outs[1]):
        assert torch.equal(g.isnan(), r.isnan())
    assert torch.isnan(got[0][0]).all() == nan
    if not nan:
        assert torch.equal(got[0][2][:, :, 1, 1], before[0][2][:, :, 1, 1]), "the all-zero tap moved"
        assert not torch.equal(got[0][1], before[0][1]) and not torch.equal(got[0][3], before[0][3])
        assert torch.equal(got[0][5], before[0][5]), "the follower of a weight without slots moved"


@pytest.mark.parametrize("nan", [False, True], ids=["finite", "nan-gradient"])
def test_agd_followers_zero_taps_and_nan(nan):
    check_agd_edge_case(nan)


def test_agd_telemetry_sums_the_unmoved_follower():
    """The reference sums every tensor, also the follower (2,) of the slot-less weight (2, 3, 0), which the op
    does not move: its w_sq, g_sq and w_g are added, its d_sq and w_d are 0 (agd.py _agd_still_sums)."""
    args, _, _ = agd_edge_case(False)
    buffers = []
    for backend in ("triton", "torch"):
        call = _clone_args(args)
        buffers.append(torch.full((len(args[0]), 5), 0.25))
        run("agd_step_", backend, (*call, buffers[-1]))
    got, ref = buffers
    assert (ref[5, :3] != 0.25).all() and (ref[5, 3:] == 0.25).all()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ interpreter rounding
def test_interpreter_truncates_bf16():
    """SGD with lr 1 from p = 1 by g = 2^-10: the exact result 1 − 2^-10 lies a quarter bf16 ulp below 1.
    Round to nearest (torch, a GPU) gives 1.0; the interpreter truncates toward zero to 1 − 2^-8, one ulp
    away, which the derived bf16 bound accepts (see the module docstring)."""
    p = torch.ones(1, dtype=torch.bfloat16)
    g = torch.full((1,), 2.0 ** -10, dtype=torch.bfloat16)
    args = ([p], [g], [], torch.tensor(1.0), 0.0, 0.0, 0.0, False, False, False, None, None, [])
    got, ref, oracle = _clone_args(args), _clone_args(args), _clone_args(args, torch.float64)
    for backend, a in (("triton", got), ("torch", ref), ("torch", oracle)):
        run("sgd_step_", backend, a)
    assert ref[0][0].item() == 1.0
    assert got[0][0].item() == 1 - 2.0 ** -8
    assert_within_2x_reference(got[0][0], ref[0][0], oracle[0][0], name="truncated bf16")


# ------------------------------------------------------------------------------ tables and launches
def test_tables_are_cached_and_only_moved_gradients_upload(monkeypatch):
    """A step on the same tensors uploads nothing; new gradient tensors upload their pointers only."""
    monkeypatch.setattr(multi_tensor, "_TABLES", multi_tensor._Cache(64))
    monkeypatch.setattr(multi_tensor, "_POINTERS", multi_tensor._Cache(64))
    uploads = []
    real = multi_tensor._upload
    monkeypatch.setattr(multi_tensor, "_upload", lambda values, device: uploads.append(len(values)) or
                        real(values, device))
    args = make_args("adam_step_", shapes_for("adam_step_", SIZES), torch.float32, "adam", seed=5)
    run("adam_step_", "triton", args)
    assert len(uploads) == 3, uploads  # rows, blocks, gradient pointers
    uploads.clear()
    run("adam_step_", "triton", args)
    assert uploads == []
    moved = list(args)
    moved[1] = [g.clone() for g in args[1]]
    run("adam_step_", "triton", tuple(moved))
    assert uploads == [len(SIZES)], uploads


class _LaunchCounter:
    """Counts kernel launches: stands in for torch.library.wrap_triton in every kernel module."""

    def __init__(self, monkeypatch):
        self.count = 0
        real = torch.library.wrap_triton
        for mod in ("sumsq", "agd", "adam", "sgd", "rmsprop", "adagrad", "lamb", "yellowfin", "multi_tensor"):
            module = __import__(f"agd_kernels.triton_kernels.{mod}", fromlist=["_"])
            if hasattr(module, "wrap_triton"):  # the modules that launch
                monkeypatch.setattr(module, "wrap_triton", self._wrap(real))

    def _wrap(self, real):
        def wrap(kernel):
            self.count += 1
            return real(kernel)
        return wrap


#: name -> (make(params, backend, **options), launches per step for one (device, dtype) group)
OPTIMIZERS = {
    "AGD": (lambda ps, backend, **kw: ak.AGD(ps, bias_mode="follow", backend=backend, **kw), 2),
    "Adam": (lambda ps, backend, **kw: ak.Adam(ps, lr=1e-2, amsgrad=True, backend=backend, **kw), 1),
    "AdamW": (lambda ps, backend, **kw: ak.AdamW(ps, lr=1e-2, backend=backend, **kw), 1),
    "SGD": (lambda ps, backend, **kw: ak.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, backend=backend, **kw), 1),
    "RMSprop": (lambda ps, backend, **kw: ak.RMSprop(ps, lr=1e-2, momentum=0.5, centered=True, backend=backend,
                                                     **kw), 1),
    "Adagrad": (lambda ps, backend, **kw: ak.Adagrad(ps, lr=0.1, backend=backend, **kw), 1),
    "LAMB": (lambda ps, backend, **kw: ak.LAMB(ps, lr=1e-2, backend=backend, **kw), 3),
    "YellowFin": (lambda ps, backend, **kw: ak.YellowFin(ps, lr=1e-2, mu=0.5, backend=backend, **kw), 3),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_launches_per_step(name, monkeypatch):
    """One (device, dtype) group: AGD 2 launches (norms; eta + update), LAMB and YellowFin 3, the rest 1,
    independent of the number of tensors (the model has 8, two of them with 0 and 1 elements)."""
    model = make_model(edge_cases=True)
    opt = OPTIMIZERS[name][0](list(model.parameters()), "triton")
    compute_grads(model, 0)
    counter = _LaunchCounter(monkeypatch)
    opt.step()
    assert counter.count == OPTIMIZERS[name][1]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_telemetry_adds_no_launch(name, monkeypatch):
    """telemetry=True: the tensors' last programs add the sums in the update's own launch (_common.py), so a step
    makes the launches it makes without telemetry."""
    model = make_model(edge_cases=True)
    opt = OPTIMIZERS[name][0](list(model.parameters()), "triton", telemetry=True)
    compute_grads(model, 0)
    counter = _LaunchCounter(monkeypatch)
    opt.step()
    assert counter.count == OPTIMIZERS[name][1]
    assert opt.telemetry().layers["grad_norm"].isfinite().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_trajectory_matches_reference_backend(name, dtype):
    """Three steps of each optimizer on two param groups, triton vs the reference backend in the same dtype,
    both against a float64 reference run: parameters and every state tensor."""
    make = OPTIMIZERS[name][0]
    base = make_model(edge_cases=True)
    runs = {}
    for who, run_dtype, backend in (("triton", dtype, "triton"), ("torch", dtype, "torch"),
                                    ("oracle", torch.float64, "torch")):
        model = clone_model(base, run_dtype)
        runs[who] = (model, make(two_groups(model), backend))
    oracle_model = runs["oracle"][0]
    for k in range(3):
        compute_grads(oracle_model, k)
        grads = [p.grad.clone() for p in oracle_model.parameters()]
        for model, opt in runs.values():
            set_grads(model, grads)
            opt.step()
    (m_t, o_t), (m_r, o_r), (m_o, o_o) = runs["triton"], runs["torch"], runs["oracle"]
    for (pname, p), q, o in zip(m_t.named_parameters(), m_r.parameters(), m_o.parameters()):
        assert_within_2x_reference(p.detach(), q.detach(), o.detach(), name=f"{name} param {pname}")
        for key, value in o_r.state[q].items():
            mine = o_t.state[p][key]
            if isinstance(value, torch.Tensor) and value.shape == q.shape and value.dtype == q.dtype:
                assert_within_2x_reference(mine, value, o_o.state[o][key], name=f"{name} {pname} {key}")
            elif key == "step":
                assert torch.equal(mine, value), f"{name} {pname} step {mine} != {value}"


# ------------------------------------------------------------------------------ torch.compile's view
_TRACE_SCRIPT = """
import json, logging, torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch._subclasses.functional_tensor import dispatch_functionalize
from agd_kernels.triton_kernels import op_table
from tests.op_cases import VARIANTS, make_args, shapes_for
# without a GPU driver the HOP cannot analyse which arguments a kernel writes and says so: it then assumes all
logging.getLogger("torch._higher_order_ops.triton_kernel_wrap").setLevel(logging.ERROR)
functional = torch.ops.higher_order.triton_kernel_wrapper_functional
result = {}
for op in op_table.LAUNCHERS:
    args = make_args(op, shapes_for(op, [7, 4097, 1]), torch.float32, next(iter(VARIANTS[op])))
    graph = make_fx(dispatch_functionalize(getattr(torch.ops.agd_kernels_triton, op)), tracing_mode="fake")(*args)
    nodes = [n for n in graph.graph.nodes if n.op == "call_function"]
    kernels = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"]) for n in nodes if n.target is functional]
    result[op] = dict(kernels=[k.fn.__name__ for k in kernels],
                      opaque=[str(n.target) for n in nodes if "agd_kernels" in str(n.target)])
print(json.dumps(result))
"""


def test_traced_ops_decompose_into_triton_launches():
    """What torch.compile sees: each triton_op, traced with fake tensors under functionalization (as AOTAutograd
    does), becomes per-tensor triton_kernel_wrapper_functional nodes and no opaque call. Run in a subprocess
    without TRITON_INTERPRET: interpreted kernels cannot be traced."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _TRACE_SCRIPT], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    traced = json.loads(out.stdout.strip().splitlines()[-1])
    tensors = 3 + 4  # shapes_for adds 4 conv weights to the sliced ops' 3 tensors
    expected = {
        "slice_sumsq_": ["_slice_sumsq_tensor_kernel"] * tensors,
        "agd_step_": ["_agd_update_tensor_kernel"] * tensors,
        "adam_step_": ["_adam_tensor_kernel"] * 3,
        "sgd_step_": ["_sgd_tensor_kernel"] * 3,
        "rmsprop_step_": ["_rmsprop_tensor_kernel"] * 3,
        "adagrad_step_": ["_adagrad_tensor_kernel"] * 3,
        "lamb_moments_": ["_lamb_moments_tensor_kernel"] * 3,
        "lamb_apply_": ["_lamb_apply_tensor_kernel"] * 3,
        "yellowfin_stats_": ["_yellowfin_stats_tensor_kernel"] * 3,
        "yellowfin_tune_": ["_yellowfin_tune_kernel"],
        "yellowfin_apply_": ["_yellowfin_apply_tensor_kernel"] * 3,
        "stochastic_round_": ["_stochastic_round_tensor_kernel"] * 3,
    }
    assert set(traced) == set(expected)
    for op, seen in traced.items():
        assert seen["opaque"] == [], f"{op} left opaque calls in the graph: {seen['opaque']}"
        assert seen["kernels"] == expected[op], f"{op}: {seen['kernels']}"


# ------------------------------------------------------------------------------ bad input
def _adam_args():
    """adam_step_'s arguments as a list (position 17: telemetry) over tensors of 3 and 5 elements."""
    return list(make_args("adam_step_", shapes_for("adam_step_", [3, 5]), torch.float32, "adam", seed=3))


_TELEMETRY_REFUSED = (r"adam_step_: telemetry must be a contiguous float32 tensor of shape \(2, 5\) \(one row of "
                      r"\('w_sq', 'g_sq', 'w_g', 'd_sq', 'w_d'\) per parameter\); got torch.")


@pytest.mark.parametrize("corrupt, match", [
    (lambda a: a[2].pop(), r"exp_avgs has 1 tensors; expected one per tensor of params \(2\)"),
    (lambda a: a[3].__setitem__(1, a[3][1].double()), r"exp_avg_sqs\[1\] is torch.float64\[5\]"),
    (lambda a: a[1].__setitem__(0, torch.zeros(4)), r"grads\[0\] is torch.float32\[4\]"),
    (lambda a: a[5].__setitem__(0, torch.zeros(1, dtype=torch.float64)), r"state_steps\[0\] is torch.float64"),
    (lambda a: a[2].__setitem__(1, torch.zeros(10)[::2]), r"exp_avgs\[1\] has strides \(2,\); expected params"),
    (lambda a: [a[pos].__setitem__(1, torch.zeros(10)[::2]) for pos in range(4)], r"params\[1\] must be dense"),
    # telemetry: the reference's check (agd_kernels/reference/telemetry.py), before anything is written
    (lambda a: a.__setitem__(17, torch.zeros(3, 5)), _TELEMETRY_REFUSED + r"float32 of shape \(3, 5\)"),
    (lambda a: a.__setitem__(17, torch.zeros(2, 5, dtype=torch.float64)), _TELEMETRY_REFUSED + r"float64"),
    (lambda a: a.__setitem__(17, torch.zeros(5, 2).t()), _TELEMETRY_REFUSED + r"float32 of shape \(2, 5\)"),
], ids=["short-list", "state-dtype", "grad-shape", "step-dtype", "strided-state", "strided-everywhere",
        "telemetry-shape", "telemetry-dtype", "telemetry-strided"])
def test_bad_input_raises_and_changes_nothing(corrupt, match):
    _assert_refused(_adam_args(), corrupt, match)


def _assert_refused(args, corrupt, match):
    """adam_step_ on `args` changed by `corrupt` raises ValueError matching `match` and writes nothing
    (NaNs, as in the master-weights samples' model_params, compare equal to themselves)."""
    corrupt(args)
    before = _clone_args(args)
    with pytest.raises(ValueError, match=match):
        run("adam_step_", "triton", args)
    for pos in mutated_positions("adam_step_"):  # _flat: telemetry is one tensor, or None
        for a, b in zip(_flat(args[pos]), _flat(before[pos])):
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def _master_args():
    return make_args("adam_step_", shapes_for("adam_step_", [3, 5]), torch.bfloat16, "master-weights", seed=3)


# Mixed precision: the rules of csrc/checks.h check_grads / check_grads_and_model_params, with their messages.
@pytest.mark.parametrize("corrupt, match", [
    (lambda a: a[16].clear(), r"grads are torch.bfloat16 beside torch.float32 params; pass the model's "
                              r"torch.bfloat16 parameters as model_params"),
    (lambda a: a[1].__setitem__(slice(None), [g.float() for g in a[1]]),
     r"model_params needs float32 params \(the masters\) and float16 or bfloat16 grads; got torch.float32 params "
     r"and torch.float32 grads"),
    (lambda a: a[1].__setitem__(1, a[1][1].half()), r"grads\[1\] is torch.float16 but grads\[0\] is torch.bfloat16; "
                                                     r"one call takes one gradient dtype"),
    (lambda a: a[16].pop(), r"model_params has 1 tensors, params has 2; pass one per param, or none"),
    (lambda a: a[16].__setitem__(0, a[16][0].half()), r"model_params\[0\] is torch.float16\[3\] on cpu; expected "
                                                       r"torch.bfloat16\[3\]"),
    (lambda a: a[16].__setitem__(1, torch.zeros(10, dtype=torch.bfloat16)[::2]),
     r"model_params\[1\] has strides \(2,\); expected params\[1\]'s \(1,\)"),
    (lambda a: [t.__setitem__(slice(None), [x.to(dtype) for x in t])
                for t, dtype in zip(a[:4], (torch.bfloat16, torch.float16, torch.bfloat16, torch.bfloat16))],
     r"grads\[0\] is torch.float16, params\[0\] is torch.bfloat16; grads must have the params' dtype, or be "
     r"float16 or bfloat16 beside float32 params"),
], ids=["no-model-params", "fp32-grads", "two-grad-dtypes", "short-model-params", "model-dtype", "model-strides",
        "fp16-beside-bf16"])
def test_bad_mixed_input_raises_and_changes_nothing(corrupt, match):
    _assert_refused(_master_args(), corrupt, match)


TELEMETRY_OPS = ["agd_step_", "lamb_moments_", "lamb_apply_", "yellowfin_apply_"]


@pytest.mark.parametrize("bad", [lambda n: torch.zeros(n + 1, 5), lambda n: torch.zeros(n, 5, dtype=torch.float64),
                                 lambda n: torch.zeros(5, n).t()], ids=["shape", "dtype", "strided"])
@pytest.mark.parametrize("op", TELEMETRY_OPS)
def test_bad_telemetry_raises_and_changes_nothing(op, bad):
    """The other telemetry ops refuse a bad buffer as adam_step_ does (reference.telemetry.check), before
    anything is written."""
    args = list(make_args(op, shapes_for(op, [3, 5]), torch.float32, "telemetry"))
    n = len(args[0])
    args[-1] = bad(n)
    before = _clone_args(args)
    with pytest.raises(ValueError, match=rf"{op}: telemetry must be a contiguous float32 tensor of shape \({n}, 5\)"):
        run(op, "triton", tuple(args))
    for pos in mutated_positions(op):
        for a, b in zip(_flat(args[pos]), _flat(before[pos])):
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def test_yellowfin_skipped_step_adds_no_telemetry():
    """A step skipped for a non-finite Σg² (found_inf clear: op_cases' telemetry-found-inf covers the other
    skip) adds nothing, as the reference's step_skipped says."""
    op = "yellowfin_apply_"
    args = list(make_args(op, shapes_for(op, SIZES), torch.float32, "non-finite"))
    assert ref_yellowfin.step_skipped(args[5], args[8]).item()  # the variant skips
    args[-1] = buffer = torch.full((len(args[0]), 5), 0.25)  # telemetry, the last argument
    before = _clone_args(args)
    run(op, "triton", tuple(args))
    assert torch.equal(buffer, torch.full_like(buffer, 0.25))
    assert all(torch.equal(a, b) for a, b in zip(args[0], before[0]))


@pytest.mark.parametrize("op, pos", [("lamb_moments_", 6), ("lamb_apply_", 7)])
@pytest.mark.parametrize("norms", [torch.zeros(5, dtype=torch.float64), torch.zeros(6, dtype=torch.bfloat16),
                                   torch.zeros(12, dtype=torch.float64)[::2]], ids=["numel", "dtype", "strided"])
def test_lamb_bad_norms_raise_and_change_nothing(op, pos, norms):
    args = list(make_args(op, shapes_for(op, [3, 5, 1]), torch.float32, "apex-clipped"))
    args[pos] = norms
    before = _clone_args(args)
    with pytest.raises(ValueError, match=rf"{op}: norms must be a contiguous 1-D float64 \(or float32\) tensor of 2 "
                                         r"slots per tensor of params \(6\)"):
        run(op, "triton", tuple(args))
    for p in mutated_positions(op):
        for a, b in zip(_flat(args[p]), _flat(before[p])):
            assert torch.equal(a, b)


def test_agd_needs_contiguous_weights():
    args = make_args("agd_step_", [(6, 4)], torch.float32, "plain")
    args[0][0] = torch.zeros(4, 6).t()
    args[1][0] = torch.zeros(4, 6).t()
    with pytest.raises(ValueError, match=r"params\[0\] must be contiguous"):
        run("agd_step_", "triton", args)
