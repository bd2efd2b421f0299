// Stochastic rounding kernel body (agd_kernels::stochastic_round_): fp32 src into bf16 dst, bits from
// ../stochastic_round.h (the CPU backend's too). One launch; reads seed and each tensor's step on the device.
#pragma once
#include "agd_kernels/grid/block.h"
#include "agd_kernels/stochastic_round.h"

namespace agd_kernels::grid {

struct StochasticRoundKernel {
  static constexpr int kThreads = grid::kThreads;
  // Table columns: data pointers (dst is written as bf16 bits), then each tensor's first global index.
  enum List { kDst, kSrc, kOffset, kStep, kLists };

  struct Args {
    Table table;
    const int64_t* seed;
    bool steps_fp64;
  };
  struct Shared {};

  template <class Ctx>
  AGDK_DEVICE static void run(Ctx& ctx, Shared&, const Args& a) {
    const Table& tab = a.table;
    const Chunk c = chunk_of(tab, ctx.block());
    const uint64_t key = static_cast<uint64_t>(*a.seed);
    const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
    const void* step_ptr = tab.ptr<const void>(kStep, c.tensor);
    const double step_value = a.steps_fp64 ? *static_cast<const double*>(step_ptr)
                                           : static_cast<double>(*static_cast<const float*>(step_ptr));
    const uint32_t step = static_cast<uint32_t>(static_cast<int64_t>(step_value));
    const int64_t first = tab.word(kOffset, c.tensor);
    uint16_t* dst = tab.ptr<uint16_t>(kDst, c.tensor);
    const float* src = tab.ptr<const float>(kSrc, c.tensor);
    // Vectors of 4: 128-bit loads of src, 64-bit stores of dst (vector_ok: both 16-byte aligned).
    for_each_vector<float>(ctx, tab, c, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      float x[W];
      load_pack<W>(src, i, x);
      Pack<uint16_t, W> out;
#pragma unroll
      for (int k = 0; k < W; ++k)
        out.v[k] = stochastic_round_bf16(float_bits(x[k]), rounding_bits(first + i + k, step, k0, k1));
      *reinterpret_cast<Pack<uint16_t, W>*>(dst + i) = out;
    });
  }
};

}  // namespace agd_kernels::grid
