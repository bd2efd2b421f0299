// The CPU kernels of the ops. Their types are the ops' C++ signatures (schemas in agd_kernels/ops.py):
// csrc/op_call.cpp calls each op through the dispatcher with exactly this type, and the dispatcher checks
// it against the schema on the first call. Every csrc/cpu/*.cpp includes this header, so a definition
// that drifts from its declaration makes its TORCH_LIBRARY_IMPL's `&fn` ambiguous and fails the build.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace agd_kernels::cpu {

using OptionalTensor = std::optional<at::Tensor>;

void slice_sumsq_cpu(at::TensorList tensors, const at::Tensor& out);

void adam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                   at::TensorList max_exp_avg_sqs, at::TensorList state_steps, const at::Tensor& lr, double beta1,
                   double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
                   bool decoupled_weight_decay, const OptionalTensor& grad_scale, const OptionalTensor& found_inf, at::TensorList model_params,
                   const OptionalTensor& telemetry);

void sgd_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, const at::Tensor& lr,
                  double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
                  bool is_first_step, const OptionalTensor& grad_scale, const OptionalTensor& found_inf, at::TensorList model_params,
                  const OptionalTensor& telemetry);

void rmsprop_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                      at::TensorList grad_avgs, at::TensorList momentum_buffers, at::TensorList state_steps,
                      const at::Tensor& lr, double alpha, double eps, double weight_decay, double momentum,
                      bool centered, bool maximize, const OptionalTensor& grad_scale, const OptionalTensor& found_inf, at::TensorList model_params,
                      const OptionalTensor& telemetry);

void adagrad_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                      at::TensorList state_steps, const at::Tensor& lr, double lr_decay, double weight_decay,
                      double eps, bool maximize, const OptionalTensor& grad_scale, const OptionalTensor& found_inf, at::TensorList model_params,
                      const OptionalTensor& telemetry);

std::tuple<at::Tensor, at::Tensor> agd_step_cpu(at::TensorList params, at::TensorList grads, const at::Tensor& sumsq,
                                                const at::Tensor& slice_sv, at::IntArrayRef slice_start,
                                                at::IntArrayRef slice_count, int64_t depth, double gain,
                                                const OptionalTensor& grad_scale, const OptionalTensor& found_inf, at::TensorList model_params, const OptionalTensor& telemetry);

void lamb_moments_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList state_steps, const at::Tensor& grad_sumsq,
                      const at::Tensor& norms, double max_grad_norm, double beta1, double beta2, double eps,
                      double weight_decay, bool bias_correction, bool grad_averaging, bool adam_w_mode,
                      const OptionalTensor& grad_scale, const OptionalTensor& found_inf, const OptionalTensor& telemetry);

void lamb_apply_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                    at::TensorList state_steps, const at::Tensor& lr, const at::Tensor& grad_sumsq,
                    const at::Tensor& norms, double max_grad_norm, double beta1, double beta2, double eps,
                    double weight_decay, bool bias_correction, bool grad_averaging, bool adam_w_mode,
                    bool use_trust_ratio, double phi_min, double phi_max, const OptionalTensor& grad_scale,
                    const OptionalTensor& found_inf, at::TensorList model_params, const OptionalTensor& telemetry);

void yellowfin_stats_cpu(at::TensorList grads, at::TensorList grad_avgs, const at::Tensor& out);

std::tuple<at::Tensor, at::Tensor> yellowfin_tune_cpu(
    const at::Tensor& tuner, const at::Tensor& stats, double numel, double beta, int64_t curv_win_width,
    bool zero_debias, bool sparsity_debias, double clip_thresh, double auto_clip_fac, bool adapt_clip,
    double stat_protect_fac, double catastrophic_move_thresh, bool force_non_inc_step, bool h_min_log_smooth,
    bool h_max_log_smooth, const OptionalTensor& grad_scale, const OptionalTensor& found_inf);

void yellowfin_apply_cpu(at::TensorList params, at::TensorList grads, at::TensorList grad_avgs,
                         at::TensorList momentum_buffers, const at::Tensor& tuner, const at::Tensor& stats,
                         double beta, double weight_decay, const OptionalTensor& found_inf, at::TensorList model_params, const OptionalTensor& telemetry);

void stochastic_round_cpu(at::TensorList dst, at::TensorList src, const at::Tensor& seed, at::TensorList steps,
                          at::IntArrayRef offsets);

}  // namespace agd_kernels::cpu
