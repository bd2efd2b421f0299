// CUDA backend of agd_kernels::adagrad_step_: the grid kernel AdagradKernel
// (csrc/include/agd_kernels/grid/adagrad.h), one launch per call.
#include <torch/library.h>

#include "../grid/elementwise_ops.h"
#include "device.cuh"

namespace agd_kernels::cuda {

void adagrad_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                       at::TensorList state_steps, const at::Tensor& lr, double lr_decay, double weight_decay,
                       double eps, bool maximize, const std::optional<at::Tensor>& grad_scale,
                       const std::optional<at::Tensor>& found_inf, at::TensorList model_params,
                       const std::optional<at::Tensor>& telemetry) {
  CudaDevice dev = device_of(params, lr);
  grid::adagrad_step(dev, params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize,
                     grad_scale, found_inf, model_params, telemetry);
}

TORCH_LIBRARY_IMPL(agd_kernels, CUDA, m) { m.impl("adagrad_step_", &adagrad_step_cuda); }

}  // namespace agd_kernels::cuda
