// Multi-tensor loops for the CPU backend: one parallel region per op call over all tensors of the call,
// cut into fixed-size chunks. Each thread takes a contiguous run of chunks holding ~1/T of all elements,
// so 600 tensors of a few thousand elements and one tensor of 100M balance alike. Argument checks and
// host scalars shared by every op live here too; all of them run before anything is written.
#pragma once
// Narrow ATen headers rather than ATen/ATen.h: 3.5 s instead of 6 s of parsing per translation unit.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/FunctionRef.h>

#include <algorithm>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "agd_kernels/common.h"

namespace agd_kernels::cpu {

// 16K elements (64 KiB of fp32): per-chunk overhead (a dispatch and a few pointer adds) stays < 0.1%,
// and a 600-tensor list of a few thousand elements still gives every thread work.
constexpr int64_t kChunk = 16384;
// Waking the second OpenMP thread costs a few microseconds; below 32K elements per thread (~15 us of
// fp32 Adam) one thread finishes first.
constexpr int64_t kMinElementsPerThread = 32768;

struct Chunk {
  int64_t tensor, begin, end;
  int64_t numel() const { return end - begin; }
};

inline std::vector<Chunk> make_chunks(at::TensorList tensors) {
  std::vector<Chunk> chunks;
  for (int64_t t = 0; t < static_cast<int64_t>(tensors.size()); ++t) {
    const int64_t n = tensors[t].numel();
    for (int64_t b = 0; b < n; b += kChunk) chunks.push_back({t, b, std::min(n, b + kChunk)});
  }
  return chunks;
}

// body(t) for t in [0, threads), one per thread of one parallel region. Not a template: at::parallel_for
// is instantiated once per translation unit instead of once per kernel variant (adam.cpp compiled in
// 12.8 instead of 14.4 s).
inline void run_threads(int64_t threads, c10::function_ref<void(int64_t)> body) {
  at::parallel_for(0, threads, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) body(t);
  });
}

// Calls fn(chunk) once for every chunk (any type with numel()), in one parallel region. Which thread runs
// a chunk never changes what the chunk computes, so per-chunk results are thread-count independent.
template <class C, class Fn>
void parallel_over_chunks(const std::vector<C>& chunks, const Fn& fn) {
  int64_t total = 0;
  for (const C& c : chunks) total += c.numel();
  const int64_t threads =
      std::clamp<int64_t>(total / kMinElementsPerThread, 1, std::max(1, at::get_num_threads()));
  if (threads == 1 || at::in_parallel_region()) {
    for (const C& c : chunks) fn(c);
    return;
  }
  // first[t]: the first chunk of thread t; chunk i goes to thread floor(start_i * threads / total).
  std::vector<size_t> first(threads + 1, chunks.size());
  first[0] = 0;
  int64_t next = 1, start = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const int64_t owner = start * threads / total;
    while (next <= owner) first[next++] = i;
    start += chunks[i].numel();
  }
  run_threads(threads, [&](int64_t t) {
    for (size_t i = first[t]; i < first[t + 1]; ++i) fn(chunks[i]);
  });
}

template <class Fn>
void dispatch_bool(bool flag, Fn&& fn) {
  if (flag) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
  }
}

// ------------------------------------------------------------------------------- mixed precision
// The element types of a call: Param for params and state, Grad for grads and model_params.
template <typename P, typename G>
struct ParamGrad {
  using Param = P;
  using Grad = G;
};

// fn(ParamGrad<T, T>) for the params' dtype, or fn(ParamGrad<float, bf16/half>) for fp32 masters with
// 16-bit grads (csrc/checks.h check_grads has accepted exactly these).
template <class Fn>
void dispatch_param_grad(at::ScalarType param, at::ScalarType grad, Fn&& fn) {
  if (param != grad) {
    if (grad == at::kBFloat16) return fn(ParamGrad<float, c10::BFloat16>{});
    return fn(ParamGrad<float, c10::Half>{});
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param, "agd_kernels_cpu", [&] {
    fn(ParamGrad<scalar_t, scalar_t>{});
  });
}

// model[i] <- master[i] rounded to nearest even, over a chunk the update has just written: the chunk
// (64 KiB of fp32) is still in L2, so memory sees the 2 B per element written and nothing read.
template <typename P, typename G>
void round_into_model(const P* master, G* model, int64_t n) {
  for (int64_t i = 0; i < n; ++i) agd_kernels::store(model, i, static_cast<math_t<G>>(master[i]));
}

// ------------------------------------------------------------------------------------------ checks
// Bad values and shapes raise ValueError, bad dtypes TypeError, tensors on another device RuntimeError,
// always naming the argument and the expectation (the shared checks: csrc/checks.h).
inline bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The policy of csrc/checks.h for this backend.
struct CpuBackend {
  static const char* backend() { return "cpu"; }
  static bool accepts(const at::Tensor& t) { return t.device().is_cpu(); }
  static std::string where() { return "CPU tensors"; }
  static bool takes_dtype(at::ScalarType t) { return is_supported_dtype(t); }
  static const char* dtypes() { return "float32, float64, float16 or bfloat16"; }
};
inline constexpr CpuBackend kCpu{};

// A one-element scalar tensor (lr, grad_scale, found_inf, a step) read as double. On a CPU tensor this is
// a plain memory read: no device, so no host sync.
inline double read_scalar(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.numel() == 1, op, ": ", name, " must hold exactly one element; got shape ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " is on ", t.device(), "; the cpu backend reads it on the host");
  return t.item<double>();
}

// The factor every raw gradient is multiplied by: 1/grad_scale (AMP unscale), negated when maximizing.
inline double grad_multiplier(const char* op, const std::optional<at::Tensor>& grad_scale, bool maximize) {
  const double m = grad_scale.has_value() ? 1.0 / read_scalar(op, "grad_scale", *grad_scale) : 1.0;
  return maximize ? -m : m;
}

// found_inf set: the op must change nothing at all, step counters included.
inline bool found_inf_set(const char* op, const std::optional<at::Tensor>& found_inf) {
  return found_inf.has_value() && read_scalar(op, "found_inf", *found_inf) != 0.0;
}

// What an optimizer op reads before it writes anything: its lr and the factor for raw gradients.
struct StepInputs {
  double lr, grad_mul;
};

// The per-step scalars of an op whose arguments passed their checks; nullopt when the op must change
// nothing: no parameters, or found_inf set.
inline std::optional<StepInputs> step_inputs(const char* op, at::TensorList params, const at::Tensor& lr,
                                             const std::optional<at::Tensor>& grad_scale, bool maximize,
                                             const std::optional<at::Tensor>& found_inf) {
  const StepInputs in{read_scalar(op, "lr", lr), grad_multiplier(op, grad_scale, maximize)};
  if (params.empty() || found_inf_set(op, found_inf)) return std::nullopt;
  return in;
}

// torch.optim keeps `step` as a 0-d float32 tensor (float64 under a float64 default dtype).
inline void check_steps(const char* op, at::TensorList params, at::TensorList steps) {
  TORCH_CHECK_VALUE(steps.size() == params.size(), op, ": state_steps has ", steps.size(), " tensors, params has ",
                    params.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    TORCH_CHECK_VALUE(steps[i].numel() == 1 && steps[i].device().is_cpu() &&
                      (steps[i].scalar_type() == at::kFloat || steps[i].scalar_type() == at::kDouble),
                      op, ": state_steps[", i, "] must be a one-element float32 or float64 CPU tensor; got ",
                      steps[i].scalar_type(), " of shape ", steps[i].sizes(), " on ", steps[i].device());
  }
}

// Adds 1 to every step counter (in its own dtype, as torch's step += 1) and returns the new values.
inline std::vector<double> advance_steps(at::TensorList steps) {
  std::vector<double> t(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i].scalar_type() == at::kFloat) {
      float* s = steps[i].mutable_data_ptr<float>();
      t[i] = *s = *s + 1.0f;
    } else {
      double* s = steps[i].mutable_data_ptr<double>();
      t[i] = *s = *s + 1.0;
    }
  }
  return t;
}

template <typename T>
std::vector<T*> data_ptrs(at::TensorList tensors) {
  std::vector<T*> out;
  out.reserve(tensors.size());
  for (const at::Tensor& t : tensors) {
    if constexpr (std::is_const_v<T>) {
      out.push_back(t.const_data_ptr<std::remove_const_t<T>>());
    } else {
      out.push_back(t.mutable_data_ptr<T>());
    }
  }
  return out;
}

}  // namespace agd_kernels::cpu
