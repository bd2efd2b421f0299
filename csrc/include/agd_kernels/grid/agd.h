// AGD kernel bodies (agd_kernels::agd_step_, docs/agd.md §6 phases B and C): two launches after
// slice_sumsq_ (phase A), with G, eta and the step computed on the device, never read by the host.
//   AgdScalarsKernel  one block: G = (1/depth)·Σ sv·√sumsq ÷ grad_scale over every slot (fp64 per-thread
//                     sums, fixed tree), eta = agd_eta(G), step = gain·eta/depth; writes eta and G (the op's
//                     outputs) and step (for the update). found_inf: eta = G = 0 and nothing else.
//   AgdUpdateKernel   p ← p − c·g per element, c from ../agd.h's agd_coefficient: one per tensor for a
//                     one-tap matrix or a follower (pooled owner slots), per tap (element index mod K) for a
//                     matrix with K > 1 taps. 12 B per fp32 element. kTelemetry: the five sums of
//                     grid/telemetry.h, g divided by grad_scale (the update itself never needs it); a tensor
//                     without slots still walks its elements for them (Δw = 0) but stores nothing.
// Rounding follows the CPU backend: G and eta in fp64, rounded to fp32 once; step = fp32(gain·eta_fp32/depth).
#pragma once
#include "agd_kernels/agd.h"
#include "agd_kernels/grid/block.h"
#include "agd_kernels/grid/telemetry.h"

namespace agd_kernels::grid {

struct AgdScalarsKernel {
  static constexpr int kThreads = grid::kThreads;

  struct Args {
    const float* sumsq;
    const float* slice_sv;
    int64_t sumsq_stride, sv_stride, slots, depth;
    double gain;
    Scalar grad_scale, found_inf;
    float* eta;   // 0-d outputs
    float* G;
    float* step;  // for AgdUpdateKernel
  };
  struct Shared {
    double scratch[kThreads];
  };

  template <class Ctx>
  AGDK_DEVICE static void run(Ctx& ctx, Shared& shared, const Args& a) {
    const bool skip = skip_step(a.found_inf);
    double sum = 0.0;
    for (int64_t k = ctx.thread(); k < a.slots && !skip; k += ctx.threads())
      sum += static_cast<double>(a.slice_sv[k * a.sv_stride]) * sqrt(static_cast<double>(a.sumsq[k * a.sumsq_stride]));
    const double total = block_sum(ctx, shared.scratch, sum);
    if (ctx.thread() != 0) return;
    if (skip) {
      *a.eta = 0.0f;
      *a.G = 0.0f;
      return;
    }
    const double G = total / static_cast<double>(a.depth) / read_scalar(a.grad_scale, 1.0);
    const float eta = static_cast<float>(agd_eta(G));
    *a.G = static_cast<float>(G);
    *a.eta = eta;
    *a.step = static_cast<float>(a.gain * static_cast<double>(eta) / static_cast<double>(a.depth));
  }
};

// AgdUpdateKernel's telemetry arguments: its Args have no grad_scale of their own, telemetry's g needs it.
template <bool kOn>
struct AgdTelemetryArgs : TelemetryArgs<kOn> {};
template <>
struct AgdTelemetryArgs<true> : TelemetryArgs<true> {
  Scalar grad_scale;
};
template <bool kOn>
AGDK_HOST_DEVICE AgdTelemetryArgs<kOn> agd_telemetry_args(const TelemetryOut& out, const Scalar& grad_scale) {
  if constexpr (kOn) return AgdTelemetryArgs<true>{{out}, grad_scale};
  else return AgdTelemetryArgs<false>{};
}
template <typename M>
AGDK_DEVICE M agd_telemetry_inv_scale(const AgdTelemetryArgs<false>&) {
  return M(1);
}
template <typename M>
AGDK_DEVICE M agd_telemetry_inv_scale(const AgdTelemetryArgs<true>& a) {
  return telemetry_inv_scale<true, M>(a.grad_scale);
}

template <typename T, typename G, bool kTelemetry>
struct AgdUpdateKernel {
  using M = math_t<T>;
  static constexpr bool kCopy = kCopies<T, G>;
  static constexpr int kThreads = grid::kThreads;
  // Table columns: p, g, model param (0 without masters), first slot, slots, taps (K for a matrix, 0 for a
  // follower).
  enum List { kParam, kGrad, kModelParam, kStart, kCount, kTaps, kLists };

  struct Args : AgdTelemetryArgs<kTelemetry> {
    Table table;
    const float* sumsq;
    const float* slice_sv;
    int64_t sumsq_stride, sv_stride;
    const float* step;
    Scalar found_inf;
  };
  struct Shared : TelemetryShared<kTelemetry> {
    float coefficient;
  };

  template <class Ctx>
  AGDK_DEVICE static void run(Ctx& ctx, Shared& shared, const Args& a) {
    if (skip_step(a.found_inf)) return;
    const Table& tab = a.table;
    const Chunk c = chunk_of(tab, ctx.block());
    const int64_t start = tab.word(kStart, c.tensor), count = tab.word(kCount, c.tensor);
    const int64_t taps = tab.word(kTaps, c.tensor);
    if (count == 0) {  // no slots (a zero-size kernel dim, or its follower): nothing moves
      if constexpr (kTelemetry) unmoved_sums(ctx, shared, a, c);
      return;
    }
    const float step = *a.step;
    const float* sq = a.sumsq;
    const float* sv = a.slice_sv;
    if (taps <= 1 && ctx.thread() == 0) {
      if (taps == 1) {
        shared.coefficient = agd_coefficient(step, sv[start * a.sv_stride], sq[start * a.sumsq_stride]);
      } else {  // follower: the owner's slots pooled in slot order, in fp64
        double pooled = 0.0;
        for (int64_t j = 0; j < count; ++j) pooled += static_cast<double>(sq[(start + j) * a.sumsq_stride]);
        shared.coefficient = agd_coefficient(step, sv[start * a.sv_stride], static_cast<float>(pooled));
      }
    }
    ctx.sync();
    const float uniform = shared.coefficient;
    T* p = tab.ptr<T>(kParam, c.tensor);
    const G* g = tab.ptr<const G>(kGrad, c.tensor);
    G* model = tab.ptr<G>(kModelParam, c.tensor);
    TelemetrySums<kTelemetry, T> sums;
    const M inv_scale = agd_telemetry_inv_scale<M>(a);
    for_each_vector<T>(ctx, tab, c, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      M pv[W], gv[W], w[W];
      load_pack<W>(p, i, pv);
      load_pack<W>(g, i, gv);
      if constexpr (kTelemetry) {  // the weights before the update
#pragma unroll
        for (int k = 0; k < W; ++k) w[k] = pv[k];
      }
#pragma unroll
      for (int k = 0; k < W; ++k) {
        // Row-major (rows x K): element i + k belongs to tap (i + k) mod K. Recomputed per element rather
        // than staged: conv weights are a small share of a model's elements, and K is unbounded.
        const int64_t j = taps > 1 ? (i + k) % taps : 0;
        const float coefficient =
            taps > 1 ? agd_coefficient(step, sv[(start + j) * a.sv_stride], sq[(start + j) * a.sumsq_stride])
                     : uniform;
        agd_element(pv[k], gv[k], static_cast<M>(coefficient));
      }
      if constexpr (kTelemetry) sums.template add<W>(w, gv, pv, inv_scale);
      store_pack<W>(p, i, pv);
      if (kCopy) store_pack<W>(model, i, pv);
    });
    if constexpr (kTelemetry) finish_block(ctx, shared, sums, a, tab, c, shared.arrived_last);
  }

  // Telemetry of a tensor without slots: its weights do not move (Δw = 0), their sums count all the same.
  template <class Ctx>
  AGDK_DEVICE static void unmoved_sums(Ctx& ctx, Shared& shared, const Args& a, const Chunk& c) {
    const Table& tab = a.table;
    const T* p = tab.ptr<const T>(kParam, c.tensor);
    const G* g = tab.ptr<const G>(kGrad, c.tensor);
    TelemetrySums<true, T> sums;
    const M inv_scale = agd_telemetry_inv_scale<M>(a);
    for_each_vector<T>(ctx, tab, c, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      M pv[W], gv[W];
      load_pack<W>(p, i, pv);
      load_pack<W>(g, i, gv);
      sums.template add<W>(pv, gv, pv, inv_scale);
    });
    finish_block(ctx, shared, sums, a, tab, c, shared.arrived_last);
  }
};

}  // namespace agd_kernels::grid
