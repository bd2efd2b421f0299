// The reduction ops on the grid kernels, for any Device policy of host.h (see elementwise_ops.h).
#pragma once
#include "agd_kernels/grid/sumsq.h"
#include "host.h"

namespace agd_kernels::grid {

template <class Device>
void slice_sumsq(Device& dev, at::TensorList tensors, const at::Tensor& out) {
  constexpr const char* op = "slice_sumsq_";
  check_slice_sumsq(dev, op, tensors, out);
  const int64_t slots = out.numel();
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
