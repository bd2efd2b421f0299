// Host side of the grid kernels (csrc/include/agd_kernels/grid), shared by the CUDA launchers
// (csrc/cuda/*.cu) and the grid emulator (csrc/testing): argument checks (csrc/checks.h), the tensor
// table's words, per-step scalars as device pointers, and the dtype/flag dispatch. A `Device` policy supplies what
// differs: which tensors it takes, where the table lives, and how a kernel body is launched:
//   const char* backend();  bool accepts(const at::Tensor&);  std::string where();  (and KernelDtypes' members)
//   grid::Table table(std::vector<int64_t> words, int64_t tensors, int32_t lists);
//   template <class K> void launch(int64_t blocks, const typename K::Args&);
// Every check runs before anything is launched, so a rejected call changes nothing.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "agd_kernels/grid/block.h"
#include "agd_kernels/grid/telemetry.h"

namespace agd_kernels::grid {

using OptionalTensor = std::optional<at::Tensor>;

// The parameter dtypes with kernels: fp64 parameters take the cpu or triton backend (_backends._DTYPES).
inline bool is_kernel_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

// What every Device adds to its own backend(), accepts() and where() to be a policy of csrc/checks.h
// (check_params, check_like, check_lists, check_device).
struct KernelDtypes {
  static bool takes_dtype(at::ScalarType t) { return is_kernel_dtype(t); }
  static const char* dtypes() { return "float32, float16 or bfloat16"; }
};

// state_steps: one 0-d-like float32 or float64 tensor per parameter, on the parameters' device (the kernel
// reads and advances them), all of one dtype. Returns whether they are float64.
template <class Device>
bool check_steps(const Device& dev, const char* op, at::TensorList params, at::TensorList steps) {
  TORCH_CHECK_VALUE(steps.size() == params.size(), op, ": state_steps has ", steps.size(), " tensors, params has ",
                    params.size());
  const bool fp64 = !steps.empty() && steps[0].scalar_type() == at::kDouble;
  for (size_t i = 0; i < steps.size(); ++i) {
    const at::Tensor& s = steps[i];
    TORCH_CHECK_VALUE(s.numel() == 1 && dev.accepts(s) &&
                      s.scalar_type() == (fp64 ? at::kDouble : at::kFloat),
                      op, ": state_steps[", i, "] must be a one-element ", fp64 ? "float64" : "float32",
                      " tensor (the dtype of state_steps[0]) on ", dev.where(), "; got ", s.scalar_type(),
                      " of shape ", s.sizes(), " on ", s.device());
  }
  return fp64;
}

// A one-element fp32/fp64 scalar tensor on the parameters' device, passed to the kernel as a pointer.
template <class Device>
Scalar device_scalar(const Device& dev, const char* op, const char* name, const OptionalTensor& t) {
  if (!t.has_value()) return Scalar{nullptr, Scalar::kAbsent};
  TORCH_CHECK_VALUE(t->numel() == 1, op, ": ", name, " must hold exactly one element; got shape ", t->sizes());
  check_device(dev, op, name, *t);
  const at::ScalarType st = t->scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble, op, ": ", name, " must be float32 or float64; got ", st);
  return Scalar{t->const_data_ptr(), st == at::kDouble ? Scalar::kDouble : Scalar::kFloat};
}

// The table words (layout in grid/block.h) from per-entry words: words[l * n + t] for l < lists (data
// pointers, or any per-entry word a body defines), each entry's element count and vector_ok flag. Appends
// the block map and returns the number of blocks.
inline int64_t finish_table(std::vector<int64_t>& words, int64_t lists, const std::vector<int64_t>& numels,
                            const std::vector<bool>& vector_ok) {
  const int64_t n = static_cast<int64_t>(numels.size());
  words.resize((lists + 2) * n, 0);
  int64_t blocks = 0;
  for (int64_t t = 0; t < n; ++t) {
    words[lists * n + t] = numels[t];
    words[(lists + 1) * n + t] = vector_ok[t] ? 1 : 0;
    const int64_t b = blocks_of(numels[t]);
    TORCH_CHECK_VALUE(b <= INT32_MAX, "a tensor of ", numels[t], " elements exceeds the grid kernels' limit of ",
                      static_cast<int64_t>(INT32_MAX) * kChunk);
    for (int64_t c = 0; c < b; ++c) words.push_back(t << 32 | c);
    blocks += b;
  }
  return blocks;
}

inline int64_t address(const at::Tensor& t) {
  return static_cast<int64_t>(reinterpret_cast<uintptr_t>(t.const_data_ptr()));
}

// The table words of an elementwise op: one entry per parameter, lists = the element lists (an empty list:
// 0 pointers, never read) and, last, the step counters (empty when the op has none). Only the element
// lists' pointers count for vector_ok: steps are read as scalars.
inline std::vector<int64_t> table_words(at::TensorList params, std::initializer_list<at::TensorList> element_lists,
                                        at::TensorList steps, int64_t* blocks_out) {
  const int64_t n = static_cast<int64_t>(params.size());
  const int64_t lists = static_cast<int64_t>(element_lists.size()) + 1;
  std::vector<int64_t> words(lists * n, 0), numels(n);
  std::vector<bool> aligned(n, true);
  int64_t l = 0;
  for (at::TensorList list : element_lists) {
    for (int64_t t = 0; t < static_cast<int64_t>(list.size()); ++t) {
      words[l * n + t] = address(list[t]);
      aligned[t] = aligned[t] && words[l * n + t] % kVectorBytes == 0;
    }
    ++l;
  }
  for (int64_t t = 0; t < static_cast<int64_t>(steps.size()); ++t) words[l * n + t] = address(steps[t]);
  for (int64_t t = 0; t < n; ++t) numels[t] = params[t].numel();
  *blocks_out = finish_table(words, lists, numels, aligned);
  return words;
}

template <class Device>
Table make_table(Device& dev, at::TensorList params, std::initializer_list<at::TensorList> element_lists,
                 at::TensorList steps, int64_t* blocks) {
  std::vector<int64_t> words = table_words(params, element_lists, steps, blocks);
  return dev.table(std::move(words), static_cast<int64_t>(params.size()),
                   static_cast<int32_t>(element_lists.size()) + 1);
}

// The kernels' telemetry arguments: per-block scratch slots and the op's buffer, or nulls without one.
template <class Device>
TelemetryOut telemetry_out(Device& dev, const OptionalTensor& telemetry, int64_t blocks) {
  if (!telemetry.has_value()) return TelemetryOut{nullptr, nullptr};
  return TelemetryOut{dev.scratch_doubles(blocks * kTelemetryColumns), telemetry->mutable_data_ptr<float>()};
}

template <typename T>
struct TypeTag {
  using type = T;
};

// fn(TypeTag<T>{}) for the storage type of a float32/float16/bfloat16 parameter dtype (checked before).
template <class Fn>
void dispatch_dtype(at::ScalarType st, Fn&& fn) {
  switch (st) {
    case at::kFloat: return fn(TypeTag<float>{});
    case at::kHalf: return fn(TypeTag<c10::Half>{});
    case at::kBFloat16: return fn(TypeTag<c10::BFloat16>{});
    default: TORCH_CHECK_TYPE(false, "no grid kernel for ", st);
  }
}

// fn(TypeTag<T>{}, TypeTag<G>{}) for the params' and the grads' storage types (checked before by
// check_grads): T == G as without master weights, or float params beside float16/bfloat16 grads. Five
// instantiations per body and flag set, not nine: no other pair is accepted.
template <class Fn>
void dispatch_dtypes(at::ScalarType params, at::ScalarType grads, Fn&& fn) {
  if (params == grads) return dispatch_dtype(params, [&](auto tag) { fn(tag, tag); });
  dispatch_dtype(grads, [&](auto grad_tag) {
    if constexpr (sizeof(typename decltype(grad_tag)::type) == 2) fn(TypeTag<float>{}, grad_tag);
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

}  // namespace agd_kernels::grid
