// CUDA backend of the YellowFin ops: the grid kernels YellowfinStatsKernel, YellowfinTuneKernel and
// YellowfinApplyKernel (csrc/include/agd_kernels/grid/yellowfin.h), one launch each.
#include <torch/library.h>

#include "../grid/yellowfin_ops.h"
#include "device.cuh"

namespace agd_kernels::cuda {

void yellowfin_stats_cuda(at::TensorList grads, at::TensorList grad_avgs, const at::Tensor& out) {
  CudaDevice dev = device_of(grads, out);
  grid::yellowfin_stats(dev, grads, grad_avgs, out);
}

std::tuple<at::Tensor, at::Tensor> yellowfin_tune_cuda(
    const at::Tensor& tuner, const at::Tensor& stats, double numel, double beta, int64_t curv_win_width,
    bool zero_debias, bool sparsity_debias, double clip_thresh, double auto_clip_fac, bool adapt_clip,
    double stat_protect_fac, double catastrophic_move_thresh, bool force_non_inc_step, bool h_min_log_smooth,
    bool h_max_log_smooth, const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  CudaDevice dev = device_of({}, tuner);
  return grid::yellowfin_tune(dev, tuner, stats, numel, beta, curv_win_width, zero_debias, sparsity_debias,
                              clip_thresh, auto_clip_fac, adapt_clip, stat_protect_fac, catastrophic_move_thresh,
                              force_non_inc_step, h_min_log_smooth, h_max_log_smooth, grad_scale, found_inf);
}

void yellowfin_apply_cuda(at::TensorList params, at::TensorList grads, at::TensorList grad_avgs,
                          at::TensorList momentum_buffers, const at::Tensor& tuner, const at::Tensor& stats,
                          double beta, double weight_decay, const std::optional<at::Tensor>& found_inf, at::TensorList model_params, const std::optional<at::Tensor>& telemetry) {
  CudaDevice dev = device_of(params, tuner);
  grid::yellowfin_apply(dev, params, grads, grad_avgs, momentum_buffers, tuner, stats, beta, weight_decay, found_inf, model_params, telemetry);
}

TORCH_LIBRARY_IMPL(agd_kernels, CUDA, m) {
  m.impl("yellowfin_stats_", &yellowfin_stats_cuda);
  m.impl("yellowfin_tune_", &yellowfin_tune_cuda);
  m.impl("yellowfin_apply_", &yellowfin_apply_cuda);
}

}  // namespace agd_kernels::cuda
