// CPU backend of agd_kernels::stochastic_round_ (schema in agd_kernels/ops.py): one parallel pass over all
// tensors; the bits and the rounding come from agd_kernels/stochastic_round.h, as in the grid kernel.
#include <torch/library.h>

#include "agd_kernels/stochastic_round.h"
#include "isa.h"
#include "multi_tensor.h"
#include "ops.h"

namespace agd_kernels::cpu {
namespace {

// Kernel of one chunk: n elements whose first has global index `first`. bf16 is written as its bits.
struct StochasticRoundChunk {
  template <Isa I>
  static void run(uint16_t* dst, const float* src, int64_t n, int64_t first, uint32_t step, uint32_t k0,
                  uint32_t k1) {
    for (int64_t i = 0; i < n; ++i)
      dst[i] = stochastic_round_bf16(float_bits(src[i]), rounding_bits(first + i, step, k0, k1));
  }
};

}  // namespace

void stochastic_round_cpu(at::TensorList dst, at::TensorList src, const at::Tensor& seed, at::TensorList steps,
                          at::IntArrayRef offsets) {
  constexpr const char* op = "stochastic_round_";
  check_stochastic_round(kCpu, op, dst, src, seed, steps, offsets);
  if (dst.empty()) return;
  const uint64_t key = static_cast<uint64_t>(seed.item<int64_t>());  // a CPU tensor: a memory read
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  std::vector<uint32_t> step(steps.size());
  // Integer-valued (checked: one element, float32/float64, CPU); truncated, then taken modulo 2^32.
  for (size_t i = 0; i < steps.size(); ++i) step[i] = static_cast<uint32_t>(static_cast<int64_t>(steps[i].item<double>()));
  std::vector<uint16_t*> d(dst.size());
  for (size_t i = 0; i < dst.size(); ++i) d[i] = static_cast<uint16_t*>(dst[i].mutable_data_ptr());
  const auto s = data_ptrs<const float>(src);
  const Isa isa = active_isa();
  parallel_over_chunks(make_chunks(dst), [&](const Chunk& c) {
    const int64_t t = c.tensor, i = c.begin;
    run_isa<StochasticRoundChunk>(isa, d[t] + i, s[t] + i, c.numel(), offsets[t] + i, step[t], k0, k1);
  });
}

TORCH_LIBRARY_IMPL(agd_kernels, CPU, m) { m.impl("stochastic_round_", &stochastic_round_cpu); }

}  // namespace agd_kernels::cpu
