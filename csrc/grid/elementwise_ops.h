// The elementwise optimizer ops (Adam family, SGD, RMSprop, Adagrad) on the grid kernels, for any Device
// policy of host.h: checks, one table, one launch. Signatures are the ops' schemas (agd_kernels/ops.py);
// the CUDA build instantiates them in csrc/cuda/*.cu, the emulator in csrc/testing/emulated_ops.cpp.
#pragma once
#include "agd_kernels/grid/adagrad.h"
#include "agd_kernels/grid/adam.h"
#include "agd_kernels/grid/rmsprop.h"
#include "agd_kernels/grid/sgd.h"
#include "host.h"

namespace agd_kernels::grid {

template <class Device>
void adam_step(Device& dev, at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
               at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
               const at::Tensor& lr, double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
               bool maximize, bool decoupled_weight_decay, const OptionalTensor& grad_scale,
               const OptionalTensor& found_inf, at::TensorList model_params, const OptionalTensor& telemetry) {
  constexpr const char* op = "adam_step_";
  check_lists(dev, op, params, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs},
                                {amsgrad ? "max_exp_avg_sqs" : nullptr, max_exp_avg_sqs}});
  const at::ScalarType grad_dtype = check_grads_and_model_params(dev, op, params, grads, model_params);
  check_telemetry(dev, op, params, telemetry);
  const bool steps_fp64 = check_steps(dev, op, params, state_steps);
  const Scalar lr_s = device_scalar(dev, op, "lr", lr);
  const Scalar scale_s = device_scalar(dev, op, "grad_scale", grad_scale);
  const Scalar inf_s = device_scalar(dev, op, "found_inf", found_inf);
  if (params.empty()) return;
  int64_t blocks = 0;
  const Table table = make_table(dev, params, {params, grads, exp_avgs, exp_avg_sqs,
                                               amsgrad ? max_exp_avg_sqs : at::TensorList(), model_params}, state_steps, &blocks);
  const TelemetryOut tel_out = telemetry_out(dev, telemetry, blocks);
  dispatch_dtypes(params[0].scalar_type(), grad_dtype, [&](auto tag, auto grad_tag) {
    using T = typename decltype(tag)::type;
    using G = typename decltype(grad_tag)::type;
    dispatch_bool(!decoupled_weight_decay && weight_decay != 0.0, [&](auto l2) {
      dispatch_bool(amsgrad, [&](auto ams) {
        dispatch_bool(lerp_from_end(1.0 - beta1), [&](auto from_end) {
          dispatch_bool(telemetry.has_value(), [&](auto tel) {
            using K = AdamKernel<T, G, decltype(l2)::value, decltype(ams)::value, decltype(from_end)::value,
                                 decltype(tel)::value>;
            const auto tel_args = telemetry_args<decltype(tel)::value>(tel_out);
            dev.template launch<K>(blocks, typename K::Args{tel_args, table, lr_s, scale_s, inf_s, beta1, beta2, eps,
                                                            weight_decay, decoupled_weight_decay, maximize,
                                                            steps_fp64});
          });
        });
      });
    });
  });
}

template <class Device>
void sgd_step(Device& dev, at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
              const at::Tensor& lr, double momentum, double dampening, double weight_decay, bool nesterov,
              bool maximize, bool is_first_step, const OptionalTensor& grad_scale, const OptionalTensor& found_inf,
              at::TensorList model_params, const OptionalTensor& telemetry) {
  constexpr const char* op = "sgd_step_";
  const bool has_momentum = momentum != 0.0;
  check_lists(dev, op, params, {{has_momentum ? "momentum_buffers" : nullptr, momentum_buffers}});
  const at::ScalarType grad_dtype = check_grads_and_model_params(dev, op, params, grads, model_params);
  check_telemetry(dev, op, params, telemetry);
  const Scalar lr_s = device_scalar(dev, op, "lr", lr);
  const Scalar scale_s = device_scalar(dev, op, "grad_scale", grad_scale);
  const Scalar inf_s = device_scalar(dev, op, "found_inf", found_inf);
  if (params.empty()) return;
  int64_t blocks = 0;
  const Table table = make_table(dev, params, {params, grads, has_momentum ? momentum_buffers : at::TensorList(),
                                               model_params}, at::TensorList(), &blocks);
  const TelemetryOut tel_out = telemetry_out(dev, telemetry, blocks);
  dispatch_dtypes(params[0].scalar_type(), grad_dtype, [&](auto tag, auto grad_tag) {
    using T = typename decltype(tag)::type;
    using G = typename decltype(grad_tag)::type;
    dispatch_bool(weight_decay != 0.0, [&](auto wd) {
      dispatch_bool(has_momentum, [&](auto mom) {
        dispatch_bool(telemetry.has_value(), [&](auto tel) {
          using K = SgdKernel<T, G, decltype(wd)::value, decltype(mom)::value, decltype(tel)::value>;
          const auto tel_args = telemetry_args<decltype(tel)::value>(tel_out);
          dev.template launch<K>(blocks, typename K::Args{tel_args, table, lr_s, scale_s, inf_s, momentum, dampening,
                                                          weight_decay, nesterov, maximize, is_first_step});
        });
      });
    });
  });
}

template <class Fn>
void dispatch_centering(RmspropCentering centering, Fn&& fn) {
  switch (centering) {
    case kNotCentered: return fn(std::integral_constant<int, kNotCentered>{});
    case kCenteredLerpFromStart: return fn(std::integral_constant<int, kCenteredLerpFromStart>{});
    case kCenteredLerpFromEnd: return fn(std::integral_constant<int, kCenteredLerpFromEnd>{});
  }
}

template <class Device>
void rmsprop_step(Device& dev, at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                  at::TensorList grad_avgs, at::TensorList momentum_buffers, at::TensorList state_steps,
                  const at::Tensor& lr, double alpha, double eps, double weight_decay, double momentum, bool centered,
                  bool maximize, const OptionalTensor& grad_scale, const OptionalTensor& found_inf,
                  at::TensorList model_params, const OptionalTensor& telemetry) {
  constexpr const char* op = "rmsprop_step_";
  const bool has_momentum = momentum > 0.0;
  check_lists(dev, op, params, {{"square_avgs", square_avgs},
                                {centered ? "grad_avgs" : nullptr, grad_avgs},
                                {has_momentum ? "momentum_buffers" : nullptr, momentum_buffers}});
  const at::ScalarType grad_dtype = check_grads_and_model_params(dev, op, params, grads, model_params);
  check_telemetry(dev, op, params, telemetry);
  const bool steps_fp64 = check_steps(dev, op, params, state_steps);
  const Scalar lr_s = device_scalar(dev, op, "lr", lr);
  const Scalar scale_s = device_scalar(dev, op, "grad_scale", grad_scale);
  const Scalar inf_s = device_scalar(dev, op, "found_inf", found_inf);
  if (params.empty()) return;
  int64_t blocks = 0;
  const Table table = make_table(dev, params, {params, grads, square_avgs, centered ? grad_avgs : at::TensorList(),
                                               has_momentum ? momentum_buffers : at::TensorList(), model_params},
                                 state_steps, &blocks);
  const TelemetryOut tel_out = telemetry_out(dev, telemetry, blocks);
  dispatch_dtypes(params[0].scalar_type(), grad_dtype, [&](auto tag, auto grad_tag) {
    using T = typename decltype(tag)::type;
    using G = typename decltype(grad_tag)::type;
    dispatch_bool(weight_decay != 0.0, [&](auto wd) {
      dispatch_centering(rmsprop_centering(centered, alpha), [&](auto cen) {
        dispatch_bool(has_momentum, [&](auto mom) {
          dispatch_bool(telemetry.has_value(), [&](auto tel) {
            using K = RmspropKernel<T, G, decltype(wd)::value, decltype(cen)::value, decltype(mom)::value,
                                    decltype(tel)::value>;
            const auto tel_args = telemetry_args<decltype(tel)::value>(tel_out);
            dev.template launch<K>(blocks, typename K::Args{tel_args, table, lr_s, scale_s, inf_s, alpha, eps, weight_decay,
                                                            momentum, maximize, steps_fp64});
          });
        });
      });
    });
  });
}

template <class Device>
void adagrad_step(Device& dev, at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                  at::TensorList state_steps, const at::Tensor& lr, double lr_decay, double weight_decay, double eps,
                  bool maximize, const OptionalTensor& grad_scale, const OptionalTensor& found_inf,
                  at::TensorList model_params, const OptionalTensor& telemetry) {
  constexpr const char* op = "adagrad_step_";
  check_lists(dev, op, params, {{"state_sums", state_sums}});
  const at::ScalarType grad_dtype = check_grads_and_model_params(dev, op, params, grads, model_params);
  check_telemetry(dev, op, params, telemetry);
  const bool steps_fp64 = check_steps(dev, op, params, state_steps);
  const Scalar lr_s = device_scalar(dev, op, "lr", lr);
  const Scalar scale_s = device_scalar(dev, op, "grad_scale", grad_scale);
  const Scalar inf_s = device_scalar(dev, op, "found_inf", found_inf);
  if (params.empty()) return;
  int64_t blocks = 0;
  const Table table = make_table(dev, params, {params, grads, state_sums, model_params}, state_steps, &blocks);
  const TelemetryOut tel_out = telemetry_out(dev, telemetry, blocks);
  dispatch_dtypes(params[0].scalar_type(), grad_dtype, [&](auto tag, auto grad_tag) {
    using T = typename decltype(tag)::type;
    using G = typename decltype(grad_tag)::type;
    dispatch_bool(weight_decay != 0.0, [&](auto wd) {
      dispatch_bool(telemetry.has_value(), [&](auto tel) {
        using K = AdagradKernel<T, G, decltype(wd)::value, decltype(tel)::value>;
        const auto tel_args = telemetry_args<decltype(tel)::value>(tel_out);
        dev.template launch<K>(blocks, typename K::Args{tel_args, table, lr_s, scale_s, inf_s, lr_decay, weight_decay, eps,
                                                        maximize, steps_fp64});
      });
    });
  });
}

}  // namespace agd_kernels::grid
