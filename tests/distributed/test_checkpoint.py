"""torch.distributed.checkpoint (DCP) round trips, on FSDP2 and on DDP, for every optimizer.

harness.RESUME_AT steps; `get_state_dict(model, opt)` + `dcp.save`; a fresh model (another seed) and a
fresh optimizer; `get_state_dict` + `dcp.load` + `set_state_dict`; the remaining steps. The result
must be bitwise the uninterrupted run's: both runs execute the same kernels on the same shards in the
same process, so anything the checkpoint loses (a moment, a step counter, YellowFin's tuner) shows.
"""
from __future__ import annotations

import pytest
import torch

from tests.distributed import harness as h

# YellowFin-empty-first: the parameter order reversed, so the first parameter (where YellowFin may keep
# global state) has an empty shard on rank 1 under FSDP2.
CASES = [pytest.param(topology, case, id=f"{topology}-{case}")
         for topology in ("fsdp", "ddp") for case in [*h.CASES, *h.CHECKPOINT_EXTRA]]


def _assert_same(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys()
    diffs = {n: (actual[n].double() - expected[n].double()).abs().max().item() if actual[n].numel() else 0.0
             for n in expected if not torch.equal(actual[n], expected[n])}
    assert not diffs, f"{what}: " + ", ".join(f"{n} differs by up to {d:.3g}" for n, d in diffs.items())


@pytest.mark.parametrize("topology, case", CASES)
def test_dcp_resume_equals_uninterrupted(jobs, topology, case):
    ranks = jobs.get("dcp-cpu").case(f"{topology}/{case}")
    for rank, r in enumerate(ranks):
        _assert_same(r["loaded"], r["saved"], f"rank {rank}: parameters after dcp.load + set_state_dict")
        _assert_same(r["resumed"], r["straight"],
                     f"{case} on {topology}, rank {rank}: {h.RESUME_AT} steps + DCP round trip + "
                     f"{h.STEPS - h.RESUME_AT} steps vs {h.STEPS} uninterrupted steps")


@pytest.mark.parametrize("case", h.MASTER_CASES)
def test_dcp_resume_with_master_weights(jobs, case):
    """bf16 parameters with master_weights=True on FSDP2: the fp32 masters go through DCP and back
    unrounded, so the resumed run is bitwise the uninterrupted one."""
    ranks = jobs.get("fsdp-master").case(f"dcp/{case}")
    for rank, r in enumerate(ranks):
        _assert_same(r["loaded"], r["saved"], f"rank {rank}: parameters after dcp.load + set_state_dict")
        _assert_same(r["resumed"], r["straight"], f"{case} with master weights on FSDP2, rank {rank}: resumed")
