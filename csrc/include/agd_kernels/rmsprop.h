// RMSprop per-element math (torch.optim semantics, docs/torch_optim_semantics.md §3).
#pragma once
#include "agd_kernels/common.h"

namespace agd_kernels {

template <typename M>
struct RmspropScalars {
  M grad_mul;      // 1/grad_scale (1 without AMP), negated when maximizing
  M weight_decay;  // L2 coefficient (used only when kWeightDecay)
  M alpha, one_minus_alpha;
  M eps;           // added outside the sqrt, unlike TensorFlow
  M momentum;
  M lr;
};

template <typename M>
AGDK_HOST_DEVICE RmspropScalars<M> rmsprop_scalars(double lr, double alpha, double eps, double weight_decay,
                                                   double momentum, double grad_mul) {
  RmspropScalars<M> s;
  s.grad_mul = static_cast<M>(grad_mul);
  s.weight_decay = static_cast<M>(weight_decay);
  s.alpha = static_cast<M>(alpha);
  s.one_minus_alpha = static_cast<M>(1.0 - alpha);
  s.eps = static_cast<M>(eps);
  s.momentum = static_cast<M>(momentum);
  s.lr = static_cast<M>(lr);
  return s;
}

// How the centered variant tracks the gradient mean: not at all, or by a lerp anchored at its start or
// its end (lerp_from_end(1 - alpha)); one template parameter, so the plain variant has one instance.
enum RmspropCentering : int { kNotCentered, kCenteredLerpFromStart, kCenteredLerpFromEnd };

AGDK_HOST_DEVICE RmspropCentering rmsprop_centering(bool centered, double alpha) {
  return !centered ? kNotCentered : lerp_from_end(1.0 - alpha) ? kCenteredLerpFromEnd : kCenteredLerpFromStart;
}

// One element; p, v (square_avg), gavg (when centered) and buf (when kMomentum) are updated in place.
// The buffer starts at zeros (torch), so there is no first-step special case.
template <bool kWeightDecay, int kCentering, bool kMomentum, typename M>
AGDK_HOST_DEVICE void rmsprop_element(M& p, M g, M& v, M& gavg, M& buf, const RmspropScalars<M>& s) {
  g = g * s.grad_mul;
  if (kWeightDecay) g = g + s.weight_decay * p;
  v = v * s.alpha + s.one_minus_alpha * g * g;
  M denom;
  if (kCentering != kNotCentered) {
    gavg = torch_lerp<kCentering == kCenteredLerpFromEnd>(gavg, g, s.one_minus_alpha);
    denom = msqrt(v - gavg * gavg) + s.eps;
  } else {
    denom = msqrt(v) + s.eps;
  }
  if (kMomentum) {
    buf = buf * s.momentum + g / denom;
    p = p - s.lr * buf;
  } else {
    p = p - s.lr * (g / denom);
  }
}

}  // namespace agd_kernels
