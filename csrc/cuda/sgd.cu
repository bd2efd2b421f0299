// CUDA backend of agd_kernels::sgd_step_: the grid kernel SgdKernel (csrc/include/agd_kernels/grid/sgd.h),
// one launch per call.
#include <torch/library.h>

#include "../grid/elementwise_ops.h"
#include "device.cuh"

namespace agd_kernels::cuda {

void sgd_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                   const at::Tensor& lr, double momentum, double dampening, double weight_decay, bool nesterov,
                   bool maximize, bool is_first_step, const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& found_inf, at::TensorList model_params,
                   const std::optional<at::Tensor>& telemetry) {
  CudaDevice dev = device_of(params, lr);
  grid::sgd_step(dev, params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov, maximize,
                 is_first_step, grad_scale, found_inf, model_params, telemetry);
}

TORCH_LIBRARY_IMPL(agd_kernels, CUDA, m) { m.impl("sgd_step_", &sgd_step_cuda); }

}  // namespace agd_kernels::cuda
