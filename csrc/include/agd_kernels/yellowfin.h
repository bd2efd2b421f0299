// YellowFin (docs/yellowfin.md §8-9): the scalar tuner step in fp64 and the per-element apply pass. The
// semantics, operation order and slot layout are those of agd_kernels/reference/yellowfin.py (its SLOTS
// tuple); the tuner runs on one thread (the CUDA kernels run it in a single-thread block).
#pragma once
#include "agd_kernels/common.h"

namespace agd_kernels {

// Slots of the fp64 tuner vector, in the order of reference/yellowfin.py SLOTS; the curvature window
// (curv_win_width raw ||g||^2 values) follows them.
enum YellowfinSlot : int {
  kYfIter, kYfLrFactor, kYfLrT, kYfMuT, kYfLr, kYfMu, kYfAppliedLr, kYfHMinAvg, kYfHMaxAvg, kYfHMin, kYfHMax,
  kYfGradNormSquared, kYfGradNormSquaredAvg, kYfGradNormAvg, kYfDistToOptAvg, kYfGradVar, kYfDistToOpt,
  kYfSparsityAvg, kYfLrGradNormAvg, kYfLrGradNormAvgMin, kYfGradNormSquaredAvgLog, kYfStatsCoef, kYfStepCoef,
  kYfGradUnscale, kYfSlots
};

struct YellowfinConfig {
  double numel, beta;
  int64_t curv_win_width;
  bool zero_debias, sparsity_debias;
  double clip_thresh, auto_clip_fac;  // <= 0: off
  bool adapt_clip;
  double stat_protect_fac, catastrophic_move_thresh;
  bool force_non_inc_step, h_min_log_smooth, h_max_log_smooth;
};

constexpr double kYfEps = 1e-6;                  // the reference's module constant
constexpr double kYfXMax = 0x1.fffffffffffffp-1;  // largest double below 1: x = sqrt(mu) < 1, so lr > 0

// torch.nn.utils.clip_grad_norm_'s factor: max_norm / (norm + 1e-6), at most 1.
AGDK_HOST_DEVICE double yf_clip_coef(double max_norm, double norm) { return min_nan(max_norm / (norm + 1e-6), 1.0); }

// x = sqrt(mu), the real root of p*x = (1 - x)^3, in the reference's Vieta form and eps placement,
// clamped into [0, kYfXMax]; a non-finite x (p^3 overflowing, p >~ 1e102, where x ~ 1/p) maps to 0.
AGDK_HOST_DEVICE double yf_cubic_root(double p) {
  const double w3 = (-sqrt(p * p + 4.0 / 27.0 * (p * p * p)) - p) / 2.0;
  const double w = copysign(pow(fabs(w3), 1.0 / 3.0), w3);
  const double x = w - p / 3.0 / (w + kYfEps) + 1.0;
  return isfinite(x) ? min_nan(max_nan(x, 0.0), kYfXMax) : 0.0;
}

// One tuner step from the statistics summed over every bucket, sums = [sum g^2, sum gbar*g, sum gbar^2,
// nnz(g)] of the raw (scaled) gradients. Returns false, changing nothing, when the step is skipped
// (found_inf, or a non-finite sum g^2: decision 6).
AGDK_HOST_DEVICE bool yellowfin_tune(double* tuner, const double* sums, double inv_scale, bool found_inf,
                                     const YellowfinConfig& c) {
  if (found_inf || !isfinite(sums[0])) return false;
  const double beta = c.beta, t = tuner[kYfIter], h_max_prev = tuner[kYfHMax];
  const double s_gg = sums[0] * inv_scale * inv_scale, s_ag = sums[1] * inv_scale, s_aa = sums[2];
  const double norm = sqrt(s_gg);
  double* win = tuner + kYfSlots;
  const int64_t W = c.curv_win_width;

  // §2.1-2.3: manual (or auto) clip s0, stat-protect clip s1, then G = ||s0*s1*g||^2.
  double s0 = 1.0;
  if (c.clip_thresh > 0) {
    s0 = yf_clip_coef(c.clip_thresh, norm);
  } else if (c.auto_clip_fac > 0 && t != 0) {
    s0 = yf_clip_coef(sqrt(h_max_prev) * c.auto_clip_fac, norm);
  }
  const double s1 =
      c.adapt_clip && t > 1 ? yf_clip_coef(sqrt(c.stat_protect_fac * h_max_prev) + kYfEps, s0 * norm) : 1.0;
  const double s = s0 * s1, G = s * s * s_gg;
  const bool exploding = t >= 1 && G >= h_max_prev;  // against the previous h_max, before it changes
  tuner[kYfGradNormSquared] = G;
  const double gn2_avg = tuner[kYfGradNormSquaredAvg] = beta * tuner[kYfGradNormSquaredAvg] + (1 - beta) * G;

  // Zero-debias b_t = 1 - beta^(t+1); sparsity and force_non_inc_step debias even without zero_debias.
  const double debias = 1 - pow(beta, t + 1);
  const double b = c.zero_debias ? debias : 1.0;
  double density = 1.0;
  if (c.sparsity_debias) {
    tuner[kYfSparsityAvg] = beta * tuner[kYfSparsityAvg] + (1 - beta) * (c.numel > 0 ? sums[3] / c.numel : 1.0);
    density = tuner[kYfSparsityAvg] / debias;
  }

  // §2.5 curvature range over the first min(W, t + 1) window entries; G goes to slot t mod W.
  win[static_cast<int64_t>(fmod(t, static_cast<double>(W)))] = G;
  double window_min = win[0], window_max = win[0];
  for (int64_t k = 1; k < W && k <= t; ++k) {
    window_min = min_nan(window_min, win[k]);
    window_max = max_nan(window_max, win[k]);
  }
  const double h_min_in = c.h_min_log_smooth ? log(window_min + kYfEps) : window_min;
  const double h_max_in = c.h_max_log_smooth ? log(window_max + kYfEps) : window_max;
  const double h_min_avg = tuner[kYfHMinAvg] = beta * tuner[kYfHMinAvg] + (1 - beta) * h_min_in;
  const double h_max_avg = tuner[kYfHMaxAvg] = beta * tuner[kYfHMaxAvg] + (1 - beta) * h_max_in;
  const double h_min = tuner[kYfHMin] = (c.h_min_log_smooth ? exp(h_min_avg / b) : h_min_avg / b) * density;
  const double h_max = tuner[kYfHMax] = (c.h_max_log_smooth ? exp(h_max_avg / b) : h_max_avg / b) * density;

  // §2.6 variance from the expanded sum of the new gbar^2 (two-pass plan), clamped at 0 against rounding.
  const double A = max_nan(beta * beta * s_aa + 2 * beta * (1 - beta) * s * s_ag + (1 - beta) * (1 - beta) * G, 0.0);
  const double C = tuner[kYfGradVar] = max_nan(gn2_avg / b - A / (b * b), kYfEps) * density;

  // §2.7 distance to the optimum.
  const double gn_avg = tuner[kYfGradNormAvg] = beta * tuner[kYfGradNormAvg] + (1 - beta) * sqrt(G);
  const double dist_avg = tuner[kYfDistToOptAvg] =
      beta * tuner[kYfDistToOptAvg] + (1 - beta) * gn_avg / (gn2_avg + kYfEps);
  double D = dist_avg / b;
  if (c.sparsity_debias) D = D / (sqrt(density) + kYfEps);
  tuner[kYfDistToOpt] = D;

  // §2.8 / §3 tuning from t = 1 on; step 0 keeps the constructor's lr and mu.
  if (t > 0) {
    const double p = (D + kYfEps) * (D + kYfEps) * ((h_min + kYfEps) * (h_min + kYfEps)) / 2 / (C + kYfEps);
    const double ratio = max_nan((h_max + kYfEps) / (h_min + kYfEps), 1 + kYfEps);
    const double mu_lo = ((sqrt(ratio) - 1) / (sqrt(ratio) + 1)) * ((sqrt(ratio) - 1) / (sqrt(ratio) + 1));
    const double x = yf_cubic_root(p);
    const double mu_t = max_nan(x * x, mu_lo);
    double lr_t = (1 - sqrt(mu_t)) * (1 - sqrt(mu_t)) / (h_min + kYfEps);
    lr_t = min_nan(lr_t, lr_t * (t + 1) / (10.0 * static_cast<double>(W)));  // slow start over 10*W steps
    tuner[kYfMuT] = mu_t;
    tuner[kYfLrT] = lr_t;
    tuner[kYfLr] = beta * tuner[kYfLr] + (1 - beta) * lr_t;
    tuner[kYfMu] = beta * tuner[kYfMu] + (1 - beta) * mu_t;
  }

  // §2.9 the lr the step applies.
  if (c.force_non_inc_step) {
    if (t > W) {  // before that the applied lr keeps its value (the constructor's lr)
      const double log_g = beta * tuner[kYfGradNormSquaredAvgLog] + (1 - beta) * log(G + kYfEps);
      const double lr_g = beta * tuner[kYfLrGradNormAvg] + (1 - beta) * log(tuner[kYfLr] * sqrt(G) + kYfEps);
      double lr_g_min = exp(lr_g / debias);
      if (t != static_cast<double>(W + 1)) lr_g_min = min_nan(tuner[kYfLrGradNormAvgMin], lr_g_min);
      tuner[kYfAppliedLr] =
          min_nan(tuner[kYfLr] * tuner[kYfLrFactor], 2 * lr_g_min / (sqrt(exp(log_g / debias)) + kYfEps));
      tuner[kYfGradNormSquaredAvgLog] = log_g;
      tuner[kYfLrGradNormAvg] = lr_g;
      tuner[kYfLrGradNormAvgMin] = lr_g_min;
    }
  } else {
    double applied = tuner[kYfLrT] * tuner[kYfLrFactor];
    if (c.adapt_clip && applied * sqrt(G) >= c.catastrophic_move_thresh) {  // bound the move lr*||g||
      applied = c.catastrophic_move_thresh / sqrt(G + kYfEps);
    }
    tuner[kYfAppliedLr] = applied;
  }

  // §2.11 exploding-gradient clip to sqrt(h_max_prev): only the SGD step sees it.
  const double s2 = c.adapt_clip && exploding ? yf_clip_coef(sqrt(h_max_prev) + kYfEps, sqrt(G)) : 1.0;
  tuner[kYfStatsCoef] = s * inv_scale;
  tuner[kYfStepCoef] = s * s2 * inv_scale;
  tuner[kYfGradUnscale] = inv_scale;  // telemetry's g: the loss's gradient (docs/telemetry.md)
  tuner[kYfIter] = t + 1;
  return true;
}

// Per-element scalars of the apply pass, read from the tuner after the tune step.
template <typename M>
struct YellowfinScalars {
  M beta;
  M avg_coef;      // (1 - beta) * stats_coef: raw gradient -> what gbar averages
  M step_coef;     // raw gradient -> what the SGD step uses (clips and 1/grad_scale folded in)
  M weight_decay;  // coupled, inside the SGD step only
  M mu, lr;
};

template <typename M>
AGDK_HOST_DEVICE YellowfinScalars<M> yellowfin_scalars(const double* tuner, double beta, double weight_decay) {
  YellowfinScalars<M> s;
  s.beta = static_cast<M>(beta);
  s.avg_coef = static_cast<M>((1 - beta) * tuner[kYfStatsCoef]);
  s.step_coef = static_cast<M>(tuner[kYfStepCoef]);
  s.weight_decay = static_cast<M>(weight_decay);
  s.mu = static_cast<M>(tuner[kYfMuT]);
  s.lr = static_cast<M>(tuner[kYfAppliedLr]);
  return s;
}

// gbar <- beta*gbar + (1 - beta)*c1*g; d = c2*g + wd*p; with momentum (kHeavy: mu != 0)
// buf <- mu*buf + d, p <- p - lr*buf (buffers start at 0, so the first such step gives torch's clone(d));
// without, p <- p - lr*d and buf is not touched.
template <bool kWeightDecay, bool kHeavy, typename M>
AGDK_HOST_DEVICE void yellowfin_element(M& p, M g, M& gbar, M& buf, const YellowfinScalars<M>& s) {
  gbar = gbar * s.beta + s.avg_coef * g;
  M d = s.step_coef * g;
  if (kWeightDecay) d = d + s.weight_decay * p;
  if (kHeavy) {
    buf = s.mu * buf + d;
    p = p - s.lr * buf;
  } else {
    p = p - s.lr * d;
  }
}

}  // namespace agd_kernels
