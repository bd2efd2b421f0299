// CUDA backend of agd_kernels::adam_step_: the grid kernel AdamKernel (csrc/include/agd_kernels/grid/adam.h),
// one launch per call whatever the number of tensors.
#include <torch/library.h>

#include "../grid/elementwise_ops.h"
#include "device.cuh"

namespace agd_kernels::cuda {

void adam_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                    const at::Tensor& lr, double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
                    bool maximize, bool decoupled_weight_decay, const std::optional<at::Tensor>& grad_scale,
                    const std::optional<at::Tensor>& found_inf, at::TensorList model_params,
                    const std::optional<at::Tensor>& telemetry) {
  CudaDevice dev = device_of(params, lr);
  grid::adam_step(dev, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2, eps,
                  weight_decay, amsgrad, maximize, decoupled_weight_decay, grad_scale, found_inf, model_params, telemetry);
}

TORCH_LIBRARY_IMPL(agd_kernels, CUDA, m) { m.impl("adam_step_", &adam_step_cuda); }

}  // namespace agd_kernels::cuda
