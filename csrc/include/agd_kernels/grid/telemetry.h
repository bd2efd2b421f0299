// Telemetry in the elementwise grid kernel bodies (agd_kernels/ops.py, "Telemetry"; docs/telemetry.md): the
// five sums of agd_kernels/reference/telemetry.py per tensor, in the update's own pass. A body with
// kTelemetry = true keeps five running sums per thread beside its element loop (the weights before the update
// are still in registers when the update writes them), ends the block with one fixed-tree reduction of all
// five (block_sum's rule, five values per node) into the block's slots of a scratch buffer, and the tensor's
// last block (last_block, as the step counters use it) adds its blocks' slots in block order into the tensor's
// row. No float atomics: one possible result for given inputs, whatever order the blocks run in.
// Accumulation: terms and each thread's running sums in the math type (fp32, as the contract asks; a thread
// sums 128 elements of its block's 32768), the block tree, the block partials and the tensor's sum in fp64
// (outside the loop: no register cost there). With kTelemetry = false every piece below is empty and the
// body's Args and Shared keep today's layout: the kernel is today's, instruction for instruction.
// Columns: an op adds all five, or (LAMB's two phases, reference telemetry READ_SUMS / UPDATE_SUMS) a
// contiguous range [kFrom, kTo) of them; the reductions then carry only those and leave the others' row
// entries unwritten.
#pragma once
#include "agd_kernels/grid/block.h"

namespace agd_kernels::grid {

constexpr int kTelemetryColumns = 5;  // w_sq, g_sq, w_g, d_sq, w_d
constexpr int kTelemetryGSq = 1;  // column g_sq: g_sq and w_g are [kTelemetryGSq, kTelemetryDSq)
constexpr int kTelemetryDSq = 3;  // column d_sq: d_sq and w_d are [kTelemetryDSq, kTelemetryColumns)

// The launch's telemetry: scratch slots (kTelemetryColumns per block) and the rows of the op's buffer.
struct TelemetryOut {
  double* partials;
  float* rows;
};

// A body's Args and Shared derive from these two: empty bases with telemetry off, so both keep today's
// layout and the kernel today's SASS (a trailing member instead, even 16 bytes of Args that are never read,
// made nvcc reschedule all 40 sm_80 Adam kernels: 2-3 registers more or fewer, other instruction order).
template <bool kOn>
struct TelemetryArgs {};
template <>
struct TelemetryArgs<true> {
  TelemetryOut tel;
};
template <bool kOn>
AGDK_HOST_DEVICE TelemetryArgs<kOn> telemetry_args(const TelemetryOut& out) {
  if constexpr (kOn) return TelemetryArgs<true>{out};
  else return TelemetryArgs<false>{};
}

// Shared memory of the block reduction: one column of kThreads values per sum it carries (10 KiB for all
// five, 4 KiB for two), and the arrival flag of a body that keeps none for a step counter (SGD).
template <bool kOn, int kColumns = kTelemetryColumns>
struct TelemetryShared {};
template <int kColumns>
struct TelemetryShared<true, kColumns> {
  double scratch[kColumns][kThreads];
  int32_t arrived_last;
};

// A thread's running sums (none without telemetry: bodies add to them under `if constexpr` only, so the
// dead copy of the weights is never even written and the loop is today's).
template <bool kOn, typename T>
struct TelemetrySums {};
template <typename T>
struct TelemetrySums<true, T> {
  using M = math_t<T>;
  M sum[kTelemetryColumns] = {0, 0, 0, 0, 0};  // fp32: 5 registers live across the loop, fp64 took 10

  // One vector: w the weights before the update, g the gradients as loaded, updated the new weights as
  // computed; Δw is taken from the value stored (rounded to T), g unscaled by inv_scale = 1/grad_scale.
  template <int W>
  AGDK_DEVICE void add(const M (&w)[W], const M (&g)[W], const M (&updated)[W], M inv_scale) {
#pragma unroll
    for (int k = 0; k < W; ++k) {
      sum[0] += w[k] * w[k];
      add_grad_term(w[k], g[k] * inv_scale);
      add_update_term(w[k], updated[k]);
    }
  }
  // Columns g_sq and w_g only (lamb_moments_: its w_sq is the Σp² it computes for `norms`).
  template <int W>
  AGDK_DEVICE void add_grad(const M (&w)[W], const M (&g)[W], M inv_scale) {
#pragma unroll
    for (int k = 0; k < W; ++k) add_grad_term(w[k], g[k] * inv_scale);
  }
  // Columns d_sq and w_d only (lamb_apply_, which reads no gradient on its fp32 path).
  template <int W>
  AGDK_DEVICE void add_update(const M (&w)[W], const M (&updated)[W]) {
#pragma unroll
    for (int k = 0; k < W; ++k) add_update_term(w[k], updated[k]);
  }

 private:
  AGDK_DEVICE void add_grad_term(M w, M g) {
    sum[1] += g * g;
    sum[2] += w * g;
  }
  AGDK_DEVICE void add_update_term(M w, M updated) {
    const M d = static_cast<M>(static_cast<T>(updated)) - w;
    sum[3] += d * d;
    sum[4] += w * d;
  }
};

// block_sum (grid/block.h) of columns [kFrom, kTo) of value, per thread, in one tree; every thread gets
// their sums (the other columns are neither read nor written).
template <int kFrom = 0, int kTo = kTelemetryColumns, class Ctx>
AGDK_DEVICE void block_sums(Ctx& ctx, TelemetryShared<true, kTo - kFrom>& sh, double (&value)[kTelemetryColumns]) {
  const int tid = ctx.thread();
#pragma unroll
  for (int j = kFrom; j < kTo; ++j) sh.scratch[j - kFrom][tid] = value[j];
  ctx.sync();
  for (int s = ctx.threads() / 2; s > 0; s /= 2) {
    if (tid < s) {
#pragma unroll
      for (int j = 0; j < kTo - kFrom; ++j) sh.scratch[j][tid] += sh.scratch[j][tid + s];
    }
    ctx.sync();
  }
#pragma unroll
  for (int j = kFrom; j < kTo; ++j) value[j] = sh.scratch[j - kFrom][0];
  ctx.sync();  // scratch may be reused right after
}

// The block's sums of columns [kFrom, kTo) into its scratch slots (thread 0); before the body's last_block,
// whose barrier and fence order them before the last block's reads.
template <int kFrom = 0, int kTo = kTelemetryColumns, class Ctx, typename T>
AGDK_DEVICE void telemetry_block(Ctx& ctx, TelemetryShared<true, kTo - kFrom>& sh, const TelemetrySums<true, T>& acc,
                                 const TelemetryOut& out) {
  double sum[kTelemetryColumns];
#pragma unroll
  for (int j = kFrom; j < kTo; ++j) sum[j] = static_cast<double>(acc.sum[j]);
  block_sums<kFrom, kTo>(ctx, sh, sum);
  if (ctx.thread() == 0) {
#pragma unroll
    for (int j = kFrom; j < kTo; ++j) out.partials[ctx.block() * kTelemetryColumns + j] = sum[j];
  }
}

// In the tensor's last block only: its blocks' slots of columns [kFrom, kTo) (consecutive, the block map's
// order) added in a fixed stride and tree, then into the tensor's row. volatile: other blocks (other SMs)
// wrote the slots. `blocks`: the tensor's block count; this block is chunk c.begin / kChunk of them, so they
// start that many blocks before it.
template <int kFrom = 0, int kTo = kTelemetryColumns, class Ctx>
AGDK_DEVICE void telemetry_tensor(Ctx& ctx, TelemetryShared<true, kTo - kFrom>& sh, const TelemetryOut& out,
                                  const Chunk& c, int64_t blocks) {
  const int64_t first = ctx.block() - c.begin / kChunk;
  const volatile double* slots = out.partials + first * kTelemetryColumns;
  double total[kTelemetryColumns] = {0.0, 0.0, 0.0, 0.0, 0.0};
  for (int64_t b = ctx.thread(); b < blocks; b += ctx.threads()) {
#pragma unroll
    for (int j = kFrom; j < kTo; ++j) total[j] += slots[b * kTelemetryColumns + j];
  }
  block_sums<kFrom, kTo>(ctx, sh, total);
  if (ctx.thread() == 0) {
#pragma unroll
    for (int j = kFrom; j < kTo; ++j) out.rows[c.tensor * kTelemetryColumns + j] += static_cast<float>(total[j]);
  }
}

// The end of an elementwise body, in every thread: the telemetry reductions of columns [kFrom, kTo) (when
// on) around the block's arrival at the tensor's counter. Returns whether this block is the tensor's last
// (the one that advances a step counter). A body without step counters calls it only with telemetry on.
template <int kFrom = 0, int kTo = kTelemetryColumns, bool kOn, typename T, class Ctx>
AGDK_DEVICE bool finish_block(Ctx& ctx, TelemetryShared<kOn, kTo - kFrom>& sh, TelemetrySums<kOn, T>& acc,
                              const TelemetryArgs<kOn>& args, const Table& tab, const Chunk& c, int32_t& flag) {
  if constexpr (!kOn) {
    // Today's call, expression for expression: hoisting blocks_of above the arrival (as below) reorders
    // the SASS of the telemetry-off kernels (sm_80 fp32 Adam: 80 lines shorter, 2 registers fewer).
    return last_block(ctx, tab.counters + c.tensor, blocks_of(tab.numel(c.tensor)), flag);
  } else {
    const int64_t blocks = blocks_of(tab.numel(c.tensor));
    telemetry_block<kFrom, kTo>(ctx, sh, acc, args.tel);
    const bool last = last_block(ctx, tab.counters + c.tensor, blocks, flag);
    if (last) telemetry_tensor<kFrom, kTo>(ctx, sh, args.tel, c, blocks);
    return last;
  }
}

// 1/grad_scale for the sums' gradients (the loss's: not negated by maximize); unread with telemetry off.
template <bool kOn, typename M>
AGDK_DEVICE M telemetry_inv_scale(const Scalar& grad_scale) {
  return kOn ? static_cast<M>(1.0 / read_scalar(grad_scale, 1.0)) : M(1);
}

}  // namespace agd_kernels::grid
