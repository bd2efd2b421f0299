// Adagrad per-element math, dense gradients (torch.optim semantics, docs/torch_optim_semantics.md §4).
#pragma once
#include "agd_kernels/common.h"

namespace agd_kernels {

template <typename M>
struct AdagradScalars {
  M grad_mul;      // 1/grad_scale (1 without AMP), negated when maximizing
  M weight_decay;  // L2 coefficient (used only when kWeightDecay)
  M clr;           // lr / (1 + (t - 1) * lr_decay), per tensor because t is
  M eps;           // added outside the sqrt
};

template <typename M>
AGDK_HOST_DEVICE AdagradScalars<M> adagrad_scalars(double lr, double t, double lr_decay, double weight_decay,
                                                   double eps, double grad_mul) {
  AdagradScalars<M> s;
  s.grad_mul = static_cast<M>(grad_mul);
  s.weight_decay = static_cast<M>(weight_decay);
  s.clr = static_cast<M>(lr / (1.0 + (t - 1.0) * lr_decay));
  s.eps = static_cast<M>(eps);
  return s;
}

// One element; p and sum are updated in place.
template <bool kWeightDecay, typename M>
AGDK_HOST_DEVICE void adagrad_element(M& p, M g, M& sum, const AdagradScalars<M>& s) {
  g = g * s.grad_mul;
  if (kWeightDecay) g = g + s.weight_decay * p;
  sum = sum + g * g;
  p = p - s.clr * (g / (msqrt(sum) + s.eps));
}

}  // namespace agd_kernels
