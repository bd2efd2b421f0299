// Adam / AdamW / AMSGrad per-element math (torch.optim semantics, docs/torch_optim_semantics.md §5).
#pragma once
#include "agd_kernels/common.h"

namespace agd_kernels {

// Per-tensor scalars (the bias corrections depend on that tensor's step), rounded once from fp64.
template <typename M>
struct AdamScalars {
  M grad_mul;        // 1/grad_scale (1 without AMP), negated when maximizing
  M weight_decay;    // L2 coefficient (used only when kL2)
  M decay;           // 1 - lr*wd with decoupled weight decay (AdamW), else exactly 1
  M lerp_weight;     // 1 - beta1: m is lerped towards g, as torch does
  M beta2, one_minus_beta2;
  M bc2_sqrt;        // sqrt(1 - beta2^t)
  M step_size;       // lr / (1 - beta1^t)
  M eps;
};

// Bias corrections in fp64 from the step count t (already incremented), as torch computes them on the
// host from its step tensor; shared by the CPU loop and the CUDA kernels (which read t on the device).
template <typename M>
AGDK_HOST_DEVICE AdamScalars<M> adam_scalars(double lr, double t, double beta1, double beta2, double eps,
                                             double weight_decay, bool decoupled, double grad_mul) {
  AdamScalars<M> s;
  s.grad_mul = static_cast<M>(grad_mul);
  s.weight_decay = static_cast<M>(weight_decay);
  s.decay = static_cast<M>(decoupled ? 1.0 - lr * weight_decay : 1.0);
  s.lerp_weight = static_cast<M>(1.0 - beta1);
  s.beta2 = static_cast<M>(beta2);
  s.one_minus_beta2 = static_cast<M>(1.0 - beta2);
  s.bc2_sqrt = static_cast<M>(sqrt(1.0 - pow(beta2, t)));
  s.step_size = static_cast<M>(lr / (1.0 - pow(beta1, t)));
  s.eps = static_cast<M>(eps);
  return s;
}

// One element; p, m, v and (when kAmsgrad) vmax are updated in place. The operation order follows the
// reference (agd_kernels/reference/adam.py) so both round alike. kLerpFromEnd = lerp_from_end(1 - beta1).
template <bool kL2, bool kAmsgrad, bool kLerpFromEnd, typename M>
AGDK_HOST_DEVICE void adam_element(M& p, M g, M& m, M& v, M& vmax, const AdamScalars<M>& s) {
  g = g * s.grad_mul;
  p = p * s.decay;  // AdamW decays first, by lr*wd (not bias-corrected)
  if (kL2) g = g + s.weight_decay * p;
  m = torch_lerp<kLerpFromEnd>(m, g, s.lerp_weight);
  v = v * s.beta2 + s.one_minus_beta2 * g * g;
  M second = v;
  if (kAmsgrad) {
    vmax = max_nan(vmax, v);
    second = vmax;
  }
  const M denom = msqrt(second) / s.bc2_sqrt + s.eps;
  p = p - s.step_size * (m / denom);
}

}  // namespace agd_kernels
