"""The harness checks itself, on what works without agd_kernels' distributed support: the FSDP2 model is
sharded as the tests need, torch.optim on it matches the single-process run within the derived
tolerance, and that tolerance is tight enough to see what the other tests look for."""
from __future__ import annotations

import pytest
import torch

from tests.distributed import harness as h


def test_fsdp_layout_has_uneven_and_empty_shards(jobs):
    ranks = jobs.get("fsdp-cpu").case("layout")
    shapes = [r["local_shapes"] for r in ranks]
    assert shapes[0]["fc1.weight"] == (4, 27) and shapes[1]["fc1.weight"] == (3, 27), shapes  # 7 rows: uneven
    assert shapes[0]["conv.weight"] == (2, 2, 3, 3) and shapes[1]["conv.weight"] == (1, 2, 3, 3), shapes  # 9 taps
    assert shapes[0]["out.weight"] == (1, 3) and shapes[1]["out.weight"] == (0, 3), shapes  # rank 1: empty
    assert shapes[1]["out.bias"] == (0,), shapes
    assert all(p == "(Shard(dim=0),)" for r in ranks for p in r["placements"].values()), ranks


@pytest.mark.parametrize("case", list(h.CONTROLS))
def test_torch_optim_on_fsdp2_matches_single_process(jobs, case):
    """The control: torch.optim (which supports DTensors) through the same model, sharding, data split,
    gathering and tolerance as the agd_kernels cases."""
    ranks = jobs.get("fsdp-cpu").case(f"train/{case}")
    ref = h.reference(case, "cpu")
    ref.check(ranks[0]["params"], f"{case} on FSDP2")
    for name, t in ranks[0]["params"].items():
        assert torch.equal(t, ranks[1]["params"][name]), f"{name}: ranks gathered different full tensors"


@pytest.mark.parametrize("case", list(h.CASES))
def test_tolerance_is_derived_and_tight(case):
    """The tolerance comes from measured fp32 errors (not a floor alone), and stays far below the
    size of one step (a wrong norm or a missing state would move parameters by more than that)."""
    ref = h.reference(case, "cpu")
    assert any(e > 0 for e in ref.fp32_err.values()), f"{case}: every fp32 run equals the float64 one exactly?"
    start = {n: p.detach().double() for n, p in h.make_model().named_parameters()}
    moved = max((ref.oracle[n] - start[n]).abs().max().item() for n in start)
    worst = max(ref.tol.values())
    assert worst * 1000 < moved, f"{case}: tolerance {worst:.3g} vs parameters moving by {moved:.3g} in {h.STEPS} steps"


def test_lamb_clip_is_active_and_visible():
    """LAMB-clip's threshold is below the global gradient norm at every step, and clipping changes the
    trajectory by far more than the tolerance (so a clip factor from per-shard norms would show)."""
    with h.one_thread():
        model = h.make_model()
        opt = h.make_optimizer("LAMB-clip", model, "torch")
        norms = []
        for k in range(h.STEPS):
            opt.zero_grad(set_to_none=True)
            h.local_loss(model, k, None).backward()
            norms.append(torch.sqrt(sum(p.grad.double().square().sum() for p in model.parameters())).item())
            opt.step()
    assert min(norms) > h.LAMB_CLIP, (norms, h.LAMB_CLIP)
    clip = h.reference("LAMB-clip", "cpu")
    ratio, name = clip.worst_ratio(h.reference("LAMB", "cpu").oracle)
    assert ratio > 100, f"LAMB with and without clipping differ by only {ratio:.3g}x the tolerance ({name})"
