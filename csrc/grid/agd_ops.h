// agd_kernels::agd_step_ on the grid kernels (csrc/include/agd_kernels/grid/agd.h), for any Device policy
// of host.h: two launches (scalars, update), eta and G returned as device tensors the host never reads.
#pragma once
#include <ATen/ops/empty.h>

#include <tuple>

#include "agd_kernels/grid/agd.h"
#include "host.h"
#include "reduction_ops.h"

namespace agd_kernels::grid {

template <class Device>
std::tuple<at::Tensor, at::Tensor> agd_step(Device& dev, at::TensorList params, at::TensorList grads,
                                            const at::Tensor& sumsq, const at::Tensor& slice_sv,
                                            at::IntArrayRef slice_start, at::IntArrayRef slice_count, int64_t depth,
                                            double gain, const OptionalTensor& grad_scale,
                                            const OptionalTensor& found_inf, at::TensorList model_params,
                                            const OptionalTensor& telemetry) {
  constexpr const char* op = "agd_step_";
  check_telemetry(dev, op, params, telemetry);
  check_params(dev, op, params);
  const at::ScalarType grad_dtype = check_grads_and_model_params(dev, op, params, grads, model_params);
  check_device(dev, op, "sumsq", sumsq);
  check_device(dev, op, "slice_sv", slice_sv);
  TORCH_CHECK_VALUE(sumsq.dim() == 1 && sumsq.scalar_type() == at::kFloat, op,
                    ": sumsq must be a 1-D float32 tensor on the ", dev.backend(), " backend; got ",
                    sumsq.scalar_type(), " of shape ", sumsq.sizes());
  check_agd_slots(op, params, sumsq, slice_sv, slice_start, slice_count, depth);
  const Scalar scale_s = device_scalar(dev, op, "grad_scale", grad_scale);
  const Scalar inf_s = device_scalar(dev, op, "found_inf", found_inf);
  const at::TensorOptions f32 = sumsq.options();
  at::Tensor eta = at::empty({}, f32), G = at::empty({}, f32), step = at::empty({}, f32);
  dev.template launch<AgdScalarsKernel>(
      1, AgdScalarsKernel::Args{sumsq.const_data_ptr<float>(), slice_sv.const_data_ptr<float>(), sumsq.stride(0),
                                slice_sv.stride(0), sumsq.numel(), depth, gain, scale_s, inf_s,
                                eta.mutable_data_ptr<float>(), G.mutable_data_ptr<float>(),
                                step.mutable_data_ptr<float>()});
  if (params.empty()) return {eta, G};

  // The tap layout needs logical (o, i, *k) order in memory: other layouts run on contiguous copies,
  // copied back after the launch (extra copy kernels, and a table that differs every call).
  std::vector<at::Tensor> p_work(params.begin(), params.end()), g_work(grads.begin(), grads.end());
  std::vector<at::Tensor> m_work(model_params.begin(), model_params.end());
  for (size_t i = 0; i < params.size(); ++i) {
    if (num_slices(params[i]) > 1 && !params[i].is_contiguous()) {
      p_work[i] = params[i].contiguous();
      g_work[i] = grads[i].contiguous();
      if (!m_work.empty()) m_work[i] = model_params[i].contiguous();  // copied back whole: keep found_inf's no-op
    }
  }
  using K0 = AgdUpdateKernel<float, float, false>;
  const int64_t n = static_cast<int64_t>(params.size());
  std::vector<int64_t> words(K0::kLists * n), numels(n);
  std::vector<bool> vector_ok(n);
  for (int64_t t = 0; t < n; ++t) {
    words[K0::kParam * n + t] = address(p_work[t]);
    words[K0::kGrad * n + t] = address(g_work[t]);
    words[K0::kModelParam * n + t] = m_work.empty() ? 0 : address(m_work[t]);
    words[K0::kStart * n + t] = slice_start[t];
    words[K0::kCount * n + t] = slice_count[t];
    words[K0::kTaps * n + t] = params[t].dim() >= 2 ? num_slices(params[t]) : 0;
    numels[t] = params[t].numel();
    vector_ok[t] = words[K0::kParam * n + t] % kVectorBytes == 0 && words[K0::kGrad * n + t] % kVectorBytes == 0 &&
                   words[K0::kModelParam * n + t] % kVectorBytes == 0;
  }
  const int64_t blocks = finish_table(words, K0::kLists, numels, vector_ok);
  const Table table = dev.table(std::move(words), n, K0::kLists);
  const TelemetryOut tel_out = telemetry_out(dev, telemetry, blocks);
  dispatch_dtypes(params[0].scalar_type(), grad_dtype, [&](auto tag, auto grad_tag) {
    dispatch_bool(telemetry.has_value(), [&](auto tel) {
      using K = AgdUpdateKernel<typename decltype(tag)::type, typename decltype(grad_tag)::type, decltype(tel)::value>;
      const auto tel_args = agd_telemetry_args<decltype(tel)::value>(tel_out, scale_s);
      dev.template launch<K>(blocks, typename K::Args{tel_args, table, sumsq.const_data_ptr<float>(),
                                                      slice_sv.const_data_ptr<float>(), sumsq.stride(0),
                                                      slice_sv.stride(0), step.const_data_ptr<float>(), inf_s});
    });
  });
  for (size_t i = 0; i < params.size(); ++i) {
    if (!p_work[i].is_same(params[i])) params[i].copy_(p_work[i]);
    if (!m_work.empty() && !m_work[i].is_same(model_params[i])) model_params[i].copy_(m_work[i]);
  }
  return {eta, G};
}

}  // namespace agd_kernels::grid
