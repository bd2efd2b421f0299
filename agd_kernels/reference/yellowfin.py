"""YellowFin: the three ops of one step (docs/yellowfin.md §8 decisions, §9 two-pass plan).

  yellowfin_stats_ (per bucket)  Σg², Σḡ·g, Σḡ², nnz(g) of the raw gradients and the old ḡ;
  yellowfin_tune_  (one, tiny)   every scalar of spec §2 in float64 on the device: clips, curvature
                                 window, EMAs, variance C, distance D, the cubic, lr and μ;
  yellowfin_apply_ (per bucket)  ḡ EMA and the torch-SGD momentum step with the tuned lr and μ.

Two-pass plan: Σḡ_new² is not reduced after the ḡ update but expanded from the pass-A sums,
A = β²·Σḡ² + 2β(1−β)·s·Σḡ·g + (1−β)²·s²·Σg² with s the clip factor, so the ḡ update can share the
apply pass. The tuner is one fp64 vector: the named slots of SLOTS, then the curvature window.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import telemetry as _telemetry
from ._common import commit, round_into, upcast

#: The reference's eps (a module constant there), used wherever spec §2/§3 adds one.
EPS = 1e-6
#: Largest double below 1: x = √μ is clamped into [0, X_MAX] so μ < 1 and lr > 0 (decision 2).
X_MAX = math.nextafter(1.0, 0.0)

#: Named slots of the tuner vector, in order (reference names where the reference has one).
SLOTS = (
    "iter",                        # t, steps taken; a skipped step does not count
    "lr_factor",                   # user multiplier of the tuned lr (set_lr_factor)
    "lr_t", "mu_t",                # unsmoothed tuned lr and μ: μ_t is the momentum applied
    "lr", "mu",                    # their β-EMAs (only force_non_inc_step reads the lr one)
    "applied_lr",                  # lr of the momentum step: lr_t·lr_factor after the catastrophic clamp
    "h_min_avg", "h_max_avg",      # EMAs of (the log of) the window min / max
    "h_min", "h_max",              # debiased curvature range; the next step's clips read h_max
    "grad_norm_squared",           # G, this step's ‖g‖² after the clips
    "grad_norm_squared_avg", "grad_norm_avg", "dist_to_opt_avg",
    "grad_var", "dist_to_opt",     # C and D of this step
    "sparsity_avg",
    "lr_grad_norm_avg", "lr_grad_norm_avg_min", "grad_norm_squared_avg_log",  # force_non_inc_step
    "stats_coef",                  # s0·s1/grad_scale: raw gradient -> what ḡ averages
    "step_coef",                   # s0·s1·s2/grad_scale: raw gradient -> what the SGD step uses
    "grad_unscale",                # 1/grad_scale: raw gradient -> the loss's gradient (telemetry's g)
)
SLOT = {name: i for i, name in enumerate(SLOTS)}
#: Rewritten by every step before it is read: not part of a checkpoint.
SCRATCH = ("stats_coef", "step_coef", "grad_unscale")


def new_tuner(lr: float, mu: float, curv_win_width: int, device) -> Tensor:
    """A fresh tuner: step 0 applies the constructor's lr and μ (spec §2.8), lr_factor = 1."""
    values = [0.0] * (len(SLOTS) + curv_win_width)
    for name, value in (("lr_factor", 1.0), ("lr_t", lr), ("mu_t", mu), ("lr", lr), ("mu", mu), ("applied_lr", lr),
                        ("grad_unscale", 1.0)):
        values[SLOT[name]] = value
    return torch.tensor(values, dtype=torch.float64).to(device)


def step_skipped(stats: Tensor, found_inf: Tensor | None) -> Tensor:
    """0-d bool: the whole step is skipped when found_inf is set or Σg² is not finite (decision 6)."""
    skip = ~torch.isfinite(stats.reshape(-1, 4)[:, 0].sum())
    return skip if found_inf is None else skip | (found_inf != 0)


def yellowfin_stats_(grads: list[Tensor], grad_avgs: list[Tensor], out: Tensor) -> None:
    """out (fp64, 4) = [Σg², Σḡ·g, Σḡ², nnz(g)]: products in fp32 (fp64 for fp64), sums in fp64."""
    sums = torch.zeros(4, dtype=torch.float64, device=out.device)
    for g, a in zip(grads, grad_avgs, strict=True):
        g32, a32 = upcast(g), upcast(a)
        sums = sums + torch.stack([(g32 * g32).double().sum(), (a32 * g32).double().sum(),
                                   (a32 * a32).double().sum(), (g != 0).sum().double()])
    out.copy_(sums)


def clip_coef(max_norm, norm: Tensor) -> Tensor:
    """torch.nn.utils.clip_grad_norm_'s factor: max_norm/(norm + 1e-6), at most 1."""
    return (max_norm / (norm + 1e-6)).clamp(max=1.0)


def cubic_root(p: Tensor) -> Tensor:
    """x = √μ, the real root of p·x = (1 − x)³, in the reference's Vieta form and eps placement.

    Clamped into [0, X_MAX]: near p ≈ 2e-18 the w + eps division blows up and x leaves [0, 1]. A
    non-finite x only comes from p² or p³ overflowing (p ≳ 1e102), where x ~ 1/p, so it maps to 0.
    """
    w3 = (-(p ** 2 + 4.0 / 27.0 * p ** 3).sqrt() - p) / 2.0
    w = torch.copysign(w3.abs().pow(1.0 / 3.0), w3)
    x = w - p / 3.0 / (w + EPS) + 1
    return torch.where(x.isfinite(), x.clamp(0.0, X_MAX), torch.zeros_like(x))


def yellowfin_tune_(tuner: Tensor, stats: Tensor, numel: float, beta: float, curv_win_width: int,
                    zero_debias: bool, sparsity_debias: bool, clip_thresh: float, auto_clip_fac: float,
                    adapt_clip: bool, stat_protect_fac: float, catastrophic_move_thresh: float,
                    force_non_inc_step: bool, h_min_log_smooth: bool, h_max_log_smooth: bool,
                    grad_scale: Tensor | None, found_inf: Tensor | None) -> tuple[Tensor, Tensor]:
    n, W = len(SLOTS), curv_win_width
    if tuner.numel() != n + W:
        raise ValueError(f"yellowfin_tune_: tuner has {tuner.numel()} values; expected {n} slots + "
                         f"curv_win_width = {n + W}")
    old = dict(zip(SLOTS, tuner[:n].unbind()))
    new = dict(old)
    t, h_max_prev = old["iter"], old["h_max"]
    one = torch.ones_like(t)
    sums = stats.reshape(-1, 4).sum(0)
    inv = one if grad_scale is None else 1.0 / grad_scale.double()
    s_gg, s_ag, s_aa, nnz = sums[0] * inv * inv, sums[1] * inv, sums[2], sums[3]
    norm = s_gg.sqrt()

    # §2.1-2.3: manual (or auto) clip s0, stat-protect clip s1, then G = ‖s0·s1·g‖².
    s0 = one
    if clip_thresh > 0:
        s0 = clip_coef(clip_thresh, norm)
    elif auto_clip_fac > 0:
        s0 = torch.where(t != 0, clip_coef(h_max_prev.sqrt() * auto_clip_fac, norm), one)
    s1 = torch.where(t > 1, clip_coef((stat_protect_fac * h_max_prev).sqrt() + EPS, s0 * norm), one) \
        if adapt_clip else one
    s = s0 * s1
    G = s * s * s_gg
    exploding = (t >= 1) & (G >= h_max_prev)  # against the previous h_max, before it is updated
    new["grad_norm_squared"] = G
    gn2_avg = new["grad_norm_squared_avg"] = beta * old["grad_norm_squared_avg"] + (1 - beta) * G

    # Zero-debias factor b_t = 1 − β^(t+1). The reference debiases sparsity and the
    # force_non_inc_step EMAs with it even when zero_debias is off.
    debias = 1 - beta ** (t + 1)
    b = debias if zero_debias else one

    # §2.4 sparsity: ŝ multiplies h_min, h_max and C and divides D.
    density = 1.0
    if sparsity_debias:
        new["sparsity_avg"] = beta * old["sparsity_avg"] + (1 - beta) * (nnz / numel if numel > 0 else one)
        density = new["sparsity_avg"] / debias

    # §2.5 curvature range over the first min(W, t + 1) window entries; G goes to slot t mod W.
    win = tuner[n:]
    idx = torch.arange(W, dtype=torch.float64, device=tuner.device)
    win = torch.where(idx == torch.remainder(t, W), G, win)
    valid = idx <= t
    window_min = torch.where(valid, win, math.inf).amin()
    window_max = torch.where(valid, win, -math.inf).amax()
    h = {}
    for key, value, log_smooth in (("h_min", window_min, h_min_log_smooth), ("h_max", window_max, h_max_log_smooth)):
        term = torch.log(value + EPS) if log_smooth else value
        avg = new[key + "_avg"] = beta * old[key + "_avg"] + (1 - beta) * term
        h[key] = new[key] = (torch.exp(avg / b) if log_smooth else avg / b) * density
    h_min, h_max = h["h_min"], h["h_max"]

    # §2.6 variance from the expanded Σḡ_new² (two-pass plan); rounding may push A a hair below 0.
    A = (beta * beta * s_aa + 2 * beta * (1 - beta) * s * s_ag + (1 - beta) ** 2 * G).clamp(min=0.0)
    C = new["grad_var"] = (gn2_avg / b - A / (b * b)).clamp(min=EPS) * density

    # §2.7 distance to the optimum.
    gn_avg = new["grad_norm_avg"] = beta * old["grad_norm_avg"] + (1 - beta) * G.sqrt()
    dist_avg = new["dist_to_opt_avg"] = beta * old["dist_to_opt_avg"] + (1 - beta) * gn_avg / (gn2_avg + EPS)
    D = dist_avg / b
    if sparsity_debias:
        D = D / (density.sqrt() + EPS)
    new["dist_to_opt"] = D

    # §2.8 / §3 tuning from t = 1 on; step 0 keeps the constructor's lr and μ.
    p = (D + EPS) ** 2 * (h_min + EPS) ** 2 / 2 / (C + EPS)
    ratio = torch.maximum((h_max + EPS) / (h_min + EPS), torch.full_like(t, 1 + EPS))
    mu_lo = ((ratio.sqrt() - 1) / (ratio.sqrt() + 1)) ** 2
    mu_t = torch.maximum(cubic_root(p) ** 2, mu_lo)
    lr_t = (1 - mu_t.sqrt()) ** 2 / (h_min + EPS)
    lr_t = torch.minimum(lr_t, lr_t * (t + 1) / (10.0 * W))  # slow start over the first 10·W steps
    tuned = t > 0
    new["mu_t"] = torch.where(tuned, mu_t, old["mu_t"])
    new["lr_t"] = torch.where(tuned, lr_t, old["lr_t"])
    new["lr"] = torch.where(tuned, beta * old["lr"] + (1 - beta) * new["lr_t"], old["lr"])
    new["mu"] = torch.where(tuned, beta * old["mu"] + (1 - beta) * new["mu_t"], old["mu"])

    # §2.9 the lr the step applies.
    if force_non_inc_step:
        # Only for t > W; before that the applied lr keeps its value (the constructor's lr).
        late = t > W
        log_g = beta * old["grad_norm_squared_avg_log"] + (1 - beta) * torch.log(G + EPS)
        lr_g = beta * old["lr_grad_norm_avg"] + (1 - beta) * torch.log(new["lr"] * G.sqrt() + EPS)
        lr_g_min = torch.exp(lr_g / debias)
        lr_g_min = torch.where(t == W + 1, lr_g_min, torch.minimum(old["lr_grad_norm_avg_min"], lr_g_min))
        capped = torch.minimum(new["lr"] * old["lr_factor"], 2 * lr_g_min / (torch.exp(log_g / debias).sqrt() + EPS))
        new["grad_norm_squared_avg_log"] = torch.where(late, log_g, old["grad_norm_squared_avg_log"])
        new["lr_grad_norm_avg"] = torch.where(late, lr_g, old["lr_grad_norm_avg"])
        new["lr_grad_norm_avg_min"] = torch.where(late, lr_g_min, old["lr_grad_norm_avg_min"])
        new["applied_lr"] = torch.where(late, capped, old["applied_lr"])
    else:
        applied = new["lr_t"] * old["lr_factor"]
        if adapt_clip:  # bound the move lr·‖g‖ by catastrophic_move_thresh
            applied = torch.where(applied * G.sqrt() >= catastrophic_move_thresh,
                                  catastrophic_move_thresh / (G + EPS).sqrt(), applied)
        new["applied_lr"] = applied

    # §2.11 exploding-gradient clip to √h_max_prev: only the SGD step sees it.
    s2 = torch.where(exploding, clip_coef(h_max_prev.sqrt() + EPS, G.sqrt()), one) if adapt_clip else one
    new["stats_coef"] = s * inv
    new["step_coef"] = s * s2 * inv
    new["grad_unscale"] = inv
    new["iter"] = t + 1

    updated = torch.cat([torch.stack([new[name] for name in SLOTS]), win])
    tuner.copy_(torch.where(step_skipped(stats, found_inf), tuner, updated))
    return tuner[SLOT["applied_lr"]].clone(), tuner[SLOT["mu_t"]].clone()


def yellowfin_apply_(params: list[Tensor], grads: list[Tensor], grad_avgs: list[Tensor],
                     momentum_buffers: list[Tensor], tuner: Tensor, stats: Tensor, beta: float,
                     weight_decay: float, found_inf: Tensor | None, model_params: list[Tensor],
                     telemetry: Tensor | None = None) -> None:
    _telemetry.check("yellowfin_apply_", telemetry, params)
    skip = step_skipped(stats, found_inf)
    before = _telemetry.snapshot(telemetry, params)
    lr, mu = tuner[SLOT["applied_lr"]], tuner[SLOT["mu_t"]]
    avg_coef = (1 - beta) * tuner[SLOT["stats_coef"]]
    step_coef = tuner[SLOT["step_coef"]]
    # torch SGD: a step with momentum 0 leaves the buffer alone; buffers start at zero, so the first
    # step with μ ≠ 0 gives μ·0 + d = d, torch's clone(d).
    heavy = mu != 0
    for p, g, a, buf in zip(params, grads, grad_avgs, momentum_buffers, strict=True):
        g32, p32, b32 = upcast(g), upcast(p), upcast(buf)
        commit(a, upcast(a) * beta + avg_coef * g32, skip)
        d = step_coef * g32
        if weight_decay != 0:
            d = d + weight_decay * p32  # coupled decay, outside the statistics (decision 4)
        b32 = torch.where(heavy, mu * b32 + d, b32)
        commit(buf, b32, skip)
        commit(p, p32 - lr * torch.where(heavy, b32, d), skip)
    round_into(model_params, params, skip)
    # g of the sums is the loss's gradient: the raw one times the step's 1/grad_scale.
    unscale = 1.0 / tuner[SLOT["grad_unscale"]]
    _telemetry.accumulate_(telemetry, before, grads, params, unscale, skip)
