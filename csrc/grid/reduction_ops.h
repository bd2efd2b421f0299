// The reduction ops on the grid kernels, for any Device policy of host.h (see elementwise_ops.h).
#pragma once
#include "agd_kernels/grid/sumsq.h"
#include "host.h"

namespace agd_kernels::grid {

// Slices of a tensor: prod(shape[2:]) kernel taps for rank >= 2, else 1 (reference/sumsq.py num_slices).
inline int64_t num_slices(const at::Tensor& t) {
  int64_t taps = 1;
  for (int64_t d = 2; d < t.dim(); ++d) taps *= t.size(d);
  return taps;
}

template <class Device>
void slice_sumsq(Device& dev, at::TensorList tensors, const at::Tensor& out) {
  constexpr const char* op = "slice_sumsq_";
  int64_t slots = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    check_device(dev, op, "tensors[" + std::to_string(i) + "]", t);
    TORCH_CHECK_TYPE(is_kernel_dtype(t.scalar_type()) && t.scalar_type() == tensors[0].scalar_type(), op,
                     ": tensors[", i, "] has dtype ", t.scalar_type(), "; the ", dev.backend(),
                     " backend takes float32, float16 or bfloat16, the same for every tensor (tensors[0] is ",
                     tensors[0].scalar_type(), ")");
    slots += num_slices(t);
  }
  check_device(dev, op, "out", out);
  TORCH_CHECK_VALUE((out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble) && out.dim() == 1, op,
                    ": out must be a 1-D float32 (or float64) tensor; got ", out.scalar_type(), " of shape ",
                    out.sizes());
  TORCH_CHECK_VALUE(out.numel() == slots, op, ": out has ", out.numel(), " slots but the tensors have ", slots,
                    " slices");
  if (tensors.empty()) return;
  // Taps need the logical (o, i, *k) order in memory (a copy for e.g. channels_last weights, whose table
  // then differs every call); one-slice tensors only need density.
  std::vector<at::Tensor> dense;
  dense.reserve(tensors.size());
  for (const at::Tensor& t : tensors) {
    const bool ok = num_slices(t) > 1 ? t.is_contiguous() : t.is_non_overlapping_and_dense();
    dense.push_back(ok ? t : t.contiguous());
  }
  const int64_t n = slots, element = static_cast<int64_t>(dense[0].element_size());
  std::vector<int64_t> words(SliceSumsqKernel<float>::kLists * n), numels(n);
  std::vector<bool> vector_ok(n);
  int64_t slot = 0, first_block = 0;
  for (const at::Tensor& t : dense) {
    const int64_t K = num_slices(t);
    const int64_t rows = K > 0 ? t.numel() / K : 0;
    for (int64_t j = 0; j < K; ++j, ++slot) {
      const int64_t data = address(t) + j * element;
      words[SliceSumsqKernel<float>::kData * n + slot] = data;
      words[SliceSumsqKernel<float>::kStride * n + slot] = K;
      words[SliceSumsqKernel<float>::kFirstBlock * n + slot] = first_block;
      numels[slot] = rows;
      vector_ok[slot] = K == 1 && data % kVectorBytes == 0;
      first_block += blocks_of(rows);
    }
  }
  const int64_t blocks = finish_table(words, SliceSumsqKernel<float>::kLists, numels, vector_ok);
  const Table table = dev.table(std::move(words), n, SliceSumsqKernel<float>::kLists);
  double* partials = dev.scratch_doubles(blocks);
  dispatch_dtype(dense[0].scalar_type(), [&](auto tag) {
    using K = SliceSumsqKernel<typename decltype(tag)::type>;
    dev.template launch<K>(blocks, typename K::Args{table, partials, out.data_ptr(), out.stride(0),
                                                    out.scalar_type() == at::kDouble});
  });
}

}  // namespace agd_kernels::grid
