// LAMB per-element math and trust ratio (docs/lamb.md §3, apex FusedLAMB semantics; the op order
// follows agd_kernels/reference/lamb.py). Two element stages, one per op: lamb_moments_ (the moments, and u
// for the norms) and lamb_apply_ (the trust-scaled step, which recomputes u, so the gradient is never
// overwritten).
#pragma once
#include "agd_kernels/common.h"

namespace agd_kernels {

// Deferred moments (part of the ops' spec): 16-bit m and v round when stored, while u must come from the
// unrounded moments; recomputing u from stored fp16 moments moved parameters by up to 5.8e3 (a v that
// rounds to 0 under eps = 1e-6). So for 16-bit types lamb_moments_ leaves m and v alone and lamb_apply_
// recomputes them from the old state (one more read of g, 2 B per element). fp32/fp64 store them in
// lamb_moments_ and lamb_apply_ reads them back: storing rounds nothing there, so both see the same u.
template <typename T>
constexpr bool kLambDeferMoments = sizeof(T) == 2;

template <typename M>
struct LambScalars {
  M grad_mul;      // 1 / (grad_scale * clip divisor k), the factor from the raw gradient to gs
  M weight_decay;  // L2 (kL2) or decoupled (kDecoupled) coefficient
  M beta1, beta3;  // beta3 = 1 - beta1 with grad_averaging, else 1
  M beta2, one_minus_beta2;
  M bc1, bc2;      // 1 - beta^t with bias correction, else 1
  M eps;           // outside the sqrt of v / bc2
};

template <typename M>
AGDK_HOST_DEVICE LambScalars<M> lamb_scalars(double t, double beta1, double beta2, double eps, double weight_decay,
                                             bool bias_correction, bool grad_averaging, double grad_mul) {
  LambScalars<M> s;
  s.grad_mul = static_cast<M>(grad_mul);
  s.weight_decay = static_cast<M>(weight_decay);
  s.beta1 = static_cast<M>(beta1);
  s.beta3 = static_cast<M>(grad_averaging ? 1.0 - beta1 : 1.0);
  s.beta2 = static_cast<M>(beta2);
  s.one_minus_beta2 = static_cast<M>(1.0 - beta2);
  s.bc1 = static_cast<M>(bias_correction ? 1.0 - pow(beta1, t) : 1.0);
  s.bc2 = static_cast<M>(bias_correction ? 1.0 - pow(beta2, t) : 1.0);
  s.eps = static_cast<M>(eps);
  return s;
}

// Global clip divisor: k = N / max_grad_norm when N = sqrt(sum g^2) / grad_scale exceeds max_grad_norm,
// else 1. A NaN N fails the comparison (k = 1) and an inf N gives k = inf: either way the non-finite
// values propagate, as in apex. max_grad_norm = inf never clips.
AGDK_HOST_DEVICE double lamb_clip_divisor(double grad_sumsq, double max_grad_norm, double grad_scale) {
  const double norm = sqrt(grad_sumsq) / grad_scale;
  return norm > max_grad_norm ? norm / max_grad_norm : 1.0;
}

// Trust ratio clamp(||p||, phi_min, phi_max) / ||u||, 1 when either norm is 0 (tested with != 0, as
// apex does, so a NaN norm gives a NaN ratio).
AGDK_HOST_DEVICE double lamb_trust_ratio(double p_sumsq, double u_sumsq, double phi_min, double phi_max) {
  const double p_norm = sqrt(p_sumsq), u_norm = sqrt(u_sumsq);
  const double phi = p_norm < phi_min ? phi_min : (p_norm > phi_max ? phi_max : p_norm);
  return p_norm != 0.0 && u_norm != 0.0 ? phi / u_norm : 1.0;
}

// lamb_moments_: m and v updated in place from the clipped gradient (+ L2 decay after the clip, apex mode 0).
template <bool kL2, typename M>
AGDK_HOST_DEVICE void lamb_moments(M p, M g, M& m, M& v, const LambScalars<M>& s) {
  g = g * s.grad_mul;
  if (kL2) g = g + s.weight_decay * p;
  m = m * s.beta1 + s.beta3 * g;
  v = v * s.beta2 + s.one_minus_beta2 * g * g;
}

// The update direction u = m_hat / (sqrt(v_hat) + eps) (+ decoupled decay, apex mode 1).
template <bool kDecoupled, typename M>
AGDK_HOST_DEVICE M lamb_direction(M p, M m, M v, const LambScalars<M>& s) {
  M u = (m / s.bc1) / (msqrt(v / s.bc2) + s.eps);
  if (kDecoupled) u = u + s.weight_decay * p;
  return u;
}

// lamb_apply_: step_size = lr * trust ratio of this tensor.
template <typename M>
AGDK_HOST_DEVICE void lamb_apply(M& p, M u, M step_size) { p = p - step_size * u; }

}  // namespace agd_kernels
