// agd_kernels::lamb_moments_ and lamb_apply_ on the grid kernels (csrc/include/agd_kernels/grid/lamb.h),
// for any Device policy of host.h: one launch each.
#pragma once
#include "agd_kernels/grid/lamb.h"
#include "host.h"

namespace agd_kernels::grid {

// What both ops check before anything is written, but grads (each op checks those: only lamb_apply_ takes
// model_params). Returns whether the step counters are fp64.
template <class Device>
bool check_lamb(Device& dev, const char* op, at::TensorList params, at::TensorList exp_avgs,
                at::TensorList exp_avg_sqs, at::TensorList state_steps, const at::Tensor& grad_sumsq,
                const at::Tensor& norms) {
  check_lists(dev, op, params, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  const bool steps_fp64 = check_steps(dev, op, params, state_steps);
  check_device(dev, op, "grad_sumsq", grad_sumsq);
  TORCH_CHECK_TYPE(grad_sumsq.scalar_type() == at::kFloat || grad_sumsq.scalar_type() == at::kDouble, op,
                   ": grad_sumsq must be float32 (or float64); got ", grad_sumsq.scalar_type());
  TORCH_CHECK_VALUE(grad_sumsq.dim() == 1, op, ": grad_sumsq must be 1-D; got shape ", grad_sumsq.sizes());
  check_device(dev, op, "norms", norms);
  TORCH_CHECK_TYPE(norms.scalar_type() == at::kDouble || norms.scalar_type() == at::kFloat, op,
                   ": norms must be float64 (or float32); got ", norms.scalar_type());
  const int64_t slots = 2 * static_cast<int64_t>(params.size());
  TORCH_CHECK_VALUE(norms.dim() == 1 && norms.numel() == slots, op,
                    ": norms must be 1-D with 2 slots per tensor of params (", slots, "); got shape ", norms.sizes());
  TORCH_CHECK_VALUE(norms.is_contiguous(), op, ": norms must be contiguous (e.g. a narrow() of a 1-D buffer); got "
                    "strides ", norms.strides());
  return steps_fp64;
}

inline Vector vector_of(const at::Tensor& t) {
  return Vector{const_cast<void*>(t.const_data_ptr()), t.numel(), t.dim() == 1 ? t.stride(0) : 1,
                t.scalar_type() == at::kDouble};
}

template <class Fn>
void dispatch_lamb_decay(bool adam_w_mode, double weight_decay, Fn&& fn) {
  dispatch_bool(!adam_w_mode && weight_decay != 0.0, [&](auto l2) {
    dispatch_bool(adam_w_mode && weight_decay != 0.0, [&](auto decoupled) { fn(l2, decoupled); });
  });
}

template <class Device>
void lamb_moments(Device& dev, at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                  at::TensorList exp_avg_sqs, at::TensorList state_steps, const at::Tensor& grad_sumsq,
                  const at::Tensor& norms, double max_grad_norm, double beta1, double beta2, double eps,
                  double weight_decay, bool bias_correction, bool grad_averaging, bool adam_w_mode,
                  const OptionalTensor& grad_scale, const OptionalTensor& found_inf, const OptionalTensor& telemetry) {
  constexpr const char* op = "lamb_moments_";
  check_telemetry(dev, op, params, telemetry);
  const bool steps_fp64 = check_lamb(dev, op, params, exp_avgs, exp_avg_sqs, state_steps, grad_sumsq, norms);
  const at::ScalarType grad_dtype = check_grads(dev, op, params, grads);
  const Scalar scale_s = device_scalar(dev, op, "grad_scale", grad_scale);
  const Scalar inf_s = device_scalar(dev, op, "found_inf", found_inf);
  if (params.empty()) return;
  int64_t blocks = 0;
  const Table table = make_table(dev, params, {params, grads, exp_avgs, exp_avg_sqs, at::TensorList()}, state_steps,
                                 &blocks);
  double* partials = dev.scratch_doubles(2 * blocks);
  const TelemetryOut tel_out = telemetry_out(dev, telemetry, blocks);
  const LambHyper h{max_grad_norm, beta1, beta2, eps, weight_decay, bias_correction, grad_averaging, steps_fp64};
  dispatch_dtypes(params[0].scalar_type(), grad_dtype, [&](auto tag, auto grad_tag) {
    using T = typename decltype(tag)::type;
    using G = typename decltype(grad_tag)::type;
    dispatch_lamb_decay(adam_w_mode, weight_decay, [&](auto l2, auto decoupled) {
      dispatch_bool(telemetry.has_value(), [&](auto tel) {
        using K = LambMomentsKernel<T, G, decltype(l2)::value, decltype(decoupled)::value, decltype(tel)::value>;
        const auto tel_args = telemetry_args<decltype(tel)::value>(tel_out);
        dev.template launch<K>(blocks, typename K::Args{tel_args, table, vector_of(grad_sumsq), vector_of(norms),
                                                        partials, scale_s, inf_s, h});
      });
    });
  });
}

template <class Device>
void lamb_apply(Device& dev, at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_sqs, at::TensorList state_steps, const at::Tensor& lr,
                const at::Tensor& grad_sumsq, const at::Tensor& norms, double max_grad_norm, double beta1,
                double beta2, double eps, double weight_decay, bool bias_correction, bool grad_averaging,
                bool adam_w_mode, bool use_trust_ratio, double phi_min, double phi_max,
                const OptionalTensor& grad_scale, const OptionalTensor& found_inf, at::TensorList model_params,
                const OptionalTensor& telemetry) {
  constexpr const char* op = "lamb_apply_";
  check_telemetry(dev, op, params, telemetry);
  const bool steps_fp64 = check_lamb(dev, op, params, exp_avgs, exp_avg_sqs, state_steps, grad_sumsq, norms);
  const at::ScalarType grad_dtype = check_grads_and_model_params(dev, op, params, grads, model_params);
  const Scalar lr_s = device_scalar(dev, op, "lr", lr);
  const Scalar scale_s = device_scalar(dev, op, "grad_scale", grad_scale);
  const Scalar inf_s = device_scalar(dev, op, "found_inf", found_inf);
  if (params.empty()) return;
  int64_t blocks = 0;
  const Table table = make_table(dev, params, {params, grads, exp_avgs, exp_avg_sqs, model_params}, state_steps,
                                 &blocks);
  const TelemetryOut tel_out = telemetry_out(dev, telemetry, blocks);
  const LambHyper h{max_grad_norm, beta1, beta2, eps, weight_decay, bias_correction, grad_averaging, steps_fp64};
  dispatch_dtypes(params[0].scalar_type(), grad_dtype, [&](auto tag, auto grad_tag) {
    using T = typename decltype(tag)::type;
    using G = typename decltype(grad_tag)::type;
    dispatch_lamb_decay(adam_w_mode, weight_decay, [&](auto l2, auto decoupled) {
      dispatch_bool(telemetry.has_value(), [&](auto tel) {
        using K = LambApplyKernel<T, G, decltype(l2)::value, decltype(decoupled)::value, decltype(tel)::value>;
        const auto tel_args = telemetry_args<decltype(tel)::value>(tel_out);
        dev.template launch<K>(blocks, typename K::Args{tel_args, table, vector_of(grad_sumsq), vector_of(norms), lr_s,
                                                        scale_s, inf_s, h, use_trust_ratio, phi_min, phi_max});
      });
    });
  });
}

}  // namespace agd_kernels::grid
