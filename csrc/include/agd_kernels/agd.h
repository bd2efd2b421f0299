// AGD (automatic gradient descent) scalar phase and per-element update (docs/agd.md §5 and §6).
// Phase A (per-slice sums of squares) is the slice_sumsq_ op; this header holds phase B (G, eta and one
// coefficient per slice) and phase C (p <- p - c * g).
#pragma once
#include "agd_kernels/common.h"

namespace agd_kernels {

// eta = log((1 + sqrt(1 + 4G)) / 2), evaluated as log1p(G / (1/2 + sqrt(1/4 + G))) like the reference
// (agd_kernels/reference/agd.py eta_from_g): no cancellation for small G (eta ~= G where the log form
// gives 0 below G = 1.5e-8 in fp32) and no overflow of 4G for large G. G = inf or NaN gives NaN.
AGDK_HOST_DEVICE double agd_eta(double G) { return log1p(G / (0.5 + sqrt(0.25 + G))); }

// Coefficient of one slice (a kernel tap, or a follower's pooled owner gradient): step * sv / ||g||,
// with step = gain * eta / depth. A sum of squares of exactly 0 gives 0, never NaN or a FLT_MAX-scaled
// step (decision 4); a NaN sum is not guarded and propagates (non-finite gradients are not hidden).
// The scale of g cancels against ||g||, so AMP gradients need no unscaling here.
template <typename M>
AGDK_HOST_DEVICE M agd_coefficient(M step, M sv, M sumsq) {
  const M norm = msqrt(sumsq);
  return norm == M(0) ? M(0) : step * sv / norm;
}

template <typename M>
AGDK_HOST_DEVICE void agd_element(M& p, M g, M coefficient) { p = p - coefficient * g; }

}  // namespace agd_kernels
