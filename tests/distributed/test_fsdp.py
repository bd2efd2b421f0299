"""Every optimizer on FSDP2 (DTensor parameters, docs/design.md rule 8) gives the single-process result.

Two ranks, each training on its half of every batch, against one process on the whole batch: after
harness.STEPS steps the gathered parameters are within the derived tolerance of the float64
single-process run (harness.reference). The model has uneven shards (7 and 3 rows), a 3x3 conv weight,
and a one-row weight whose second shard is empty.

The optimizers that need whole-tensor sums (AGD, LAMB, YellowFin) must get them from one all-reduce
through agd_kernels.distributed.all_reduce_: with it replaced by a no-op, each rank uses its per-shard
sums, and the result must be far off (else the exactness test could not tell).
"""
from __future__ import annotations

import pytest
import torch

from tests.distributed import harness as h

TRAIN = [pytest.param(case, backend, id=f"{case}-{backend}") for backend in h.BACKENDS for case in h.CASES]
NORMS = [pytest.param(case, backend, id=f"{case}-{backend}") for backend in h.BACKENDS for case in h.NORM_CASES]


@pytest.mark.parametrize("case, backend", TRAIN)
def test_fsdp2_matches_single_process(jobs, case, backend):
    ranks = jobs.get(f"fsdp-{backend}").case(f"train/{case}")
    h.reference(case, backend).check(ranks[0]["params"], f"{case} (backend={backend}) on FSDP2, 2 ranks")
    for name, t in ranks[0]["params"].items():
        assert torch.equal(t, ranks[1]["params"][name]), f"{name}: the ranks gathered different full tensors"


@pytest.mark.parametrize("case, backend", NORMS)
def test_without_the_all_reduce_results_are_wrong(jobs, case, backend):
    ranks = jobs.get(f"fsdp-{backend}").case(f"no-collective/{case}")
    calls = ranks[0]["calls"]
    assert calls, (f"{case}: agd_kernels.distributed.all_reduce_ was never called in {h.STEPS} steps on FSDP2; "
                   "the optimizer must reduce its partial sums through it")
    ratio, name = h.reference(case, backend).worst_ratio(ranks[0]["params"])
    assert ratio > 100, (f"{case} (backend={backend}) with all_reduce_ a no-op ({len(calls)} calls, buffers "
                         f"{sorted(set(calls))}) is within {ratio:.3g}x the tolerance of the single-process run "
                         f"(worst: {name}): the exactness test cannot see per-shard norms")


def test_agd_init_weights_draws_the_full_tensor(jobs):
    """AGD.init_weights() on FSDP2 = single-process init_weights after the same torch.manual_seed; each
    rank keeps its shard (same DTensor objects, placements and local shapes)."""
    ranks = jobs.get("fsdp-cpu").case("init_weights")
    with h.one_thread():
        model = h.make_model()
        opt = h.make_optimizer("AGD", model, "cpu", named=True)
        torch.manual_seed(h.INIT_SEED)
        opt.init_weights()
    expected = {n: p.detach() for n, p in model.named_parameters()}
    for rank, result in enumerate(ranks):
        assert not result["changed"], f"rank {rank}: init_weights replaced or resharded parameters: {result['changed']}"
        for name, want in expected.items():
            got = result["params"][name]
            assert torch.equal(got, want), (f"{name}: FSDP2 init_weights differs from single-process by "
                                            f"{(got - want).abs().max().item():.3g}")
            shard = torch.chunk(want, h.WORLD, dim=0)  # FSDP2's Shard(0) layout
            want_local = shard[rank] if rank < len(shard) else want[:0]
            assert torch.equal(result["local"][name], want_local), f"rank {rank}: local shard of {name} is wrong"
    # The draw is orthogonal per tap at the target scale: a sanity check that the seed reached it.
    assert not torch.equal(expected["conv.weight"], h.make_model().conv.weight.detach())


def test_fsdp2_triton_agd(jobs):
    """The Triton backend once (interpreted on CPU tensors, so one optimizer): AGD on FSDP2, exact and
    with its one all-reduce per step."""
    from agd_kernels import _backends
    reason = _backends.available("cpu")["triton"]
    if reason is not None:
        pytest.skip(f"Triton cannot run on CPU tensors here: {reason}")
    ranks = jobs.get("fsdp-triton").case("train/AGD")
    # Tolerance from the reference backend's fp32 runs (as tests/tolerance.py's 2x-the-reference rule):
    # interpreted Triton single-process runs would cost more than the distributed one.
    h.reference("AGD", "torch").check(ranks[0]["params"], "AGD (backend=triton) on FSDP2, 2 ranks")
    assert ranks[0]["counts"] == [1] * h.STEPS, ranks[0]["counts"]


def _topology_cases(topologies, cases) -> list:
    return [pytest.param(topology, case, id=f"{topology}-{case}") for topology in topologies for case in cases]


HSDP = _topology_cases(h.HSDP_MESHES, h.NORM_CASES)


@pytest.mark.parametrize("topology, case", HSDP)
def test_hsdp_matches_single_process(jobs, topology, case):
    """HSDP (2-D mesh: replicate, shard): on "2x1" every parameter is a replica on both ranks, so its
    sums must not be added over the replicate dim; "1x2" shards as FSDP does, on the mesh's second dim."""
    ranks = jobs.get("fsdp-cpu").case(f"{topology}/{case}")
    h.reference(case, "cpu").check(ranks[0]["params"], f"{case} on {topology}")
    for name, t in ranks[0]["params"].items():
        assert torch.equal(t, ranks[1]["params"][name]), f"{name}: the ranks gathered different full tensors"


@pytest.mark.parametrize("case", h.NORM_CASES)
def test_sharded_and_replicated_parameters_in_one_optimizer(jobs, case):
    """`out` stays plain (a replica on both ranks) beside sharded layers: its partial sums must count once
    in the one all-reduce (rank 1 zeroes them), and the step still issues the FSDP2 case's collectives."""
    ranks = jobs.get("fsdp-cpu").case(f"fsdp-mixed/{case}")
    h.reference(case, "cpu").check(ranks[0]["params"], f"{case} on sharded + replicated parameters")
    for name, t in ranks[0]["params"].items():
        assert torch.equal(t, ranks[1]["params"][name]), f"{name}: the ranks hold different parameters"
    fsdp = jobs.get("fsdp-cpu").case(f"train/{case}")
    assert ranks[0]["counts"] == fsdp[0]["counts"], "a replicated parameter must not add a collective"


@pytest.mark.parametrize("case", h.MASTER_CASES)
def test_fsdp2_bf16_master_weights(jobs, case):
    """bf16 parameters with master_weights=True on FSDP2: every master is an fp32 DTensor placed as its
    parameter, whose local shard is the master's rounded; and the run tracks the fp32 single-process one
    as closely as single-process bf16 runs with master weights do (2x their relative displacement error,
    as the fp32 tolerances above allow 2x), and within the bound of tests/optim/test_master_weights.py."""
    from tests.optim.test_master_weights import BOUND, displacement_error
    ranks = jobs.get("fsdp-master").case(f"train/{case}")
    for rank, result in enumerate(ranks):
        wrong = [n for n, ok in result["checks"].items() if not ok]
        assert not wrong, f"rank {rank}: masters of {wrong} are not fp32 DTensors that round to the local shard"
    with h.one_thread():
        start = h.make_model().state_dict()
        fp32 = h.train_single(case, "cpu")
        singles = [h.train_single(case, "cpu", v, **h.MASTER) for v in h.FP32_VARIANTS]

    def error(params):
        return displacement_error(*([run[n] for n in start] for run in (params, fp32, start)))
    single = max(map(error, singles))
    distributed = error(ranks[0]["params"])
    assert distributed <= min(2 * single, BOUND), (
        f"{case}: bf16 + master weights on FSDP2 is {distributed:.4f} (relative displacement) from the fp32 run; "
        f"single-process bf16 + master weights runs are up to {single:.4f}")


ROUNDING = _topology_cases(h.ROUNDING_TOPOLOGIES, h.ROUNDING_CASES)


@pytest.mark.parametrize("topology, case", ROUNDING)
def test_stochastic_rounding_on_shards_draws_the_single_process_bits(jobs, topology, case):
    """bf16 parameters with stochastic_rounding=True, sharded on dim 0 (FSDP2; HSDP 2x1: replicas; 1x2:
    shards on the mesh's second dim), fed the same full gradients as one process: each shard rounds its
    elements with the bits of their index in the whole tensor, so the elementwise optimizers give the
    single-process bits exactly. AGD's per-tap sums add up over shards in another order, so its fp32
    update may differ in the last bits and flip a rare rounding: at most one bf16 step per element, on at
    most 1% of the elements. Rounding with each shard's local indices instead fails every sharded case
    here (AGD's by up to 6 bf16 steps after harness.STEPS steps)."""
    ranks = jobs.get("fsdp-master").case(f"rounding/{topology}/{case}")
    with h.one_thread():
        model = h.make_model(torch.bfloat16)
        expected = h.rounding_run(model, h.make_optimizer(case, model, "cpu", stochastic_rounding=True))
    start = h.make_model(torch.bfloat16)
    for rank, result in enumerate(ranks):
        for name, want in expected.items():
            got = result["params"][name]
            assert not torch.equal(want, dict(start.named_parameters())[name].detach()), f"{name} never moved"
            if case != "AGD":
                assert torch.equal(got, want), (f"{case} on {topology}, rank {rank}: {name} differs from the "
                                                f"single-process run in {(got != want).sum().item()} elements")
                continue
            ulps = (got.view(torch.int16).int() - want.view(torch.int16).int()).abs()
            assert ulps.max() <= 1 and (ulps > 0).float().mean() <= 0.01, (
                f"AGD on {topology}, rank {rank}: {name} differs from the single-process run in "
                f"{(ulps > 0).sum().item()} of {ulps.numel()} elements, by up to {ulps.max().item()} bf16 steps")


TELEMETRY = _topology_cases(h.TELEMETRY_TOPOLOGIES, h.TELEMETRY_CASES)


@pytest.mark.parametrize("topology, case", TELEMETRY)
def test_sharded_telemetry_equals_one_process(jobs, topology, case):
    """opt.telemetry() after harness.STEPS steps on FSDP2 (sharded; "fsdp-mixed": `out` a plain replica
    beside sharded layers; "hsdp-2x1": every parameter a replica) equals the single-process run's, on both
    ranks: shard sums added by the one all-reduce, replicas counted once. The runs' gradients add up in
    another order, so values agree to 1e-4 relative (a replica counted twice would be off by 2x, a missing
    all-reduce by the other shard's share)."""
    ranks = jobs.get("fsdp-cpu").case(f"telemetry/{topology}/{case}")
    with h.one_thread():
        model = h.make_model()
        opt = h.make_optimizer(case, model, "cpu", named=True, telemetry=True)
        for k in range(h.STEPS):
            opt.zero_grad(set_to_none=True)
            for r in range(h.WORLD):
                (h.local_loss(model, k, r) / h.WORLD).backward()
            opt.step()
        expected = h.telemetry_layers(opt)
    for rank, result in enumerate(ranks):
        got = result["layers"]
        assert got.keys() == expected.keys()
        for layer, stats in expected.items():
            for stat, want in stats.items():
                # The angle comes from w_sq·d_sq − w_d², which cancels for near-parallel w and Δw (a 1-element
                # bias is exactly parallel): fp32 sums bound its error by ~√(2·eps32)·update_ratio = 5e-4·ratio
                # (docs/telemetry.md, "Statistics"), however the sums were added up.
                floor = 5e-4 * stats["update_ratio"] if stat == "angular_update" else 0.0
                assert got[layer][stat] == pytest.approx(want, rel=1e-4, abs=1e-9 + floor, nan_ok=True), (
                    f"{case} on {topology}, rank {rank}: {layer} {stat} = {got[layer][stat]}, one process: {want}")
