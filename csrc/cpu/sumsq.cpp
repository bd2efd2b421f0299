// CPU backend of agd_kernels::slice_sumsq_: per-slice sums of squares of many tensors (schema and
// semantics in agd_kernels/ops.py). A tensor of shape (o, i, *k) is a (o*i) x K matrix with K = prod(k)
// taps in row-major memory; slice j is column j. Rank <= 1 tensors are one slice.
//
// Deterministic by construction: the work is cut into fixed blocks of rows x columns that do not depend
// on the thread count, each block sums its columns into its own fp64 partials, and the partials of a
// slice are added in block order on one thread.
#include <torch/library.h>

#include "isa.h"
#include "multi_tensor.h"
#include "ops.h"

namespace agd_kernels::cpu {
namespace {

// Columns per block: bounds the per-block accumulator array (8 KiB of fp64) for tensors with huge
// trailing dims; rows per block then fill kChunk elements.
constexpr int64_t kMaxBlockCols = 1024;

struct Block {
  int64_t tensor, row_begin, row_end, col_begin, col_end;
  int64_t partial;  // index of this block's first partial (column col_begin)
  int64_t numel() const { return (row_end - row_begin) * (col_end - col_begin); }
};

template <typename T>
struct SumsqBlock {
  // One slice (K == 1): n contiguous elements into one partial, in one fixed order. For fp32 and the
  // 16-bit types, squares accumulate in fp32 over runs of kRun elements per lane (kF32Lanes lanes = four
  // AVX2 registers) and each run is then added into fp64 accumulators: 8 fp32 values per lane bound the
  // run's relative error by ~8 ulps of fp32 while the loop reads at the read-only bandwidth of this
  // machine (26 GB/s like torch.dot, against 19 GB/s when every square went through an fp32 -> fp64
  // conversion). fp64 tensors accumulate in fp64 directly.
  static constexpr int kF32Lanes = 32;
  static constexpr int kRun = 8;
  static constexpr int kSpan = kF32Lanes * kRun;  // elements per fp32 run: 256, a multiple of kTile

  template <Isa I>
  static void run(const T* x, int64_t n, double* partial) {
    double acc[kLanes] = {};
    int64_t i = 0;
    if constexpr (!std::is_same_v<T, double>) {
      float tile[kSpan];
      for (; i + kSpan <= n; i += kSpan) {
        const float* v = tile;
        if constexpr (std::is_same_v<T, float>) {
          v = x + i;  // fp32 straight from memory: a copy through the stack stalls on store forwarding
        } else {
          for (int k = 0; k < kSpan; k += kTile) TileIO<I, T>::load(x + i + k, tile + k);
        }
        float run[kF32Lanes] = {};
        for (int r = 0; r < kRun; ++r)
          for (int l = 0; l < kF32Lanes; ++l) run[l] += v[r * kF32Lanes + l] * v[r * kF32Lanes + l];
        // Lane l into acc[l % kLanes] as two loops of kLanes: gcc left the modulo form scalar, a chain of
        // scalar fp64 adds per run (summing GPT-2's matrices: 0.73x the speed of torch.dot; now 1.05-1.13x).
        for (int h = 0; h < kF32Lanes; h += kLanes)
          for (int l = 0; l < kLanes; ++l) acc[l] += run[h + l];
      }
    }
    for (; i + kLanes <= n; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const double v = agd_kernels::load(x, i + l);
        acc[l] += v * v;
      }
    }
    for (int l = 0; i < n; ++i, ++l) {
      const double v = agd_kernels::load(x, i);
      acc[l] += v * v;
    }
    *partial = sum_lanes(acc);
  }
};

template <typename T>
struct SumsqColumns {
  // Several taps: rows x [c0, c1) of a row-major (rows x K) matrix into c1 - c0 partials.
  template <Isa I>
  static void run(const T* x, int64_t rows, int64_t K, int64_t c0, int64_t c1, double* partial) {
    double acc[kMaxBlockCols] = {};
    const int64_t cols = c1 - c0;
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = x + r * K + c0;
      for (int64_t c = 0; c < cols; ++c) {
        const double v = agd_kernels::load(row, c);
        acc[c] += v * v;
      }
    }
    for (int64_t c = 0; c < cols; ++c) partial[c] = acc[c];
  }
};

}  // namespace

void slice_sumsq_cpu(at::TensorList tensors, const at::Tensor& out) {
  constexpr const char* op = "slice_sumsq_";
  check_slice_sumsq(kCpu, op, tensors, out);
  if (tensors.empty()) return;

  // The tap layout needs the logical (o, i, *k) order in memory; one-slice tensors only need density.
  std::vector<at::Tensor> dense;
  dense.reserve(tensors.size());
  for (const at::Tensor& t : tensors) {
    const bool ok = num_slices(t) > 1 ? t.is_contiguous() : t.is_non_overlapping_and_dense();
    dense.push_back(ok ? t : t.contiguous());
  }
  std::vector<Block> blocks;
  std::vector<int64_t> first_partial(tensors.size() + 1, 0), slot_of(tensors.size(), 0);
  int64_t partials = 0, slot = 0;
  for (size_t t = 0; t < dense.size(); ++t) {
    const int64_t K = num_slices(dense[t]);
    const int64_t R = K > 0 ? dense[t].numel() / K : 0;
    const int64_t block_cols = std::min(std::max<int64_t>(K, 1), kMaxBlockCols);
    const int64_t block_rows = std::max<int64_t>(1, kChunk / block_cols);
    first_partial[t] = partials;
    slot_of[t] = slot;
    for (int64_t r = 0, rb = 0; r < R; r += block_rows, ++rb)
      for (int64_t c = 0; c < K; c += block_cols)
        blocks.push_back({static_cast<int64_t>(t), r, std::min(R, r + block_rows), c, std::min(K, c + block_cols),
                          partials + rb * K + c});
    partials += ((R + block_rows - 1) / block_rows) * K;
    slot += K;
  }
  first_partial[dense.size()] = partials;
  std::vector<double> partial(partials, 0.0);
  const Isa isa = active_isa();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tensors[0].scalar_type(), "slice_sumsq_cpu", [&] {
    const auto x = data_ptrs<const scalar_t>(dense);
    parallel_over_chunks(blocks, [&](const Block& b) {
      const int64_t K = num_slices(dense[b.tensor]);
      const scalar_t* base = x[b.tensor] + b.row_begin * K;
      if (K == 1) {
        run_isa<SumsqBlock<scalar_t>>(isa, base, b.row_end - b.row_begin, partial.data() + b.partial);
      } else {
        run_isa<SumsqColumns<scalar_t>>(isa, base, b.row_end - b.row_begin, K, b.col_begin, b.col_end,
                                        partial.data() + b.partial);
      }
    });
  });
  // Slice j of tensor t: its partials sit at first_partial[t] + rb * K + j, added in block-row order.
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "slice_sumsq_out", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t stride = out.stride(0);
    for (size_t t = 0; t < dense.size(); ++t) {
      const int64_t K = num_slices(dense[t]);
      for (int64_t j = 0; j < K; ++j) {
        double sum = 0.0;
        for (int64_t i = first_partial[t] + j; i < first_partial[t + 1]; i += K) sum += partial[i];
        o[(slot_of[t] + j) * stride] = static_cast<scalar_t>(sum);
      }
    }
  });
}

TORCH_LIBRARY_IMPL(agd_kernels, CPU, m) { m.impl("slice_sumsq_", &slice_sumsq_cpu); }

}  // namespace agd_kernels::cpu
