// The three YellowFin ops on the grid kernels (csrc/include/agd_kernels/grid/yellowfin.h), for any Device
// policy of host.h: one launch each.
#pragma once
#include <ATen/ops/empty.h>

#include <tuple>

#include "agd_kernels/grid/yellowfin.h"
#include "host.h"

namespace agd_kernels::grid {

template <class Device>
void check_fp64(const Device& dev, const char* op, const char* name, const at::Tensor& t) {
  check_device(dev, op, name, t);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kDouble, op, ": ", name, " must be float64; got ", t.scalar_type());
}

// stats: (buckets x 4) fp64 rows, contiguous (the kernels walk them in row order). Returns the row count.
template <class Device>
int64_t check_stats(const Device& dev, const char* op, const at::Tensor& stats) {
  check_fp64(dev, op, "stats", stats);
  TORCH_CHECK_VALUE(stats.numel() % 4 == 0, op, ": stats must hold rows of 4 values (one row per bucket); got shape ",
                    stats.sizes());
  TORCH_CHECK_VALUE(stats.is_contiguous(), op, ": stats must be contiguous; got strides ", stats.strides());
  return stats.numel() / 4;
}

template <class Device>
void yellowfin_stats(Device& dev, at::TensorList grads, at::TensorList grad_avgs, const at::Tensor& out) {
  constexpr const char* op = "yellowfin_stats_";
  // grad_avgs lead (the dtype the kernel computes in): grads share it, or are 16-bit beside fp32 ones.
  check_params(dev, op, grad_avgs, "grad_avgs");
  const at::ScalarType grad_dtype = check_grads(dev, op, grad_avgs, grads, "grad_avgs");
  check_fp64(dev, op, "out", out);
  TORCH_CHECK_VALUE(out.numel() == 4 && out.dim() == 1, op, ": out must be a 1-D tensor of 4 values; got shape ",
                    out.sizes());
  if (grads.empty()) {
    out.zero_();  // no tensors: zero sums, as the other backends write
    return;
  }
  int64_t blocks = 0;
  const Table table = make_table(dev, grads, {grads, grad_avgs}, at::TensorList(), &blocks);
  double* partials = dev.scratch_doubles(4 * blocks);
  dispatch_dtypes(grad_avgs[0].scalar_type(), grad_dtype, [&](auto tag, auto grad_tag) {
    using K = YellowfinStatsKernel<typename decltype(tag)::type, typename decltype(grad_tag)::type>;
    dev.template launch<K>(blocks, typename K::Args{table, partials, blocks, out.mutable_data_ptr<double>(),
                                                    out.stride(0)});
  });
}

template <class Device>
std::tuple<at::Tensor, at::Tensor> yellowfin_tune(
    Device& dev, const at::Tensor& tuner, const at::Tensor& stats, double numel, double beta, int64_t curv_win_width,
    bool zero_debias, bool sparsity_debias, double clip_thresh, double auto_clip_fac, bool adapt_clip,
    double stat_protect_fac, double catastrophic_move_thresh, bool force_non_inc_step, bool h_min_log_smooth,
    bool h_max_log_smooth, const OptionalTensor& grad_scale, const OptionalTensor& found_inf) {
  constexpr const char* op = "yellowfin_tune_";
  check_fp64(dev, op, "tuner", tuner);
  TORCH_CHECK_VALUE(curv_win_width >= 1, op, ": curv_win_width must be >= 1; got ", curv_win_width);
  TORCH_CHECK_VALUE(tuner.dim() == 1 && tuner.is_contiguous() && tuner.numel() == kYfSlots + curv_win_width, op,
                    ": tuner must be a contiguous 1-D tensor of ", kYfSlots, " slots + curv_win_width = ",
                    kYfSlots + curv_win_width, " values; got shape ", tuner.sizes());
  const int64_t rows = check_stats(dev, op, stats);
  const Scalar scale_s = device_scalar(dev, op, "grad_scale", grad_scale);
  const Scalar inf_s = device_scalar(dev, op, "found_inf", found_inf);
  const YellowfinConfig config{numel, beta, curv_win_width, zero_debias, sparsity_debias,
                               clip_thresh, auto_clip_fac, adapt_clip, stat_protect_fac, catastrophic_move_thresh,
                               force_non_inc_step, h_min_log_smooth, h_max_log_smooth};
  at::Tensor lr = at::empty({}, tuner.options()), mu = at::empty({}, tuner.options());
  dev.template launch<YellowfinTuneKernel>(
      1, YellowfinTuneKernel::Args{tuner.mutable_data_ptr<double>(), stats.const_data_ptr<double>(), rows, scale_s,
                                   inf_s, config, lr.mutable_data_ptr<double>(), mu.mutable_data_ptr<double>()});
  return {lr, mu};
}

template <class Device>
void yellowfin_apply(Device& dev, at::TensorList params, at::TensorList grads, at::TensorList grad_avgs,
                     at::TensorList momentum_buffers, const at::Tensor& tuner, const at::Tensor& stats, double beta,
                     double weight_decay, const OptionalTensor& found_inf, at::TensorList model_params,
                     const OptionalTensor& telemetry) {
  constexpr const char* op = "yellowfin_apply_";
  check_telemetry(dev, op, params, telemetry);
  check_lists(dev, op, params, {{"grad_avgs", grad_avgs}, {"momentum_buffers", momentum_buffers}});
  const at::ScalarType grad_dtype = check_grads_and_model_params(dev, op, params, grads, model_params);
  check_fp64(dev, op, "tuner", tuner);
  TORCH_CHECK_VALUE(tuner.dim() == 1 && tuner.is_contiguous() && tuner.numel() > kYfSlots, op,
                    ": tuner must be a contiguous 1-D tensor of ", kYfSlots, " slots and the window; got shape ",
                    tuner.sizes());
  const int64_t rows = check_stats(dev, op, stats);
  const Scalar inf_s = device_scalar(dev, op, "found_inf", found_inf);
  if (params.empty()) return;
  int64_t blocks = 0;
  const Table table = make_table(dev, params, {params, grads, grad_avgs, momentum_buffers, model_params},
                                 at::TensorList(), &blocks);
  const TelemetryOut tel_out = telemetry_out(dev, telemetry, blocks);
  dispatch_dtypes(params[0].scalar_type(), grad_dtype, [&](auto tag, auto grad_tag) {
    dispatch_bool(weight_decay != 0.0, [&](auto wd) {
      dispatch_bool(telemetry.has_value(), [&](auto tel) {
        using K = YellowfinApplyKernel<typename decltype(tag)::type, typename decltype(grad_tag)::type,
                                       decltype(wd)::value, decltype(tel)::value>;
        const auto tel_args = telemetry_args<decltype(tel)::value>(tel_out);
        dev.template launch<K>(blocks, typename K::Args{tel_args, table, tuner.const_data_ptr<double>(),
                                                        stats.const_data_ptr<double>(), rows, inf_s, beta,
                                                        weight_decay});
      });
    });
  });
}

}  // namespace agd_kernels::grid
