// agd_kernels::stochastic_round_ on the grid kernel (csrc/include/agd_kernels/grid/stochastic_round.h), for
// any Device policy of host.h: checks, one table (pointers, offsets, steps), one launch.
#pragma once
#include "agd_kernels/grid/stochastic_round.h"
#include "host.h"

namespace agd_kernels::grid {

template <class Device>
void stochastic_round(Device& dev, at::TensorList dst, at::TensorList src, const at::Tensor& seed,
                      at::TensorList steps, at::IntArrayRef offsets) {
  constexpr const char* op = "stochastic_round_";
  check_stochastic_round(dev, op, dst, src, seed, steps, offsets);
  if (dst.empty()) return;
  using K = StochasticRoundKernel;
  const int64_t n = static_cast<int64_t>(dst.size());
  std::vector<int64_t> words(K::kLists * n), numels(n);
  std::vector<bool> vector_ok(n);
  const bool steps_fp64 = steps[0].scalar_type() == at::kDouble;  // one dtype for all (checked)
  for (int64_t t = 0; t < n; ++t) {
    words[K::kDst * n + t] = address(dst[t]);
    words[K::kSrc * n + t] = address(src[t]);
    words[K::kOffset * n + t] = offsets[t];
    words[K::kStep * n + t] = address(steps[t]);
    numels[t] = dst[t].numel();
    vector_ok[t] = words[K::kDst * n + t] % kVectorBytes == 0 && words[K::kSrc * n + t] % kVectorBytes == 0;
  }
  const int64_t blocks = finish_table(words, K::kLists, numels, vector_ok);
  const Table table = dev.table(std::move(words), n, K::kLists);
  dev.template launch<K>(blocks, K::Args{table, seed.const_data_ptr<int64_t>(), steps_fp64});
}

}  // namespace agd_kernels::grid
