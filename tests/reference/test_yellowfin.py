"""The YellowFin reference (backend="torch") against the spec: an independent float64 oracle of the
PyTorch reference's step order (tests/yellowfin_oracle.py, three-pass) on quadratics with known
curvature, the limits of docs/yellowfin.md §3, the clips, and the 16-bit parameter dtypes.

Tolerances. Oracle and ops differ only in fp64 rounding order and in how Σḡ² is formed (expanded
from pass-A sums vs reduced after the update), so every tracked quantity agrees to ~1e-13 relative
over hundreds of steps (measured). The bound 1e-9 leaves four orders of margin for amplification
(C is a difference of two nearly equal EMAs) while a wrong formula fails it: leaving out one of the
spec's 1e-6 eps terms changes h_min + eps at h_min ~ 10 by 1e-7 relative.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import agd_kernels as ak
from agd_kernels.reference.yellowfin import EPS, SLOT, cubic_root
from tests.tolerance import DTYPE_IDS, assert_close_ulps
from tests.yellowfin_oracle import YellowFinOracle

REL = 1e-9
TRACKED = {"lr_t": "lr_t", "mu_t": "mu_t", "h_min": "h_min", "h_max": "h_max", "grad_var": "C",
           "dist_to_opt": "D", "applied_lr": "group_lr", "grad_norm_squared": "G"}


@pytest.fixture(autouse=True)
def _quiet_fallback():
    with warnings.catch_warnings():  # the CPU build has no YellowFin kernels: the reference runs
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def quadratic(n: int = 40, seed: int = 0):
    """f(x) = ½ Σ h_i x_i², curvatures h_i log-spaced over [0.01, 10], and a start point."""
    gen = torch.Generator().manual_seed(seed)
    return torch.logspace(-2, 1, n, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)


def rel_err(got: float, want: float) -> float:
    return abs(got - want) / max(abs(want), 1e-300)


def run_tracking(steps: int, options: dict, *, noise: float = 0.1, density: float = 1.0,
                 spikes: dict[int, float] | None = None, weight_decay: float = 0.0):
    """Optimizer (fp64 params) and oracle side by side on the noisy quadratic; returns the worst
    relative error of each tracked quantity and the per-step tuner snapshots."""
    h, x0 = quadratic()
    p = torch.nn.Parameter(x0.clone())
    opt = ak.YellowFin([{"params": [p], "weight_decay": weight_decay}], backend="torch", **options)
    q = x0.clone()
    oracle = YellowFinOracle([q], [weight_decay], **options)
    gen = torch.Generator().manual_seed(1)
    worst = dict.fromkeys([*TRACKED, "params"], 0.0)
    tuners = []
    for k in range(steps):
        eps = noise * torch.randn(h.shape, generator=gen, dtype=torch.float64)
        mask = (torch.rand(h.shape, generator=gen) < density).double()
        factor = (spikes or {}).get(k, 1.0)
        p.grad = (h * p.detach() + eps) * mask * factor
        oracle.step([(h * q + eps) * mask * factor])
        lr, mu = opt.step()
        tuner = opt.tuner.clone()
        tuners.append(tuner)
        assert lr.item() == tuner[SLOT["applied_lr"]].item() and mu.item() == tuner[SLOT["mu_t"]].item()
        for slot, attr in TRACKED.items():
            worst[slot] = max(worst[slot], rel_err(tuner[SLOT[slot]].item(), getattr(oracle, attr)))
        worst["params"] = max(worst["params"], ((p.detach() - q).abs().max() / q.abs().max()).item())
    assert opt.tuner[SLOT["iter"]].item() == oracle.iter
    return worst, tuners


OPTION_SETS = {
    "defaults": dict(lr=0.01, curv_win_width=10),
    "mu0-wide-window": dict(lr=0.05, mu=0.3, curv_win_width=30),
    "sparsity-force-non-inc": dict(lr=0.01, curv_win_width=8, sparsity_debias=True, force_non_inc_step=True),
    # sparsity_debias with zero_debias off: the reference still debiases the density EMA
    "raw-smoothing-manual-clip-sparsity": dict(lr=0.01, curv_win_width=10, zero_debias=False, h_min_log_smooth=False,
                                               h_max_log_smooth=False, adapt_clip=False, clip_thresh=1.0,
                                               sparsity_debias=True),
    "auto-clip": dict(lr=0.01, curv_win_width=10, auto_clip_fac=1.2, beta=0.99),
}


@pytest.mark.parametrize("name", OPTION_SETS)
def test_tracks_oracle_on_noisy_quadratic(name):
    density = 0.7 if OPTION_SETS[name].get("sparsity_debias") else 1.0
    worst, _ = run_tracking(250, OPTION_SETS[name], density=density, weight_decay=0.01 if name == "auto-clip" else 0)
    assert all(e <= REL for e in worst.values()), worst


def test_tracks_oracle_through_gradient_spikes():
    """A 1e4x gradient at step 0 makes lr·‖g‖ ≈ 300 and trips the catastrophic-move clamp; 1e3x at
    steps 60-61 trips the stat-protect and exploding-gradient clips. The oracle agrees throughout."""
    options = dict(lr=0.01, curv_win_width=10, beta=0.99)
    worst, tuners = run_tracking(120, options, spikes={0: 1e4, 60: 1e3, 61: 1e3})
    assert all(e <= REL for e in worst.values()), worst
    first = tuners[0]
    move = first[SLOT["applied_lr"]] * first[SLOT["grad_norm_squared"]].sqrt()
    assert first[SLOT["applied_lr"]] < first[SLOT["lr_t"]] and move.item() == pytest.approx(100.0, rel=1e-6), \
        "the catastrophic-move clamp should cap lr·‖g‖ at 100"
    for k in (60, 61):
        assert tuners[k][SLOT["stats_coef"]] < 1, f"stat-protect clip did not fire at step {k}"
        assert tuners[k][SLOT["step_coef"]] < tuners[k][SLOT["stats_coef"]], f"exploding clip did not fire at step {k}"


def test_deterministic_gradient_ends_on_clamped_variance():
    """§3: with the same gradient every step the variance is clamped (C = 1e-6 exactly), p is huge,
    so x ~ 1/p and μ ~ 0; lr = (1 − √μ)²/(h_min + eps) ramped by (t + 1)/(10W); h_min = h_max = ‖g‖²
    (the log-EMA of a constant, debiased, is that constant)."""
    g = torch.tensor([0.6, -0.8], dtype=torch.float64)  # ‖g‖² = 1
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = ak.YellowFin([p], lr=0.01, curv_win_width=5, backend="torch")
    for t in range(30):
        p.grad = g.clone()
        opt.step()
        T = opt.tuner
        if t == 0:
            continue
        assert T[SLOT["grad_var"]].item() == EPS
        h_min, h_max, mu, lr = (T[SLOT[k]].item() for k in ("h_min", "h_max", "mu_t", "lr_t"))
        assert h_min == pytest.approx(1.0 + EPS, rel=1e-12) and h_max == pytest.approx(h_min, rel=1e-12)
        D = T[SLOT["dist_to_opt"]].item()
        P = (D + EPS) ** 2 * (h_min + EPS) ** 2 / 2 / (2 * EPS)
        # x ~ 1/p, plus the w + eps bias of at most 2·eps (see test_cubic_root_matches_bisection)
        assert P > 1e5 and (1 / (P + 3)) ** 2 <= mu <= (1 / P + 2 * EPS) ** 2
        ramp = min(1.0, (t + 1) / 50)
        assert lr == pytest.approx((1 - math.sqrt(mu)) ** 2 / (h_min + EPS) * ramp, rel=1e-12)


def exact_root(p: float) -> float:
    """The root of p·x = (1 − x)³ in [0, 1] by bisection (the left side minus the right increases)."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if p * mid > (1 - mid) ** 3 else (mid, hi)
    return (lo + hi) / 2


@pytest.mark.parametrize("p", [1e-15, 1e-9, 1e-3, 0.1, 1.0, 10.0, 1e3, 1e5, 1e8])
def test_cubic_root_matches_bisection(p):
    """The Vieta form with the reference's eps: y = w − p/(3(w + eps)) instead of p/(3w) shifts x by
    p·eps/(3w²) ≈ eps·p^(1/3)/3 for small p (w ≈ −p^(1/3)) and ≈ eps for large p (w² ≈ p/3), so
    |x − root| <= 2·eps·max(1, p^(1/3)) (spec §7: 9.98e-4 instead of 9.97e-4 at p = 1e3)."""
    x = cubic_root(torch.tensor(p, dtype=torch.float64)).item()
    assert 0 <= x < 1
    assert abs(x - exact_root(p)) <= 2 * EPS * max(1.0, p ** (1 / 3))


def test_cubic_root_limits():
    """p → 0 (all noise): x → 1 − p^(1/3), so μ → 1; p → ∞ (no noise): x → 1/p (+ the eps bias), so
    μ → 0 and μ_lo decides; an overflowing p gives x = 0; near the w + eps pole (p ≈ 2e-18) the
    clamp keeps x in [0, 1)."""
    for p in (1e-15, 1e-12, 1e-9):
        x = cubic_root(torch.tensor(p, dtype=torch.float64)).item()
        assert abs(x - (1 - p ** (1 / 3))) <= p ** (2 / 3)
    for p in (1e4, 1e6, 1e10):
        assert 0 <= cubic_root(torch.tensor(p, dtype=torch.float64)).item() <= 1 / p + 2 * EPS
    for p in (1e150, 1e300, math.inf):
        assert cubic_root(torch.tensor(p, dtype=torch.float64)).item() == 0.0
    xs = cubic_root(torch.logspace(-19, -17, 201, dtype=torch.float64))
    assert ((xs >= 0) & (xs < 1)).all()


def test_loss_scale_divides_lr_by_its_square():
    """§3: μ depends only on p (scale-free); lr scales as 1/‖g‖², so gradients multiplied by c give
    lr/c². The same gradient sequence is fed to both; eps terms (1e-6 against D ~ 1e-2) bound the
    deviation to ~1e-4 relative."""
    h, x0 = quadratic()
    gen = torch.Generator().manual_seed(2)
    xs = [x0 + 0.01 * k * torch.randn(x0.shape, generator=gen, dtype=torch.float64) for k in range(150)]
    c = 10.0
    runs = []
    for scale in (1.0, c):
        p = torch.nn.Parameter(x0.clone())
        opt = ak.YellowFin([p], lr=0.01, curv_win_width=10, adapt_clip=False, backend="torch")
        for x in xs:
            p.grad = scale * (h * x)
            opt.step()
        runs.append(opt.tuner.clone())
    plain, scaled = runs
    assert scaled[SLOT["mu_t"]].item() == pytest.approx(plain[SLOT["mu_t"]].item(), rel=1e-3)
    assert scaled[SLOT["lr_t"]].item() * c * c == pytest.approx(plain[SLOT["lr_t"]].item(), rel=1e-3)
    assert plain[SLOT["mu_t"]].item() > 0.05, "the test should run away from the μ = 0 corner"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=DTYPE_IDS.get)
def test_low_precision_params_follow_the_oracle(dtype):
    """4 steps in `dtype` against the float64 oracle fed the same gradients (cast from `dtype`).
    Each step rounds p, ḡ and the buffer to the dtype once (≤ ½ ulp) and the fp32 math adds far
    less, so after k steps p is within k ulps·(1 + |p|) of the oracle."""
    h, x0 = quadratic()
    p = torch.nn.Parameter(x0.to(dtype))
    opt = ak.YellowFin([p], lr=0.01, mu=0.5, curv_win_width=3, backend="torch")
    q = p.detach().double().clone()
    oracle = YellowFinOracle([q], lr=0.01, mu=0.5, curv_win_width=3)
    for k in range(4):
        p.grad = (h.to(dtype) * p.detach()).to(dtype)
        oracle.step([p.grad.double()])
        opt.step()
        assert_close_ulps(p.detach(), q, dtype, ulps=k + 1, name=f"params after step {k}")
        for key in ("grad_avg", "momentum_buffer"):
            assert opt.state[p][key].dtype == dtype
    assert opt.tuner.dtype == torch.float64
