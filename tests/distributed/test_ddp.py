"""Every optimizer on DDP (replicated plain tensors): the replicas stay bitwise identical and equal the
single-process run on the whole batch within the derived tolerance (harness.reference)."""
from __future__ import annotations

import pytest
import torch

from tests.distributed import harness as h

TRAIN = [pytest.param(case, backend, id=f"{case}-{backend}") for backend in h.BACKENDS for case in h.CASES]


def _assert_replicas_equal(ranks: list[dict], what: str) -> None:
    for name, t in ranks[0]["params"].items():
        other = ranks[1]["params"][name]
        assert torch.equal(t, other), f"{what}: replicas of {name} differ by {(t - other).abs().max().item():.3g}"


@pytest.mark.parametrize("case, backend", TRAIN)
def test_ddp_matches_single_process(jobs, case, backend):
    ranks = jobs.get("ddp").case(f"train/{case}-{backend}")
    _assert_replicas_equal(ranks, f"{case} (backend={backend})")
    h.reference(case, backend).check(ranks[0]["params"], f"{case} (backend={backend}) on DDP, 2 ranks")


def test_ddp_agd_init_weights_matches_single_process(jobs):
    ranks = jobs.get("ddp").case("init_weights")
    _assert_replicas_equal(ranks, "AGD.init_weights()")
    with h.one_thread():
        model = h.make_model()
        opt = h.make_optimizer("AGD", model, "cpu", named=True)
        torch.manual_seed(h.INIT_SEED)
        opt.init_weights()
    for name, p in model.named_parameters():
        assert torch.equal(ranks[0]["params"][name], p.detach()), f"{name} differs from the single-process draw"
