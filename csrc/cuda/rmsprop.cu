// CUDA backend of agd_kernels::rmsprop_step_: the grid kernel RmspropKernel
// (csrc/include/agd_kernels/grid/rmsprop.h), one launch per call.
#include <torch/library.h>

#include "../grid/elementwise_ops.h"
#include "device.cuh"

namespace agd_kernels::cuda {

void rmsprop_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                       at::TensorList grad_avgs, at::TensorList momentum_buffers, at::TensorList state_steps,
                       const at::Tensor& lr, double alpha, double eps, double weight_decay, double momentum,
                       bool centered, bool maximize, const std::optional<at::Tensor>& grad_scale,
                       const std::optional<at::Tensor>& found_inf, at::TensorList model_params,
                       const std::optional<at::Tensor>& telemetry) {
  CudaDevice dev = device_of(params, lr);
  grid::rmsprop_step(dev, params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, lr, alpha, eps,
                     weight_decay, momentum, centered, maximize, grad_scale, found_inf, model_params, telemetry);
}

TORCH_LIBRARY_IMPL(agd_kernels, CUDA, m) { m.impl("rmsprop_step_", &rmsprop_step_cuda); }

}  // namespace agd_kernels::cuda
