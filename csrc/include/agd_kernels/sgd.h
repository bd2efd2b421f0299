// SGD per-element math (torch.optim.SGD semantics, specs/torch-optim-semantics.md §2).
#pragma once
#include "agd_kernels/common.h"

namespace agd_kernels {

template <typename M>
struct SgdArgs {
  M lr, momentum, dampening, weight_decay;
  M inv_grad_scale;  // 1 / grad_scale, or 1 without AMP
  bool nesterov, maximize, first_step, has_momentum;
};

// One element: p and (when has_momentum) buf are updated in place; g is the raw gradient.
template <typename M>
AGDK_HOST_DEVICE void sgd_element(M& p, M g, M& buf, const SgdArgs<M>& a) {
  M d = g * a.inv_grad_scale;
  if (a.maximize) d = -d;
  if (a.weight_decay != M(0)) d += a.weight_decay * p;
  if (a.has_momentum) {
    // torch creates the buffer as clone(d) on the first step: no dampening then.
    buf = a.first_step ? d : a.momentum * buf + (M(1) - a.dampening) * d;
    d = a.nesterov ? d + a.momentum * buf : buf;
  }
  p -= a.lr * d;
}

}  // namespace agd_kernels
