// SGD per-element math (torch.optim.SGD semantics, docs/torch_optim_semantics.md §2).
#pragma once
#include "agd_kernels/common.h"

namespace agd_kernels {

// Per-call scalars, rounded once from the fp64 hyper-parameters.
template <typename M>
struct SgdScalars {
  M grad_mul;      // 1/grad_scale (1 without AMP), negated when maximizing
  M weight_decay;  // L2 coefficient (used only when kWeightDecay)
  M momentum;
  M keep;          // 1 - dampening
  M lr;
  bool first_step;  // torch creates the buffer as clone(d) on the first step: no dampening then
  bool nesterov;
};

template <typename M>
AGDK_HOST_DEVICE SgdScalars<M> sgd_scalars(double lr, double momentum, double dampening, double weight_decay,
                                           bool nesterov, bool first_step, double grad_mul) {
  SgdScalars<M> s;
  s.grad_mul = static_cast<M>(grad_mul);
  s.weight_decay = static_cast<M>(weight_decay);
  s.momentum = static_cast<M>(momentum);
  s.keep = static_cast<M>(1.0 - dampening);
  s.lr = static_cast<M>(lr);
  s.first_step = first_step;
  s.nesterov = nesterov;
  return s;
}

// One element: p and (when kMomentum) buf are updated in place; g is the raw (scaled) gradient.
template <bool kWeightDecay, bool kMomentum, typename M>
AGDK_HOST_DEVICE void sgd_element(M& p, M g, M& buf, const SgdScalars<M>& s) {
  M d = g * s.grad_mul;
  if (kWeightDecay) d = d + s.weight_decay * p;
  if (kMomentum) {
    buf = s.first_step ? d : buf * s.momentum + s.keep * d;
    d = s.nesterov ? d + s.momentum * buf : buf;
  }
  p = p - s.lr * d;
}

}  // namespace agd_kernels
