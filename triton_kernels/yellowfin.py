"""YellowFin (docs/yellowfin.md §8-9, two-pass plan): 3 launches per step for one (device, dtype) bucket.

  stats (pass A, per bucket)  Σg², Σḡ·g, Σḡ², nnz(g): fp32 products, fp64 sums. Each program stores its
                              four partial sums; the last program of the launch adds them in block order;
  tune  (one program)         every scalar of the step in fp64 (clips, window, EMAs, C, D, cubic, lr, μ),
                              the layout of agd_kernels.reference.yellowfin.SLOTS;
  apply (pass B, per bucket)  ḡ EMA and the torch-SGD momentum step, lr and μ read from the tuner.
A step is skipped on the device (nothing written, the tuner included) when found_inf is set or Σg² is not
finite: tune and apply both test it from the stats, so no launch depends on a host decision.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from agd_kernels.reference import telemetry as _telemetry
from agd_kernels.reference.yellowfin import EPS, SLOT, SLOTS, X_MAX

from . import multi_tensor as mt
from ._common import (add_tensor_sums, add_tile_sums, last_to_arrive, load, no_sums, pow_f64, program_chunk,
                      row_pointer, scalar, store_param, store_sums)

# rows payload columns (stats reads the gradient averages; apply writes params, averages and buffers)
_AVG = tl.constexpr(mt.HEAD + 0)
_STATS_NCOL = tl.constexpr(mt.HEAD + 1)
_P = tl.constexpr(mt.HEAD + 0)
_APPLY_AVG = tl.constexpr(mt.HEAD + 1)
_BUF = tl.constexpr(mt.HEAD + 2)
_APPLY_NCOL = tl.constexpr(mt.HEAD + 3)

# tuner slots (indices into the fp64 tuner vector; the curvature window follows them)
_ITER = tl.constexpr(SLOT["iter"])
_LR_FACTOR = tl.constexpr(SLOT["lr_factor"])
_LR_T = tl.constexpr(SLOT["lr_t"])
_MU_T = tl.constexpr(SLOT["mu_t"])
_LR = tl.constexpr(SLOT["lr"])
_MU = tl.constexpr(SLOT["mu"])
_APPLIED_LR = tl.constexpr(SLOT["applied_lr"])
_H_MIN_AVG = tl.constexpr(SLOT["h_min_avg"])
_H_MAX_AVG = tl.constexpr(SLOT["h_max_avg"])
_H_MIN = tl.constexpr(SLOT["h_min"])
_H_MAX = tl.constexpr(SLOT["h_max"])
_GRAD_NORM_SQUARED = tl.constexpr(SLOT["grad_norm_squared"])
_GRAD_NORM_SQUARED_AVG = tl.constexpr(SLOT["grad_norm_squared_avg"])
_GRAD_NORM_AVG = tl.constexpr(SLOT["grad_norm_avg"])
_DIST_TO_OPT_AVG = tl.constexpr(SLOT["dist_to_opt_avg"])
_GRAD_VAR = tl.constexpr(SLOT["grad_var"])
_DIST_TO_OPT = tl.constexpr(SLOT["dist_to_opt"])
_SPARSITY_AVG = tl.constexpr(SLOT["sparsity_avg"])
_LR_GRAD_NORM_AVG = tl.constexpr(SLOT["lr_grad_norm_avg"])
_LR_GRAD_NORM_AVG_MIN = tl.constexpr(SLOT["lr_grad_norm_avg_min"])
_GRAD_NORM_SQUARED_AVG_LOG = tl.constexpr(SLOT["grad_norm_squared_avg_log"])
_STATS_COEF = tl.constexpr(SLOT["stats_coef"])
_STEP_COEF = tl.constexpr(SLOT["step_coef"])
_GRAD_UNSCALE = tl.constexpr(SLOT["grad_unscale"])
_WINDOW = tl.constexpr(len(SLOTS))
# Float constexprs become fp32 constants in tl.maximum / tl.minimum (1e-6 -> 9.99999997e-07, X_MAX -> 1.0):
# kernels turn them into fp64 scalars with `scalar` before use.
_EPS = tl.constexpr(EPS)
_X_MAX = tl.constexpr(X_MAX)


# ------------------------------------------------------------------------------------------ stats
@triton.jit
def _yellowfin_stats_tile(g, a, offs, mask):
    gv = load(g + offs, mask)
    av = load(a + offs, mask)
    nonzero = tl.where(gv != 0, 1.0, 0.0)
    if mask is not None:
        nonzero = tl.where(mask, nonzero, 0.0)
    return (tl.sum((gv * gv).to(tl.float64), axis=0), tl.sum((av * gv).to(tl.float64), axis=0),
            tl.sum((av * av).to(tl.float64), axis=0), tl.sum(nonzero.to(tl.float64), axis=0))


@triton.jit
def _yellowfin_stats_chunk(g, a, numel, start, block, n_blocks, partials, counter, out,
                           BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    gg = tl.zeros([], dtype=tl.float64)
    ag = tl.zeros([], dtype=tl.float64)
    aa = tl.zeros([], dtype=tl.float64)
    nnz = tl.zeros([], dtype=tl.float64)
    for off in range(0, CHUNK, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        if start + off + BLOCK <= numel:
            d_gg, d_ag, d_aa, d_nnz = _yellowfin_stats_tile(g, a, offs, None)
        else:
            d_gg, d_ag, d_aa, d_nnz = _yellowfin_stats_tile(g, a, offs, offs < numel)
        gg += d_gg
        ag += d_ag
        aa += d_aa
        nnz += d_nnz
    k = tl.arange(0, 4)
    tl.store(partials + 4 * block + k, tl.where(k == 0, gg, tl.where(k == 1, ag, tl.where(k == 2, aa, nnz))))
    if last_to_arrive(counter, n_blocks, tl.full([], 1, dtype=tl.int1)):  # the sums have no found_inf
        total = tl.zeros([4], dtype=tl.float64)
        for b in range(0, n_blocks):
            total += tl.load(partials + 4 * b + k, cache_modifier=".cg")
        tl.store(out + k, total)


@triton.jit
def _yellowfin_stats_kernel(rows, grads, blocks, partials, counter, out, n_blocks, DTYPE: tl.constexpr,
                            GDTYPE: tl.constexpr, ALIGN: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    t, start = program_chunk(blocks, CHUNK)
    row = rows + t * _STATS_NCOL
    _yellowfin_stats_chunk(row_pointer(grads, t, GDTYPE, ALIGN), row_pointer(row, _AVG, DTYPE, ALIGN),
                           tl.load(row + mt.NUMEL), start, tl.program_id(0), n_blocks, partials, counter, out,
                           BLOCK, CHUNK)


@triton.jit
def _yellowfin_stats_tensor_kernel(g, a, numel, partials, counter, sums, row, BLOCK: tl.constexpr,
                                   CHUNK: tl.constexpr):
    block = tl.program_id(0)
    _yellowfin_stats_chunk(g, a, numel, block.to(tl.int64) * CHUNK, block, tl.num_programs(0), partials, counter,
                           sums + 4 * row, BLOCK, CHUNK)


def yellowfin_stats_triton(grads: list[Tensor], grad_avgs: list[Tensor], out: Tensor) -> None:
    """Triton `yellowfin_stats_` (see agd_kernels.ops.yellowfin_stats_)."""
    if not grads:
        return
    op = "yellowfin_stats_"
    mt.check_lists(op, grad_avgs, {}, grads=grads, first="grad_avgs")
    device = grads[0].device
    if out.dtype != torch.float64 or out.numel() != 4 or out.device != device or not out.is_contiguous():
        raise ValueError(f"{op}: out must be a contiguous float64 tensor of 4 elements on {device}; got "
                         f"{out.dtype} with {out.numel()} elements on {out.device}")
    cfg = mt.config(device)
    meta = dict(BLOCK=cfg.block, CHUNK=cfg.chunk, num_warps=cfg.num_warps)
    if mt.traced(out):
        # per tensor: its sums into one row, then the rows added in order (fp64)
        sums = torch.empty(len(grads), 4, dtype=torch.float64, device=device)
        for i, (g, a) in enumerate(zip(grads, grad_avgs)):
            grid = (mt.n_programs(g.numel(), cfg.chunk),)
            partials = torch.empty(4 * grid[0], dtype=torch.float64, device=device)
            counter = torch.zeros(1, dtype=torch.int32, device=device)
            wrap_triton(_yellowfin_stats_tensor_kernel)[grid](g, a, g.numel(), partials, counter, sums, i, **meta)
        out.copy_(sums.sum(0))
        return
    tab = mt.table(op, device, [g.numel() for g in grads], [(a.data_ptr(),) for a in grad_avgs], cfg.chunk,
                   scratch_per_block=4)
    align = mt.alignment(t.data_ptr() for t in (*grads, *grad_avgs))
    # one arrival counter for the whole launch: its last program writes the four totals
    wrap_triton(_yellowfin_stats_kernel)[(tab.n_blocks,)](
        tab.rows, mt.pointers(grads, device), tab.blocks, tab.scratch, tab.counters, out, tab.n_blocks,
        DTYPE=mt.TL_DTYPE[grad_avgs[0].dtype], GDTYPE=mt.TL_DTYPE[grads[0].dtype], ALIGN=align, **meta)


# ------------------------------------------------------------------------------------------ tune
@triton.jit
def _skipped(stats, n_rows, inf_ptr):
    """found_inf set, or Σg² over every bucket not finite (NaN fails the comparison too)."""
    s_gg = tl.zeros([], dtype=tl.float64)
    for r in range(0, n_rows):
        s_gg += tl.load(stats + 4 * r)
    return (tl.load(inf_ptr) != 0) | ~(tl.abs(s_gg) < float("inf"))


@triton.jit
def _clip_coef(max_norm, norm):
    """torch.nn.utils.clip_grad_norm_'s factor: min(max_norm/(norm + 1e-6), 1)."""
    return tl.minimum(max_norm / (norm + _EPS), 1.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _pow_third(a):
    """a ** (1/3) for a >= 0: exp(log(a)/3) polished by one Newton step on y³ = a (a few ulp from pow)."""
    y = tl.exp(tl.log(a) / 3.0)
    y = y - (y * y * y - a) / (3.0 * y * y)
    return tl.where(a == 0, 0.0, y)


@triton.jit
def _cubic_root(p):
    """x = √μ, the real root of p·x = (1 − x)³ (Vieta form, reference eps placement), clamped into
    [0, X_MAX]; a non-finite x (p², p³ overflow) maps to 0."""
    w3 = (-tl.sqrt(p * p + 4.0 / 27.0 * (p * p * p)) - p) / 2.0
    root = _pow_third(tl.abs(w3))
    w = tl.where(w3 < 0, -root, root)
    x = w - p / 3.0 / (w + _EPS) + 1.0
    clamped = tl.minimum(tl.maximum(x, 0.0), scalar(_X_MAX, tl.float64))
    return tl.where(tl.abs(x) < float("inf"), clamped, 0.0)


@triton.jit
def _smoothed_extreme(old_avg, value, beta, b, density, log_smooth):
    """(new EMA, debiased h) of one end of the curvature range, in log space or raw."""
    if log_smooth:
        avg = beta * old_avg + (1.0 - beta) * tl.log(value + _EPS)
        h = tl.exp(avg / b) * density
    else:
        avg = beta * old_avg + (1.0 - beta) * value
        h = avg / b * density
    return avg, h


@triton.jit
def _yellowfin_tune_kernel(tuner, stats, n_rows, numel: "fp64", beta: "fp64", width, zero_debias, sparsity_debias,
                           clip_thresh: "fp64", auto_clip_fac: "fp64", adapt_clip, stat_protect_fac: "fp64",
                           catastrophic_move_thresh: "fp64", force_non_inc_step, h_min_log_smooth,
                           h_max_log_smooth, scale_ptr, inf_ptr, lr_out, mu_out, WP: tl.constexpr):
    beta = scalar(beta, tl.float64)
    numel = scalar(numel, tl.float64)
    t = tl.load(tuner + _ITER)
    h_max_prev = tl.load(tuner + _H_MAX)
    lr_factor = tl.load(tuner + _LR_FACTOR)
    s_gg = tl.zeros([], dtype=tl.float64)
    s_ag = tl.zeros([], dtype=tl.float64)
    s_aa = tl.zeros([], dtype=tl.float64)
    nnz = tl.zeros([], dtype=tl.float64)
    for r in range(0, n_rows):
        s_gg += tl.load(stats + 4 * r)
        s_ag += tl.load(stats + 4 * r + 1)
        s_aa += tl.load(stats + 4 * r + 2)
        nnz += tl.load(stats + 4 * r + 3)
    inv = 1.0 / tl.load(scale_ptr).to(tl.float64)
    s_gg = s_gg * inv * inv
    s_ag = s_ag * inv
    norm = tl.sqrt(s_gg)

    # §2.1-2.3: manual (or auto) clip s0, stat-protect clip s1, then G = ‖s0·s1·g‖².
    clip_thresh = scalar(clip_thresh, tl.float64)
    auto_clip_fac = scalar(auto_clip_fac, tl.float64)
    s0 = tl.where(clip_thresh > 0, _clip_coef(clip_thresh, norm),
                  tl.where((auto_clip_fac > 0) & (t != 0), _clip_coef(tl.sqrt(h_max_prev) * auto_clip_fac, norm),
                           1.0))
    protect = _clip_coef(tl.sqrt(scalar(stat_protect_fac, tl.float64) * h_max_prev) + _EPS, s0 * norm)
    s1 = tl.where((adapt_clip != 0) & (t > 1), protect, 1.0)
    s = s0 * s1
    big_g = s * s * s_gg
    exploding = (t >= 1) & (big_g >= h_max_prev)  # against the previous h_max, before it is updated
    gn2_avg = beta * tl.load(tuner + _GRAD_NORM_SQUARED_AVG) + (1.0 - beta) * big_g

    # zero-debias factor b_t = 1 − β^(t+1); sparsity and force_non_inc_step debias even without zero_debias
    debias = 1.0 - pow_f64(beta, t + 1.0)
    b = tl.where(zero_debias != 0, debias, 1.0)
    sparsity_avg = tl.load(tuner + _SPARSITY_AVG)
    density = tl.full([], 1.0, dtype=tl.float64)
    if sparsity_debias:
        sparsity_avg = beta * sparsity_avg + (1.0 - beta) * tl.where(numel > 0, nnz / numel, 1.0)
        density = sparsity_avg / debias

    # §2.5 curvature range over the first min(W, t + 1) window entries; G goes to slot t mod W.
    idx = tl.arange(0, WP)
    in_window = idx < width
    win = tl.load(tuner + _WINDOW + idx, mask=in_window, other=0.0)
    width64 = width.to(tl.float64)
    win = tl.where(idx.to(tl.float64) == t - tl.floor(t / width64) * width64, big_g, win)
    valid = in_window & (idx.to(tl.float64) <= t)
    window_min = tl.min(tl.where(valid, win, float("inf")), axis=0)
    window_max = tl.max(tl.where(valid, win, -float("inf")), axis=0)
    h_min_avg, h_min = _smoothed_extreme(tl.load(tuner + _H_MIN_AVG), window_min, beta, b, density,
                                         h_min_log_smooth)
    h_max_avg, h_max = _smoothed_extreme(tl.load(tuner + _H_MAX_AVG), window_max, beta, b, density,
                                         h_max_log_smooth)

    # §2.6 variance from the expanded Σḡ_new² (two-pass plan); rounding may push A a hair below 0.
    a_new = beta * beta * s_aa + 2.0 * beta * (1.0 - beta) * s * s_ag + (1.0 - beta) * (1.0 - beta) * big_g
    a_new = tl.maximum(a_new, 0.0, propagate_nan=tl.PropagateNan.ALL)
    eps = scalar(_EPS, tl.float64)
    grad_var = tl.maximum(gn2_avg / b - a_new / (b * b), eps, propagate_nan=tl.PropagateNan.ALL) * density

    # §2.7 distance to the optimum.
    gn_avg = beta * tl.load(tuner + _GRAD_NORM_AVG) + (1.0 - beta) * tl.sqrt(big_g)
    dist_avg = beta * tl.load(tuner + _DIST_TO_OPT_AVG) + (1.0 - beta) * gn_avg / (gn2_avg + _EPS)
    dist = dist_avg / b
    if sparsity_debias:
        dist = dist / (tl.sqrt(density) + _EPS)

    # §2.8 / §3 tuning from t = 1 on; step 0 keeps the constructor's lr and μ.
    d_eps = dist + _EPS
    h_eps = h_min + _EPS
    p = d_eps * d_eps * (h_eps * h_eps) / 2.0 / (grad_var + _EPS)
    ratio = tl.maximum((h_max + _EPS) / (h_min + _EPS), 1.0 + eps, propagate_nan=tl.PropagateNan.ALL)
    root = tl.sqrt(ratio)
    mu_lo = (root - 1.0) / (root + 1.0)
    x = _cubic_root(p)
    mu_new = tl.maximum(x * x, mu_lo * mu_lo, propagate_nan=tl.PropagateNan.ALL)
    one_minus_x = 1.0 - tl.sqrt(mu_new)
    lr_new = one_minus_x * one_minus_x / (h_min + _EPS)
    lr_new = tl.minimum(lr_new, lr_new * (t + 1.0) / (10.0 * width64), propagate_nan=tl.PropagateNan.ALL)
    tuned = t > 0
    mu_t = tl.where(tuned, mu_new, tl.load(tuner + _MU_T))
    lr_t = tl.where(tuned, lr_new, tl.load(tuner + _LR_T))
    lr_avg = tl.where(tuned, beta * tl.load(tuner + _LR) + (1.0 - beta) * lr_t, tl.load(tuner + _LR))
    mu_avg = tl.where(tuned, beta * tl.load(tuner + _MU) + (1.0 - beta) * mu_t, tl.load(tuner + _MU))

    # §2.9 the lr the step applies.
    log_g = tl.load(tuner + _GRAD_NORM_SQUARED_AVG_LOG)
    lr_g = tl.load(tuner + _LR_GRAD_NORM_AVG)
    lr_g_min = tl.load(tuner + _LR_GRAD_NORM_AVG_MIN)
    applied = tl.load(tuner + _APPLIED_LR)
    if force_non_inc_step:
        late = t > width64  # only for t > W; before that the applied lr keeps its value
        new_log_g = beta * log_g + (1.0 - beta) * tl.log(big_g + _EPS)
        new_lr_g = beta * lr_g + (1.0 - beta) * tl.log(lr_avg * tl.sqrt(big_g) + _EPS)
        new_min = tl.exp(new_lr_g / debias)
        new_min = tl.where(t == width64 + 1.0, new_min,
                           tl.minimum(lr_g_min, new_min, propagate_nan=tl.PropagateNan.ALL))
        capped = tl.minimum(lr_avg * lr_factor, 2.0 * new_min / (tl.sqrt(tl.exp(new_log_g / debias)) + _EPS),
                            propagate_nan=tl.PropagateNan.ALL)
        log_g = tl.where(late, new_log_g, log_g)
        lr_g = tl.where(late, new_lr_g, lr_g)
        lr_g_min = tl.where(late, new_min, lr_g_min)
        applied = tl.where(late, capped, applied)
    else:
        applied = lr_t * lr_factor
        move = scalar(catastrophic_move_thresh, tl.float64)
        if adapt_clip:  # bound the move lr·‖g‖ by catastrophic_move_thresh
            applied = tl.where(applied * tl.sqrt(big_g) >= move, move / tl.sqrt(big_g + _EPS), applied)

    # §2.11 exploding-gradient clip to √h_max_prev: only the SGD step sees it.
    s2 = tl.where((adapt_clip != 0) & exploding, _clip_coef(tl.sqrt(h_max_prev) + _EPS, tl.sqrt(big_g)), 1.0)

    if _skipped(stats, n_rows, inf_ptr):
        tl.store(lr_out, tl.load(tuner + _APPLIED_LR))
        tl.store(mu_out, tl.load(tuner + _MU_T))
    else:
        tl.store(tuner + _WINDOW + idx, win, mask=in_window)
        tl.store(tuner + _ITER, t + 1.0)
        tl.store(tuner + _LR_T, lr_t)
        tl.store(tuner + _MU_T, mu_t)
        tl.store(tuner + _LR, lr_avg)
        tl.store(tuner + _MU, mu_avg)
        tl.store(tuner + _APPLIED_LR, applied)
        tl.store(tuner + _H_MIN_AVG, h_min_avg)
        tl.store(tuner + _H_MAX_AVG, h_max_avg)
        tl.store(tuner + _H_MIN, h_min)
        tl.store(tuner + _H_MAX, h_max)
        tl.store(tuner + _GRAD_NORM_SQUARED, big_g)
        tl.store(tuner + _GRAD_NORM_SQUARED_AVG, gn2_avg)
        tl.store(tuner + _GRAD_NORM_AVG, gn_avg)
        tl.store(tuner + _DIST_TO_OPT_AVG, dist_avg)
        tl.store(tuner + _GRAD_VAR, grad_var)
        tl.store(tuner + _DIST_TO_OPT, dist)
        tl.store(tuner + _SPARSITY_AVG, sparsity_avg)
        tl.store(tuner + _LR_GRAD_NORM_AVG, lr_g)
        tl.store(tuner + _LR_GRAD_NORM_AVG_MIN, lr_g_min)
        tl.store(tuner + _GRAD_NORM_SQUARED_AVG_LOG, log_g)
        tl.store(tuner + _STATS_COEF, s * inv)
        tl.store(tuner + _STEP_COEF, s * s2 * inv)
        tl.store(tuner + _GRAD_UNSCALE, inv)
        tl.store(lr_out, applied)
        tl.store(mu_out, mu_t)


def yellowfin_tune_triton(tuner: Tensor, stats: Tensor, numel: float, beta: float, curv_win_width: int,
                          zero_debias: bool, sparsity_debias: bool, clip_thresh: float, auto_clip_fac: float,
                          adapt_clip: bool, stat_protect_fac: float, catastrophic_move_thresh: float,
                          force_non_inc_step: bool, h_min_log_smooth: bool, h_max_log_smooth: bool,
                          grad_scale: Tensor | None, found_inf: Tensor | None) -> tuple[Tensor, Tensor]:
    """Triton `yellowfin_tune_` (see agd_kernels.ops.yellowfin_tune_): one program, fp64."""
    op = "yellowfin_tune_"
    device = tuner.device
    if curv_win_width < 1:
        raise ValueError(f"{op}: curv_win_width must be >= 1; got {curv_win_width}")
    if tuner.dtype != torch.float64 or tuner.numel() != len(SLOTS) + curv_win_width or not tuner.is_contiguous():
        raise ValueError(f"{op}: tuner must be a contiguous float64 tensor of {len(SLOTS)} slots + curv_win_width "
                         f"= {len(SLOTS) + curv_win_width} values; got {tuner.dtype} with {tuner.numel()}")
    _check_stats(op, stats, device)
    scale, inf = mt.amp_scalars(grad_scale, found_inf, device, op)
    lr = torch.empty((), dtype=torch.float64, device=device)
    mu = torch.empty((), dtype=torch.float64, device=device)
    wrap_triton(_yellowfin_tune_kernel)[(1,)](
        tuner, stats, stats.numel() // 4, numel, beta, curv_win_width, int(zero_debias), int(sparsity_debias),
        clip_thresh, auto_clip_fac, int(adapt_clip), stat_protect_fac, catastrophic_move_thresh,
        int(force_non_inc_step), int(h_min_log_smooth), int(h_max_log_smooth), scale, inf, lr, mu,
        WP=triton.next_power_of_2(curv_win_width), num_warps=1)
    return lr, mu


def _check_stats(op: str, stats: Tensor, device: torch.device) -> None:
    if stats.dtype != torch.float64 or stats.numel() % 4 or stats.device != device or not stats.is_contiguous():
        raise ValueError(f"{op}: stats must be contiguous float64 rows of 4 sums on {device}; got {stats.dtype} "
                         f"of shape {list(stats.shape)} on {stats.device}")


# ------------------------------------------------------------------------------------------ apply
@triton.jit
def _yellowfin_apply_tile(p, g, model, a, buf, offs, mask, sums, lr, mu, heavy, beta, avg_coef, step_coef,
                          weight_decay, unscale, COPY: tl.constexpr, TELEMETRY: tl.constexpr):
    gv = load(g + offs, mask)
    pv = load(p + offs, mask)
    tl.store(a + offs, (load(a + offs, mask) * beta + avg_coef * gv).to(a.dtype.element_ty), mask=mask)
    d = step_coef * gv
    if weight_decay != 0:
        d = d + weight_decay * pv  # coupled decay, outside the statistics
    if heavy:
        # buffers start at zero: the first step with μ ≠ 0 gives μ·0 + d = d, torch's clone(d)
        d = mu * load(buf + offs, mask) + d
        tl.store(buf + offs, d.to(buf.dtype.element_ty), mask=mask)
    new = pv - lr * d
    store_param(p, model, offs, mask, new, COPY)
    # the loss's gradient: the raw one times the tune's 1/grad_scale
    return add_tile_sums(sums, pv, gv * unscale, new, p, mask, TELEMETRY)


@triton.jit
def _yellowfin_apply_chunk(p, g, model, a, buf, counter, numel, start, block, first_block, n_blocks, scratch, tel_row,
                           tuner, stats, n_rows, inf_ptr, beta, weight_decay, COPY: tl.constexpr,
                           TELEMETRY: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    beta = scalar(beta, tl.float64)
    mu = tl.load(tuner + _MU_T)
    scalars = (tl.load(tuner + _APPLIED_LR).to(tl.float32), mu.to(tl.float32), mu != 0, beta.to(tl.float32),
               ((1.0 - beta) * tl.load(tuner + _STATS_COEF)).to(tl.float32),
               tl.load(tuner + _STEP_COEF).to(tl.float32), scalar(weight_decay, tl.float32))
    unscale = tl.load(tuner + _GRAD_UNSCALE).to(tl.float32) if TELEMETRY else 1.0
    skipped = _skipped(stats, n_rows, inf_ptr)
    limit = tl.where(skipped, 0, numel)  # a skipped step: every element masked, nothing added
    sums = no_sums()
    for off in range(0, CHUNK, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        if start + off + BLOCK <= limit:
            sums = _yellowfin_apply_tile(p, g, model, a, buf, offs, None, sums, *scalars, unscale, COPY, TELEMETRY)
        else:
            sums = _yellowfin_apply_tile(p, g, model, a, buf, offs, offs < limit, sums, *scalars, unscale, COPY,
                                         TELEMETRY)
    if TELEMETRY:  # apply has no step counter: its arrival counters serve telemetry only
        store_sums(sums, scratch, block)
        if last_to_arrive(counter, n_blocks, ~skipped):
            add_tensor_sums(scratch, first_block, n_blocks, tel_row)


@triton.jit
def _yellowfin_apply_kernel(rows, grads, models, blocks, counters, scratch, telemetry, tuner, stats, n_rows, inf_ptr,
                            beta: "fp64", weight_decay, DTYPE: tl.constexpr, GDTYPE: tl.constexpr,
                            ALIGN: tl.constexpr, COPY: tl.constexpr, TELEMETRY: tl.constexpr, BLOCK: tl.constexpr,
                            CHUNK: tl.constexpr):
    t, start = program_chunk(blocks, CHUNK)
    row = rows + t * _APPLY_NCOL
    _yellowfin_apply_chunk(row_pointer(row, _P, DTYPE, ALIGN), row_pointer(grads, t, GDTYPE, ALIGN),
                           row_pointer(models, t, GDTYPE, ALIGN), row_pointer(row, _APPLY_AVG, DTYPE, ALIGN),
                           row_pointer(row, _BUF, DTYPE, ALIGN), counters + t, tl.load(row + mt.NUMEL), start,
                           tl.program_id(0), tl.load(row + mt.FIRST), tl.load(row + mt.NBLOCKS), scratch,
                           telemetry + t * 5, tuner, stats, n_rows, inf_ptr, beta, weight_decay, COPY, TELEMETRY,
                           BLOCK, CHUNK)


@triton.jit
def _yellowfin_apply_tensor_kernel(p, g, model, a, buf, counter, numel, scratch, telemetry, tensor, tuner, stats,
                                   n_rows, inf_ptr, beta: "fp64", weight_decay, COPY: tl.constexpr,
                                   TELEMETRY: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    block = tl.program_id(0)
    _yellowfin_apply_chunk(p, g, model, a, buf, counter, numel, block.to(tl.int64) * CHUNK, block, 0,
                           tl.num_programs(0), scratch, telemetry + tensor * 5, tuner, stats, n_rows, inf_ptr, beta,
                           weight_decay, COPY, TELEMETRY, BLOCK, CHUNK)


def yellowfin_apply_triton(params: list[Tensor], grads: list[Tensor], grad_avgs: list[Tensor],
                           momentum_buffers: list[Tensor], tuner: Tensor, stats: Tensor, beta: float,
                           weight_decay: float, found_inf: Tensor | None,
                           model_params: list[Tensor], telemetry: Tensor | None = None) -> None:
    """Triton `yellowfin_apply_` (see agd_kernels.ops.yellowfin_apply_)."""
    op = "yellowfin_apply_"
    _telemetry.check(op, telemetry, params)
    if not params:
        return
    mt.check_lists(op, params, {"grad_avgs": grad_avgs, "momentum_buffers": momentum_buffers}, grads=grads,
                   model_params=model_params)
    device = params[0].device
    if tuner.dtype != torch.float64 or tuner.numel() <= len(SLOTS) or tuner.device != device \
            or not tuner.is_contiguous():
        raise ValueError(f"{op}: tuner must be a contiguous float64 tensor of more than {len(SLOTS)} values on "
                         f"{device}; got {tuner.dtype} with {tuner.numel()} on {tuner.device}")
    _check_stats(op, stats, device)
    _, inf = mt.amp_scalars(None, found_inf, device, op)
    hyper = (tuner, stats, stats.numel() // 4, inf, beta, weight_decay)
    mt.launch_elementwise(op, _yellowfin_apply_kernel, _yellowfin_apply_tensor_kernel, params, grads,
                          [grad_avgs, momentum_buffers], None, hyper, model_params, telemetry)
