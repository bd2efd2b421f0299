"""The Triton backend on a real GPU: what the interpreter (tests/backends/test_triton.py) and the AOT compile
check (test_triton_aot.py) cannot confirm. Marked `cuda`: skipped without a GPU.

- the op-table matrix on CUDA tensors (compiled kernels, round-to-nearest bf16, real concurrency of the
  programs: the arrival counters and the last-program reductions), with one tensor above a million
  elements and 300 small tensors in one launch, and misaligned tensors (the scalar-load table variant);
- the same bits from run to run for the reductions (fixed order, whatever order the programs finish in);
- a full optimizer step captured in a CUDA graph and replayed with lr changed between replays;
- kernel launches per step, counted by the profiler;
- torch.compile traces through the ops (triton_op + wrap_triton) and opcheck passes on each of them;
- `auto` picks Triton on CUDA tensors when the CUDA extension is not built.
"""
from __future__ import annotations

import pytest
import torch

import agd_kernels as ak
from agd_kernels import _backends, _ext, ops
from agd_kernels.triton_kernels import op_table
from tests.backends.test_triton import OPTIMIZERS, check_agd_edge_case, check_yellowfin_tune
from tests.models import clone_model, compute_grads, make_model, set_grads, two_groups
from tests.op_cases import (MANY_SMALL, VARIANTS, _clone_args, _flat, check_backend, make_args, mutated_positions, op_dtypes,
                            run, shapes_for)
from tests.tolerance import DTYPE_IDS, assert_within_2x_reference

pytestmark = pytest.mark.cuda

CUDA = "cuda"
SIZES = [1, 7, 1000, 4097, 3, 0, 1_000_003]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LIST_OPS = [op for op in op_table.LAUNCHERS if op != "yellowfin_tune_"]


def _gpu_grads(steps, edge_cases: bool = False) -> list[list[torch.Tensor]]:
    """Gradients of tests/models.py's model at each step, computed on the CPU (its batches are CPU tensors)
    in float64 and moved to the GPU."""
    model = make_model(torch.float64, edge_cases=edge_cases)
    grads = []
    for k in steps:
        compute_grads(model, k)
        grads.append([p.grad.to(CUDA) for p in model.parameters()])
    return grads


def _cases(ops_, dtypes):
    return [pytest.param(op, variant, dtype, id=f"{op}-{variant}-{DTYPE_IDS[dtype]}")
            for op in ops_ for variant in VARIANTS[op] for dtype in op_dtypes(op, dtypes, variant)]


@pytest.mark.parametrize("op, variant, dtype", _cases(LIST_OPS, DTYPES))
def test_op_matches_reference_on_gpu(op, variant, dtype):
    check_backend(op, "triton", shapes_for(op, SIZES), dtype, variant, device=CUDA)


@pytest.mark.parametrize("op, variant, dtype", _cases(["slice_sumsq_", "agd_step_"], DTYPES))
def test_matrices_only_on_gpu(op, variant, dtype):
    check_backend(op, "triton", [(n, 1) for n in SIZES], dtype, variant, device=CUDA)


@pytest.mark.parametrize("op", LIST_OPS)
def test_many_small_tensors_on_gpu(op):
    check_backend(op, "triton", shapes_for(op, MANY_SMALL), torch.float32, next(iter(VARIANTS[op])), device=CUDA)


@pytest.mark.parametrize("variant", list(VARIANTS["yellowfin_tune_"]))
def test_yellowfin_tune_on_gpu(variant):
    check_yellowfin_tune(variant, device=CUDA)


@pytest.mark.parametrize("nan", [False, True], ids=["finite", "nan-gradient"])
def test_agd_edge_shapes_on_gpu(nan):
    check_agd_edge_case(nan, device=CUDA)


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of t whose data starts 2 elements into its storage: not 16-byte aligned for any dtype."""
    buf = torch.empty(t.numel() + 2, dtype=t.dtype, device=t.device)
    view = buf[2:].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.parametrize("dtype", DTYPES, ids=[DTYPE_IDS[d] for d in DTYPES])
def test_misaligned_tensors_take_the_scalar_path(dtype):
    """Views that do not start on a 16-byte boundary (e.g. parameters carved from a flat buffer) must not be
    given vector loads: the launcher detects them and launches the ALIGN=1 variant."""
    args = make_args("adam_step_", shapes_for("adam_step_", [4097, 1000, 7]), dtype, "adamw-amsgrad", device=CUDA)
    lists = range(5)  # params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs
    got = tuple([_misaligned(t) for t in a] if i in lists else a for i, a in enumerate(args))
    ref, oracle = _clone_args(args), _clone_args(args, torch.float64)
    for backend, a in (("triton", got), ("torch", ref), ("torch", oracle)):
        run("adam_step_", backend, a)
    for pos in mutated_positions("adam_step_"):
        for g, r, o in zip(_flat(got[pos]), _flat(ref[pos]), _flat(oracle[pos])):
            assert_within_2x_reference(g, r, o, name=f"misaligned adam_step_ arg {pos}")


@pytest.mark.parametrize("op", ["slice_sumsq_", "yellowfin_stats_", "lamb_moments_"])
def test_reductions_have_the_same_bits_every_run(op):
    """Partial sums are combined in block order by the last program to arrive, so thousands of programs
    finishing in any order give the same bits."""
    args = make_args(op, shapes_for(op, [1_000_003, 77_777, 5]), torch.float32, next(iter(VARIANTS[op])),
                     device=CUDA)
    outs = []
    for _ in range(3):
        a = _clone_args(args)
        run(op, "triton", a)
        outs.append([t for pos in mutated_positions(op) for t in (a[pos] if isinstance(a[pos], list) else [a[pos]])])
    for out in outs[1:]:
        assert all(torch.equal(x, y) for x, y in zip(out, outs[0]))


# ------------------------------------------------------------------------------ CUDA graphs
@pytest.mark.parametrize("name", ["Adam", "SGD", "AGD", "LAMB", "YellowFin"])
def test_cuda_graph_replay_with_changing_lr(name):
    """Warm up eagerly (builds and caches the pointer tables), capture one step, then replay it with new
    gradients copied into the captured .grad tensors and a new lr filled into the lr tensor; an eager
    optimizer of the reference backend steps on the same gradients and lr."""
    base = make_model().to(CUDA)
    models = {who: clone_model(base) for who in ("graph", "eager")}
    lr_of = {"Adam": 1e-2, "SGD": 0.1, "LAMB": 1e-2, "YellowFin": 1e-2}
    opts = {}
    for who, backend in (("graph", "triton"), ("eager", "torch")):
        params = list(models[who].parameters())
        if name == "AGD":
            opts[who] = ak.AGD(params, bias_mode="follow", backend=backend)
        else:
            lr = torch.tensor(lr_of[name], device=CUDA)
            cls = {"Adam": ak.Adam, "SGD": ak.SGD, "LAMB": ak.LAMB, "YellowFin": ak.YellowFin}[name]
            extra = {"momentum": 0.9} if name == "SGD" else {}
            opts[who] = cls(params, lr=lr if name != "YellowFin" else lr_of[name], backend=backend, **extra)
    grads_at = [[g.float() for g in grads] for grads in _gpu_grads(range(6))]
    graph_params = list(models["graph"].parameters())
    for p, g in zip(graph_params, grads_at[0]):
        p.grad = g.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opts["graph"].step()  # warm-up step 0: tables built here, outside the capture
    torch.cuda.current_stream().wait_stream(side)
    for p, g in zip(models["eager"].parameters(), grads_at[0]):
        p.grad = g.clone()
    opts["eager"].step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opts["graph"].step()
    for k, lr in zip(range(1, 6), (0.02, 0.005, 0.02, 0.001, 0.01)):
        for who in ("graph", "eager"):
            group = opts[who].param_groups[0]
            if name not in ("AGD", "YellowFin"):
                group["lr"].fill_(lr)  # a tensor lr is read by the kernels: fill it, never replace it
        for p, g in zip(graph_params, grads_at[k]):
            p.grad.copy_(g)
        graph.replay()
        for p, g in zip(models["eager"].parameters(), grads_at[k]):
            p.grad = g.clone()
        opts["eager"].step()
    torch.cuda.synchronize()
    for p, q in zip(graph_params, models["eager"].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ launches
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_kernel_launches_per_step(name):
    """Every CUDA kernel of the second step (the first one builds tables and constants): AGD 2, LAMB and
    YellowFin 3, the Adam family, SGD, RMSprop and Adagrad 1, for one (device, dtype) group."""
    model = make_model().to(CUDA)
    opt = OPTIMIZERS[name][0](list(model.parameters()), "triton")
    set_grads(model, _gpu_grads([0])[0])
    opt.step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        opt.step()
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
    assert len(kernels) == OPTIMIZERS[name][1], kernels


# ------------------------------------------------------------------------------ torch.compile / opcheck
@pytest.mark.parametrize("op", list(op_table.LAUNCHERS))
def test_opcheck(op):
    args = make_args(op, shapes_for(op, [0, 1, 7, 4097]), torch.float32, next(iter(VARIANTS[op])), device=CUDA)
    torch.library.opcheck(getattr(torch.ops.agd_kernels_triton, op).default, args)


def test_torch_compile_sees_the_triton_kernels():
    """Compiled with Inductor, the op decomposes into its wrap_triton launches (the per-tensor kernels appear
    in the generated code) and gives the eager result."""
    from torch._inductor.utils import run_and_get_code

    args = make_args("adam_step_", shapes_for("adam_step_", [7, 4097]), torch.float32, "adamw-amsgrad", device=CUDA)
    eager, compiled = _clone_args(args), _clone_args(args)
    run("adam_step_", "triton", eager)

    def step(*a):
        torch.ops.agd_kernels_triton.adam_step_(*a)

    _, code = run_and_get_code(torch.compile(step, fullgraph=True), *compiled)
    assert any("_adam_tensor_kernel" in c for c in code), "Inductor did not see the Triton kernel"
    for pos in mutated_positions("adam_step_"):
        for c, e in zip(_flat(compiled[pos]), _flat(eager[pos])):
            torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-7)


def test_auto_picks_triton_without_the_cuda_extension(monkeypatch):
    monkeypatch.setattr(_ext, "has_cuda_part", lambda: False)
    monkeypatch.setattr(_backends, "_RESOLVED", {})
    for op in ops.SCHEMAS:
        name, _ = _backends.resolve(op, torch.device(CUDA), ops.RESOLVE_DTYPE.get(op, torch.float32), "auto")
        assert name == "triton", op


def test_optimizer_trajectories_on_gpu():
    """Three steps of every optimizer, triton vs the reference backend on the GPU, both against float64."""
    grads_at = _gpu_grads(range(3), edge_cases=True)
    for name, (make, _) in OPTIMIZERS.items():
        base = make_model(edge_cases=True)
        runs = {who: clone_model(base, dtype).to(CUDA) for who, dtype in
                (("triton", torch.float32), ("torch", torch.float32), ("oracle", torch.float64))}
        opts = {who: make(two_groups(m), "triton" if who == "triton" else "torch") for who, m in runs.items()}
        for grads in grads_at:
            for who, m in runs.items():
                set_grads(m, grads)
                opts[who].step()
        for (pname, p), q, o in zip(runs["triton"].named_parameters(), runs["torch"].parameters(),
                                    runs["oracle"].parameters()):
            assert_within_2x_reference(p.detach(), q.detach(), o.detach(), name=f"{name} {pname}")
