// YellowFin kernel bodies (agd_kernels::yellowfin_stats_, yellowfin_tune_, yellowfin_apply_; math from
// ../yellowfin.h): three launches per bucket step, the tuner's scalars never read by the host.
//   YellowfinStatsKernel  Σg², Σḡ·g, Σḡ², nnz(g) of one bucket: products rounded in the math type (as the
//                         reference), per-thread fp64 sums, fixed trees, four partials per block; the last
//                         block of the whole launch adds every block's partials (strided fixed order + tree).
//   YellowfinTuneKernel   one thread: the stats rows summed in row order, then yellowfin_tune in fp64.
//   YellowfinApplyKernel  skip test (found_inf, non-finite Σg²) and μ ≠ 0 read on the device per block (a
//                         block-uniform branch, not a launch-time choice), then the element update.
//                         kTelemetry: the five sums of grid/telemetry.h, g = grad · tuner[kYfGradUnscale]
//                         (1/grad_scale, written by the tune step); a skipped step adds nothing.
#pragma once
#include "agd_kernels/grid/block.h"
#include "agd_kernels/grid/telemetry.h"
#include "agd_kernels/yellowfin.h"

namespace agd_kernels::grid {

// Σ over the rows of `stats` (rows x 4, contiguous fp64) of column `col`, in row order.
AGDK_DEVICE double yf_column_sum(const double* stats, int64_t rows, int col) {
  double sum = 0.0;
  for (int64_t r = 0; r < rows; ++r) sum += stats[4 * r + col];
  return sum;
}

// T: grad_avgs' type (fp32 beside 16-bit grads G under master weights, else G).
template <typename T, typename G>
struct YellowfinStatsKernel {
  using M = math_t<T>;
  static constexpr int kThreads = grid::kThreads;
  enum List { kGrad, kGradAvg, kLists };

  struct Args {
    Table table;
    double* partials;  // four per block
    int64_t blocks;    // of the whole launch: counters[0] counts them all
    double* out;
    int64_t out_stride;
  };
  struct Shared {
    double scratch[kThreads];
    int32_t last;
  };

  template <class Ctx>
  AGDK_DEVICE static void run(Ctx& ctx, Shared& shared, const Args& a) {
    const Table& tab = a.table;
    const Chunk c = chunk_of(tab, ctx.block());
    const G* g = tab.ptr<const G>(kGrad, c.tensor);
    const T* avg = tab.ptr<const T>(kGradAvg, c.tensor);
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    for_each_vector<T>(ctx, tab, c, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      M gv[W], av[W];
      load_pack<W>(g, i, gv);
      load_pack<W>(avg, i, av);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        acc[0] += static_cast<double>(gv[k] * gv[k]);
        acc[1] += static_cast<double>(av[k] * gv[k]);
        acc[2] += static_cast<double>(av[k] * av[k]);
        acc[3] += gv[k] != M(0) ? 1.0 : 0.0;
      }
    });
    for (int s = 0; s < 4; ++s) {
      const double total = block_sum(ctx, shared.scratch, acc[s]);
      if (ctx.thread() == 0) a.partials[4 * ctx.block() + s] = total;
    }
    if (!last_block(ctx, tab.counters, a.blocks, shared.last)) return;
    const volatile double* partials = a.partials;
    for (int s = 0; s < 4; ++s) {
      double sum = 0.0;
      for (int64_t b = ctx.thread(); b < a.blocks; b += ctx.threads()) sum += partials[4 * b + s];
      const double total = block_sum(ctx, shared.scratch, sum);
      if (ctx.thread() == 0) a.out[s * a.out_stride] = total;
    }
  }
};

struct YellowfinTuneKernel {
  static constexpr int kThreads = 1;

  struct Args {
    double* tuner;
    const double* stats;
    int64_t rows;
    Scalar grad_scale, found_inf;
    YellowfinConfig config;
    double* lr;  // 0-d outputs
    double* mu;
  };
  struct Shared {};

  template <class Ctx>
  AGDK_DEVICE static void run(Ctx&, Shared&, const Args& a) {
    double sums[4];
    for (int s = 0; s < 4; ++s) sums[s] = yf_column_sum(a.stats, a.rows, s);
    // Qualified: grid::yellowfin_tune is the host launcher (csrc/grid/yellowfin_ops.h), which would hide it.
    agd_kernels::yellowfin_tune(a.tuner, sums, 1.0 / read_scalar(a.grad_scale, 1.0), skip_step(a.found_inf),
                                a.config);
    *a.lr = a.tuner[kYfAppliedLr];
    *a.mu = a.tuner[kYfMuT];
  }
};

// Telemetry's g: the raw gradient times the tuner's 1/grad_scale; unread with telemetry off.
template <bool kOn, typename M>
AGDK_DEVICE M yf_telemetry_unscale(const double* tuner) {
  if constexpr (kOn) return static_cast<M>(tuner[kYfGradUnscale]);
  else return M(1);
}

template <typename T, typename G, bool kWeightDecay, bool kTelemetry>
struct YellowfinApplyKernel {
  using M = math_t<T>;
  static constexpr bool kCopy = kCopies<T, G>;
  static constexpr int kThreads = grid::kThreads;
  enum List { kParam, kGrad, kGradAvg, kMomentumBuffer, kModelParam, kLists };

  struct Args : TelemetryArgs<kTelemetry> {
    Table table;
    const double* tuner;
    const double* stats;
    int64_t rows;
    Scalar found_inf;
    double beta, weight_decay;
  };
  struct Shared : TelemetryShared<kTelemetry> {
    YellowfinScalars<M> scalars;
    int32_t skip, heavy;
  };

  template <class Ctx>
  AGDK_DEVICE static void run(Ctx& ctx, Shared& shared, const Args& a) {
    if (ctx.thread() == 0) {
      // The same skip rule as the tune step (decision 6): found_inf, or a non-finite Σg².
      shared.skip = skip_step(a.found_inf) || !isfinite(yf_column_sum(a.stats, a.rows, 0));
      shared.heavy = a.tuner[kYfMuT] != 0.0;
      shared.scalars = yellowfin_scalars<M>(a.tuner, a.beta, a.weight_decay);
    }
    ctx.sync();
    if (shared.skip) return;
    const YellowfinScalars<M> s = shared.scalars;
    const Table& tab = a.table;
    const Chunk c = chunk_of(tab, ctx.block());
    T* p = tab.ptr<T>(kParam, c.tensor);
    const G* g = tab.ptr<const G>(kGrad, c.tensor);
    T* avg = tab.ptr<T>(kGradAvg, c.tensor);
    T* buf = tab.ptr<T>(kMomentumBuffer, c.tensor);
    G* model = tab.ptr<G>(kModelParam, c.tensor);
    const bool heavy = shared.heavy != 0;
    TelemetrySums<kTelemetry, T> sums;
    const M unscale = yf_telemetry_unscale<kTelemetry, M>(a.tuner);
    for_each_vector<T>(ctx, tab, c, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      M pv[W], gv[W], av[W], bv[W] = {}, w[W];
      load_pack<W>(p, i, pv);
      load_pack<W>(g, i, gv);
      load_pack<W>(avg, i, av);
      if constexpr (kTelemetry) {  // the weights before the update
#pragma unroll
        for (int k = 0; k < W; ++k) w[k] = pv[k];
      }
      if (heavy) {
        load_pack<W>(buf, i, bv);
#pragma unroll
        for (int k = 0; k < W; ++k) yellowfin_element<kWeightDecay, true>(pv[k], gv[k], av[k], bv[k], s);
        store_pack<W>(buf, i, bv);
      } else {  // μ = 0: the buffer is neither read nor written
#pragma unroll
        for (int k = 0; k < W; ++k) yellowfin_element<kWeightDecay, false>(pv[k], gv[k], av[k], bv[k], s);
      }
      if constexpr (kTelemetry) sums.template add<W>(w, gv, pv, unscale);
      store_pack<W>(p, i, pv);
      store_pack<W>(avg, i, av);
      if (kCopy) store_pack<W>(model, i, pv);
    });
    if constexpr (kTelemetry) finish_block(ctx, shared, sums, a, tab, c, shared.arrived_last);
  }
};

}  // namespace agd_kernels::grid
