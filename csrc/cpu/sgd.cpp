// CPU backend of agd_kernels::sgd_step_ (schema in agd_kernels/ops.py).
#include <torch/library.h>

#include "agd_kernels/sgd.h"
#include "multi_tensor.h"

namespace agd_kernels::cpu {

void sgd_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, const at::Tensor& lr,
                  double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
                  bool is_first_step, const std::optional<at::Tensor>& grad_scale,
                  const std::optional<at::Tensor>& found_inf) {
  const bool has_momentum = momentum != 0.0;
  check_like("sgd_step_", "params", params, params);
  check_like("sgd_step_", "grads", params, grads);
  if (has_momentum) check_like("sgd_step_", "momentum_buffers", params, momentum_buffers);
  if (params.empty() || should_skip(found_inf)) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "sgd_step_cpu", [&] {
    using M = math_t<scalar_t>;
    const SgdArgs<M> a{static_cast<M>(lr.item<double>()), static_cast<M>(momentum), static_cast<M>(dampening),
                       static_cast<M>(weight_decay), static_cast<M>(inv_scale(grad_scale)), nesterov, maximize,
                       is_first_step, has_momentum};
    for_each_chunk(params, [&](int64_t t, int64_t begin, int64_t end) {
      scalar_t* p = params[t].data_ptr<scalar_t>();
      const scalar_t* g = grads[t].data_ptr<scalar_t>();
      scalar_t* b = has_momentum ? momentum_buffers[t].data_ptr<scalar_t>() : nullptr;
      for (int64_t i = begin; i < end; ++i) {
        M pv = load(p, i), bv = b ? load(b, i) : M(0);
        sgd_element(pv, load(g, i), bv, a);
        store(p, i, pv);
        if (b) store(b, i, bv);
      }
    });
  });
}

TORCH_LIBRARY_IMPL(agd_kernels, CPU, m) { m.impl("sgd_step_", &sgd_step_cpu); }

}  // namespace agd_kernels::cpu
