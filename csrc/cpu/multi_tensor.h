// Multi-tensor loops for the CPU backend: one parallel region per op call over all tensors of a call,
// cut into fixed-size chunks so that many small tensors and one huge tensor spread evenly over threads.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

namespace agd_kernels::cpu {

// 16K elements (64 KiB of fp32): large enough that per-chunk overhead is < 1%, small enough that a
// 600-tensor list of a few thousand elements each still gives every thread work.
constexpr int64_t kChunk = 16384;

struct Chunk {
  int64_t tensor, begin, end;
};

inline std::vector<Chunk> make_chunks(at::TensorList tensors) {
  std::vector<Chunk> chunks;
  for (int64_t t = 0; t < static_cast<int64_t>(tensors.size()); ++t) {
    const int64_t n = tensors[t].numel();
    for (int64_t b = 0; b < n; b += kChunk) chunks.push_back({t, b, std::min(n, b + kChunk)});
  }
  return chunks;
}

// Calls fn(tensor_index, begin, end) for every chunk, in parallel over chunks.
template <typename Fn>
void for_each_chunk(at::TensorList tensors, Fn&& fn) {
  const auto chunks = make_chunks(tensors);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) fn(chunks[c].tensor, chunks[c].begin, chunks[c].end);
  });
}

// Common argument checks: same length, device, dtype, shape and contiguity as `params`.
inline void check_like(const char* op, const char* name, at::TensorList params, at::TensorList other) {
  TORCH_CHECK(other.size() == params.size(), op, ": ", name, " has ", other.size(), " tensors, params has ",
              params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(other[i].sizes() == params[i].sizes(), op, ": ", name, "[", i, "] has shape ", other[i].sizes(),
                ", params[", i, "] has ", params[i].sizes());
    TORCH_CHECK(other[i].scalar_type() == params[i].scalar_type(), op, ": ", name, "[", i, "] is ",
                other[i].scalar_type(), ", params are ", params[i].scalar_type());
    TORCH_CHECK(other[i].device().is_cpu(), op, ": ", name, "[", i, "] is on ", other[i].device());
    TORCH_CHECK(other[i].is_contiguous(), op, ": ", name, "[", i, "] must be contiguous");
  }
}

// 1 / grad_scale (1 without AMP) and whether found_inf says to skip, read once per call.
inline double inv_scale(const std::optional<at::Tensor>& grad_scale) {
  return grad_scale.has_value() ? 1.0 / grad_scale->item<double>() : 1.0;
}
inline bool should_skip(const std::optional<at::Tensor>& found_inf) {
  return found_inf.has_value() && found_inf->item<double>() != 0.0;
}

}  // namespace agd_kernels::cpu
