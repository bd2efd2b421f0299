"""The fewest collectives per step() (docs/design.md rule 8): on FSDP2, one all-reduce for AGD, LAMB and
YellowFin (two for LAMB with its global clip), none for Adam, AdamW, SGD, RMSprop and Adagrad; with
replicated (DDP) parameters none at all.

Counted around optimizer.step() alone (FSDP's all-gathers and reduce-scatters run in forward and
backward), two ways:
- c10d's per-process-group collective sequence numbers, summed over every group, in the very runs
  the exactness tests check (all harness.STEPS steps; no instrumentation that could change the path);
- torch's CommDebugMode over harness.COUNT_STEPS steps of a second run, which names each collective
  the dispatcher runs (c10d ops behind torch.distributed.all_reduce and ProcessGroup.allreduce,
  functional collectives, the ones DTensor issues itself), so the kind is checked too.
"""
from __future__ import annotations

import pytest

from tests.distributed import harness as h

MATRIX = [pytest.param(case, backend, id=f"{case}-{backend}") for backend in h.BACKENDS for case in h.CASES]


def _is_all_reduce(op: str) -> bool:
    return "allreduce" in op or "all_reduce" in op


def _check(result: dict, expected: int, what: str) -> None:
    counts = result["counts"]
    assert counts == [expected] * h.STEPS, (
        f"{what}: collectives issued by each of {h.STEPS} step() calls (c10d sequence numbers): {counts}; "
        f"expected {expected} per step")
    for step, ops in enumerate(result["ops"]):
        ok = sum(ops.values()) == expected and all(map(_is_all_reduce, ops))
        assert ok, f"{what}, step {step}: step() issued {ops or 'no collectives'} (CommDebugMode); " \
                   f"expected {expected} all-reduce(s)"


@pytest.mark.parametrize("case, backend", MATRIX)
def test_fsdp2_step_issues_the_fewest_collectives(jobs, case, backend):
    for rank, result in enumerate(jobs.get(f"fsdp-{backend}").case(f"train/{case}")):
        _check(result, h.CASES[case].collectives, f"{case} (backend={backend}) on FSDP2, rank {rank}")


@pytest.mark.parametrize("case, backend", MATRIX)
def test_ddp_step_issues_no_collectives(jobs, case, backend):
    """Replicated parameters hold whole tensors: their sums need no reduction (an all-reduce of them
    would also count every element WORLD times)."""
    for rank, result in enumerate(jobs.get("ddp").case(f"train/{case}-{backend}")):
        _check(result, 0, f"{case} (backend={backend}) on DDP, rank {rank}")
