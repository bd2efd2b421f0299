// CUDA backend of agd_kernels::lamb_moments_ and lamb_apply_: the grid kernels LambMomentsKernel and
// LambApplyKernel (csrc/include/agd_kernels/grid/lamb.h), one launch each; with slice_sumsq_, LAMB's step is 3.
#include <torch/library.h>

#include "../grid/lamb_ops.h"
#include "device.cuh"

namespace agd_kernels::cuda {

void lamb_moments_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                       at::TensorList exp_avg_sqs, at::TensorList state_steps, const at::Tensor& grad_sumsq,
                       const at::Tensor& norms, double max_grad_norm, double beta1, double beta2, double eps,
                       double weight_decay, bool bias_correction, bool grad_averaging, bool adam_w_mode,
                       const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& telemetry) {
  CudaDevice dev = device_of(params, norms);
  grid::lamb_moments(dev, params, grads, exp_avgs, exp_avg_sqs, state_steps, grad_sumsq, norms, max_grad_norm, beta1,
                     beta2, eps, weight_decay, bias_correction, grad_averaging, adam_w_mode, grad_scale, found_inf, telemetry);
}

void lamb_apply_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, at::TensorList state_steps, const at::Tensor& lr,
                     const at::Tensor& grad_sumsq, const at::Tensor& norms, double max_grad_norm, double beta1,
                     double beta2, double eps, double weight_decay, bool bias_correction, bool grad_averaging,
                     bool adam_w_mode, bool use_trust_ratio, double phi_min, double phi_max,
                     const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf, at::TensorList model_params, const std::optional<at::Tensor>& telemetry) {
  CudaDevice dev = device_of(params, norms);
  grid::lamb_apply(dev, params, grads, exp_avgs, exp_avg_sqs, state_steps, lr, grad_sumsq, norms, max_grad_norm,
                   beta1, beta2, eps, weight_decay, bias_correction, grad_averaging, adam_w_mode, use_trust_ratio,
                   phi_min, phi_max, grad_scale, found_inf, model_params, telemetry);
}

TORCH_LIBRARY_IMPL(agd_kernels, CUDA, m) {
  m.impl("lamb_moments_", &lamb_moments_cuda);
  m.impl("lamb_apply_", &lamb_apply_cuda);
}

}  // namespace agd_kernels::cuda
