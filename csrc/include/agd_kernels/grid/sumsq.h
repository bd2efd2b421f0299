// Per-slice sums of squares kernel body (agd_kernels::slice_sumsq_), deterministic: one launch.
//
// Table entries are slices, not tensors: slice j of a (o, i, *k) tensor with K = prod(k) taps is column j of
// a row-major (o*i) x K matrix, i.e. R = o*i elements at stride K from base + j (one entry per slot of
// `out`, in slot order; a rank <= 1 tensor or a matrix is one entry of stride 1). Each block sums its chunk
// of rows into one fp64 partial; the slice's last block adds the partials of its blocks in block order.
//
// Accumulation policy (also what a port would otherwise re-derive): squares are rounded in the math type
// (fp32 for fp32/bf16/fp16), the squares of one 128-bit vector (4 or 8 of them) are added in fp32, and
// everything above that is fp64: each thread's running sum, the block's fixed tree (block_sum), and the
// partials of a slice. So the only fp32 sums have at most 8 terms (relative error <= 7 ulps of fp32), the
// result does not depend on the block size's effect on summation order beyond fp64 rounding, and it has
// one possible value for given inputs whatever order the blocks finish in.
#pragma once
#include "agd_kernels/grid/block.h"

namespace agd_kernels::grid {

template <typename T>
struct SliceSumsqKernel {
  using M = math_t<T>;
  static constexpr int kThreads = grid::kThreads;
  // Table columns: the slice's first element, its stride (K), the index of its first block.
  enum List { kData, kStride, kFirstBlock, kLists };

  struct Args {
    Table table;
    double* partials;  // one per block
    void* out;
    int64_t out_stride;
    bool out_fp64;
  };
  struct Shared {
    double scratch[kThreads];
    int32_t last;
  };

  template <class Ctx>
  AGDK_DEVICE static void run(Ctx& ctx, Shared& shared, const Args& a) {
    const Table& tab = a.table;
    const Chunk c = chunk_of(tab, ctx.block());
    const T* x = tab.ptr<const T>(kData, c.tensor);
    const int64_t stride = tab.word(kStride, c.tensor);  // vector_ok implies stride 1
    double acc = 0.0;
    for_each_vector<T>(ctx, tab, c, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      M v[W];
      if (W == 1) {
        v[0] = load(x, i * stride);
      } else {
        load_pack<W>(x, i, v);
      }
      M run = v[0] * v[0];
#pragma unroll
      for (int k = 1; k < W; ++k) run += v[k] * v[k];
      acc += static_cast<double>(run);
    });
    const double block_total = block_sum(ctx, shared.scratch, acc);
    if (ctx.thread() == 0) a.partials[ctx.block()] = block_total;
    const int64_t blocks = blocks_of(tab.numel(c.tensor));
    if (!last_block(ctx, tab.counters + c.tensor, blocks, shared.last)) return;
    // The last block of the slice: its threads take the slice's partials in a fixed stride and the tree
    // adds their sums. volatile: the partials were written by other blocks (other SMs), never cached here.
    const volatile double* partials = a.partials + tab.word(kFirstBlock, c.tensor);
    double sum = 0.0;
    for (int64_t b = ctx.thread(); b < blocks; b += ctx.threads()) sum += partials[b];
    const double total = block_sum(ctx, shared.scratch, sum);
    if (ctx.thread() == 0) {
      if (a.out_fp64) {
        static_cast<double*>(a.out)[c.tensor * a.out_stride] = total;
      } else {
        static_cast<float*>(a.out)[c.tensor * a.out_stride] = static_cast<float>(total);
      }
    }
  }
};

}  // namespace agd_kernels::grid
