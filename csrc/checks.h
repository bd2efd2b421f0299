// Argument checks shared by every launcher: the CPU backend (csrc/cpu) and the grid kernels' host side
// (csrc/grid, for CUDA and for the grid emulator). A Backend policy supplies what differs:
//   const char* backend();  bool accepts(const at::Tensor&);  std::string where();
//   bool takes_dtype(at::ScalarType);  const char* dtypes();
// Bad values and shapes raise ValueError, bad dtypes TypeError, tensors on another device RuntimeError,
// always naming the argument and the expectation. Launchers run every check before they write anything,
// so a rejected call changes nothing.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>

namespace agd_kernels {

template <class Backend>
void check_device(const Backend& be, const char* op, const std::string& name, const at::Tensor& t) {
  TORCH_CHECK(be.accepts(t), op, ": ", name, " is on ", t.device(), "; the ", be.backend(), " backend takes ",
              be.where());
}

// The leading list of an op (`params`, or `list`): on the backend's device, one dtype it takes, dense.
template <class Backend>
void check_params(const Backend& be, const char* op, at::TensorList params, const char* list = "params") {
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const std::string name = std::string(list) + "[" + std::to_string(i) + "]";
    check_device(be, op, name, p);
    TORCH_CHECK_TYPE(be.takes_dtype(p.scalar_type()), op, ": ", name, " has dtype ", p.scalar_type(), "; the ",
                     be.backend(), " backend takes ", be.dtypes());
    TORCH_CHECK_TYPE(p.scalar_type() == params[0].scalar_type(), op, ": ", name, " is ", p.scalar_type(), " but ",
                     list, "[0] is ", params[0].scalar_type(), "; one call takes one dtype");
    TORCH_CHECK_VALUE(p.is_non_overlapping_and_dense(), op, ": ", name,
                      " must be dense and non-overlapping (e.g. contiguous); got strides ", p.strides());
  }
}

// `other` must match `params` (named `base` in messages) tensor by tensor: count, device, dtype, shape and
// memory layout. Elementwise kernels walk memory order, so any dense layout both share works (e.g.
// channels_last weights with channels_last state and gradient).
// With same_dtype false the dtypes may differ (the caller checks them).
template <class Backend>
void check_like(const Backend& be, const char* op, const char* name, at::TensorList params, at::TensorList other,
                const char* base = "params", bool same_dtype = true) {
  TORCH_CHECK_VALUE(other.size() == params.size(), op, ": ", name, " has ", other.size(), " tensors, ", base,
                    " has ", params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& o = other[i];
    check_device(be, op, std::string(name) + "[" + std::to_string(i) + "]", o);
    TORCH_CHECK_TYPE(!same_dtype || o.scalar_type() == params[i].scalar_type(), op, ": ", name, "[", i, "] is ", o.scalar_type(),
                     ", ", base, "[", i, "] is ", params[i].scalar_type());
    TORCH_CHECK_VALUE(o.sizes() == params[i].sizes(), op, ": ", name, "[", i, "] has shape ", o.sizes(), ", ", base,
                      "[", i, "] has ", params[i].sizes());
    const bool same_layout = (o.is_contiguous() && params[i].is_contiguous()) || o.strides() == params[i].strides();
    TORCH_CHECK_VALUE(o.is_non_overlapping_and_dense() && same_layout, op, ": ", name, "[", i, "] has strides ",
                      o.strides(), ", ", base, "[", i, "] has ", params[i].strides(),
                      "; both must be dense with the same memory layout");
  }
}

// Slices of a tensor for the per-slice ops: prod(shape[2:]) kernel taps for rank >= 2, else 1
// (agd_kernels/reference/sumsq.py num_slices).
inline int64_t num_slices(const at::Tensor& t) {
  int64_t taps = 1;
  for (int64_t d = 2; d < t.dim(); ++d) taps *= t.size(d);
  return taps;
}

// slice_sumsq_'s tensors (one dtype the backend takes) and out (1-D fp32/fp64, one slot per slice).
template <class Backend>
void check_slice_sumsq(const Backend& be, const char* op, at::TensorList tensors, const at::Tensor& out) {
  int64_t slots = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    check_device(be, op, "tensors[" + std::to_string(i) + "]", t);
    TORCH_CHECK_TYPE(be.takes_dtype(t.scalar_type()) && t.scalar_type() == tensors[0].scalar_type(), op,
                     ": tensors[", i, "] has dtype ", t.scalar_type(), "; the ", be.backend(), " backend takes ",
                     be.dtypes(), ", the same for every tensor (tensors[0] is ", tensors[0].scalar_type(), ")");
    slots += num_slices(t);
  }
  check_device(be, op, "out", out);
  TORCH_CHECK_VALUE((out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble) && out.dim() == 1, op,
                    ": out must be a 1-D float32 (or float64) tensor; got ", out.scalar_type(), " of shape ",
                    out.sizes());
  TORCH_CHECK_VALUE(out.numel() == slots, op, ": out has ", out.numel(), " slots but the tensors have ", slots,
                    " slices");
}

// agd_step_'s slot layout: slice_sv like sumsq, depth >= 1, and per parameter a slot range inside sumsq
// holding one slot per tap of a matrix (sumsq's own dtype and device are each backend's to check).
inline void check_agd_slots(const char* op, at::TensorList params, const at::Tensor& sumsq,
                            const at::Tensor& slice_sv, at::IntArrayRef slice_start, at::IntArrayRef slice_count,
                            int64_t depth) {
  TORCH_CHECK_VALUE(slice_sv.scalar_type() == sumsq.scalar_type() && slice_sv.sizes() == sumsq.sizes() &&
                    slice_sv.device() == sumsq.device(), op, ": slice_sv must be a tensor of sumsq's dtype, shape ",
                    sumsq.sizes(), " and device; got ", slice_sv.scalar_type(), " of shape ", slice_sv.sizes(),
                    " on ", slice_sv.device());
  TORCH_CHECK_VALUE(depth >= 1, op, ": depth must be >= 1 (the number of matrices with a gradient); got ", depth);
  TORCH_CHECK_VALUE(slice_start.size() == params.size() && slice_count.size() == params.size(), op,
                    ": slice_start and slice_count need one entry per parameter (", params.size(), "); got ",
                    slice_start.size(), " and ", slice_count.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t start = slice_start[i], count = slice_count[i];
    TORCH_CHECK_VALUE(start >= 0 && count >= 0 && start + count <= sumsq.numel(), op, ": slots [", start, ", ",
                      start + count, ") of params[", i, "] are outside sumsq's ", sumsq.numel(), " slots");
    TORCH_CHECK_VALUE(params[i].dim() < 2 || count == num_slices(params[i]), op, ": params[", i, "] of shape ",
                      params[i].sizes(), " has ", num_slices(params[i]), " taps but slice_count[", i, "] is ", count);
  }
}

// One list an op takes beside `params`; a null name marks a list this call does not use (amsgrad off, no
// momentum), which is not checked.
struct NamedList {
  const char* name;
  at::TensorList tensors;
};

// The checks every optimizer op starts with: params, then each used list against params.
template <class Backend>
void check_lists(const Backend& be, const char* op, at::TensorList params, std::initializer_list<NamedList> lists) {
  check_params(be, op, params);
  for (const NamedList& list : lists) {
    if (list.name != nullptr) check_like(be, op, list.name, params, list.tensors);
  }
}

// ------------------------------------------------------------------------------- mixed precision
// Master weights (agd_kernels/ops.py, "Mixed precision"): fp32 `params` (the masters) updated from 16-bit
// `grads`, each result also rounded into a 16-bit `model_params` tensor in the same pass.
// An update op's `telemetry` (agd_kernels/ops.py, "Telemetry"): None, or a contiguous fp32 (len(params), 5)
// tensor on the backend's device; the reference's messages (agd_kernels/reference/telemetry.py `check`).
constexpr int kTelemetrySums = 5;  // w_sq, g_sq, w_g, d_sq, w_d (agd_kernels/reference/telemetry.py SUMS)

template <class Backend>
void check_telemetry(const Backend& be, const char* op, at::TensorList params,
                     const std::optional<at::Tensor>& telemetry) {
  if (!telemetry.has_value()) return;
  const at::Tensor& t = *telemetry;
  const int64_t n = static_cast<int64_t>(params.size());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat && t.dim() == 2 && t.size(0) == n && t.size(1) == kTelemetrySums &&
                        t.is_contiguous(),
                    op, ": telemetry must be a contiguous float32 tensor of shape (", n, ", ", kTelemetrySums,
                    ") (one row of ('w_sq', 'g_sq', 'w_g', 'd_sq', 'w_d') per parameter); got ", t.scalar_type(),
                    " of shape ", t.sizes());
  check_device(be, op, "telemetry", t);
}

inline bool is_16_bit(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// The dtype an op reads `grads` in: the dtype of `base` (params, or yellowfin_stats_'s grad_avgs), or one
// 16-bit dtype beside a float32 base. Checks grads against base (count, device, shape, layout) and one
// dtype for all of them; base is checked already.
template <class Backend>
at::ScalarType check_grads(const Backend& be, const char* op, at::TensorList params, at::TensorList grads,
                           const char* base = "params") {
  TORCH_CHECK_VALUE(grads.size() == params.size(), op, ": grads has ", grads.size(), " tensors, ", base, " has ",
                    params.size());
  if (params.empty()) return at::kFloat;
  const at::ScalarType p = params[0].scalar_type(), g = grads[0].scalar_type();
  const bool mixed = p == at::kFloat && is_16_bit(g);
  TORCH_CHECK_TYPE(g == p || mixed, op, ": grads[0] is ", g, ", ", base, "[0] is ", p, "; grads must have the ",
                   base, "' dtype, or be float16 or bfloat16 beside float32 ", base);
  check_like(be, op, "grads", params, grads, base, /*same_dtype=*/!mixed);
  for (size_t i = 0; i < grads.size(); ++i) {
    TORCH_CHECK_TYPE(grads[i].scalar_type() == g, op, ": grads[", i, "] is ", grads[i].scalar_type(),
                     " but grads[0] is ", g, "; one call takes one gradient dtype");
  }
  return g;
}

// The grads and model_params of an op that writes parameters; returns the grads' dtype. model_params is
// empty (grads then have the params' dtype), or holds one tensor per param: params float32, model_params
// of the grads' 16-bit dtype, each shaped and laid out as its param. A call with 16-bit grads beside fp32
// params and no model_params is refused: nothing would carry the update to the model.
template <class Backend>
at::ScalarType check_grads_and_model_params(const Backend& be, const char* op, at::TensorList params,
                                            at::TensorList grads, at::TensorList model_params) {
  const at::ScalarType g = check_grads(be, op, params, grads);
  if (model_params.empty()) {
    TORCH_CHECK_TYPE(params.empty() || g == params[0].scalar_type(), op, ": grads are ", g, " beside ",
                     params[0].scalar_type(), " params; pass the model's ", g,
                     " parameters as model_params (master weights), or grads of the params' dtype");
    return g;
  }
  TORCH_CHECK_VALUE(model_params.size() == params.size(), op, ": model_params has ", model_params.size(),
                    " tensors, params has ", params.size(), "; pass one per param, or none");
  TORCH_CHECK_TYPE(params[0].scalar_type() == at::kFloat && is_16_bit(g), op,
                   ": model_params needs float32 params (the masters) and float16 or bfloat16 grads; got ",
                   params[0].scalar_type(), " params and ", g, " grads");
  // model_params against grads: same dtype, shape and layout (grads are checked against params above).
  check_like(be, op, "model_params", grads, model_params, "grads");
  return g;
}

// stochastic_round_'s arguments: dst bf16 and dense; src float32 like dst (device, shape, layout); seed a
// one-element int64 tensor and steps one-element float32/float64 tensors, on the backend's device (the
// kernel reads them), all steps of one dtype; one step and one offset >= 0 per tensor.
template <class Backend>
void check_stochastic_round(const Backend& be, const char* op, at::TensorList dst, at::TensorList src,
                            const at::Tensor& seed, at::TensorList steps, at::IntArrayRef offsets) {
  TORCH_CHECK_VALUE(src.size() == dst.size() && steps.size() == dst.size() && offsets.size() == dst.size(), op,
                    ": dst has ", dst.size(), " tensors; src, steps and offsets need as many, got ", src.size(),
                    ", ", steps.size(), " and ", offsets.size());
  check_device(be, op, "seed", seed);
  TORCH_CHECK_VALUE(seed.numel() == 1 && seed.scalar_type() == at::kLong, op,
                    ": seed must be a one-element int64 tensor; got ", seed.scalar_type(), " of shape ", seed.sizes());
  for (size_t i = 0; i < dst.size(); ++i) {
    const std::string index = "[" + std::to_string(i) + "]";
    const at::Tensor &d = dst[i], &s = src[i], &step = steps[i];
    check_device(be, op, "dst" + index, d);
    TORCH_CHECK_TYPE(d.scalar_type() == at::kBFloat16, op, ": dst", index, " has dtype ", d.scalar_type(),
                     "; stochastic rounding writes bfloat16 tensors");
    check_device(be, op, "src" + index, s);
    TORCH_CHECK_VALUE(s.scalar_type() == at::kFloat && s.sizes() == d.sizes(), op, ": src", index, " is ",
                      s.scalar_type(), s.sizes(), "; expected Float", d.sizes(), " (dst", index, "'s shape)");
    const bool same_layout = (d.is_contiguous() && s.is_contiguous()) || d.strides() == s.strides();
    TORCH_CHECK_VALUE(same_layout && d.is_non_overlapping_and_dense(), op, ": src", index, " has strides ",
                      s.strides(), ", dst", index, " has ", d.strides(),
                      "; both must be dense with the same memory layout");
    check_device(be, op, "steps" + index, step);
    TORCH_CHECK_VALUE(step.numel() == 1 && (step.scalar_type() == at::kFloat || step.scalar_type() == at::kDouble) &&
                      step.scalar_type() == steps[0].scalar_type(), op, ": steps", index,
                      " must be a one-element float32 or float64 tensor of steps[0]'s dtype; got ",
                      step.scalar_type(), " of shape ", step.sizes());
    TORCH_CHECK_VALUE(offsets[i] >= 0, op, ": offsets", index, " is ", offsets[i], "; expected >= 0");
  }
}

}  // namespace agd_kernels
