// SGD kernel body (agd_kernels::sgd_step_): plain, momentum/dampening, Nesterov; one launch per step,
// math from ../sgd.h. No step counter, so no arrival counter either.
#pragma once
#include "agd_kernels/grid/block.h"
#include "agd_kernels/grid/telemetry.h"
#include "agd_kernels/sgd.h"

namespace agd_kernels::grid {

template <typename T, typename G, bool kWeightDecay, bool kMomentum, bool kTelemetry>
struct SgdKernel {
  using M = math_t<T>;
  static constexpr bool kCopy = kCopies<T, G>;
  static constexpr int kThreads = grid::kThreads;
  enum List { kParam, kGrad, kMomentumBuffer, kModelParam, kLists };

  struct Args : TelemetryArgs<kTelemetry> {
    Table table;
    Scalar lr, grad_scale, found_inf;
    double momentum, dampening, weight_decay;
    bool nesterov, maximize, first_step;
  };
  struct Shared : TelemetryShared<kTelemetry> {};

  template <class Ctx>
  AGDK_DEVICE static void run(Ctx& ctx, Shared& shared, const Args& a) {
    if (skip_step(a.found_inf)) return;
    const Table& tab = a.table;
    const Chunk c = chunk_of(tab, ctx.block());
    // No fp64 pow here: every thread forms the scalars itself (three cached loads) instead of a barrier.
    const double grad_mul = (a.maximize ? -1.0 : 1.0) / read_scalar(a.grad_scale, 1.0);
    const SgdScalars<M> s = sgd_scalars<M>(read_scalar(a.lr, 0.0), a.momentum, a.dampening, a.weight_decay,
                                           a.nesterov, a.first_step, grad_mul);
    T* p = tab.ptr<T>(kParam, c.tensor);
    const G* g = tab.ptr<const G>(kGrad, c.tensor);
    G* model = tab.ptr<G>(kModelParam, c.tensor);
    T* buf = tab.ptr<T>(kMomentumBuffer, c.tensor);
    TelemetrySums<kTelemetry, T> sums;
    const M inv_scale = telemetry_inv_scale<kTelemetry, M>(a.grad_scale);
    for_each_vector<T>(ctx, tab, c, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      M pv[W], gv[W], bv[W] = {}, w[W];
      load_pack<W>(p, i, pv);
      load_pack<W>(g, i, gv);
      // On the first step torch creates the buffer from d: its old contents are never read.
      if (kMomentum && !a.first_step) load_pack<W>(buf, i, bv);
      if constexpr (kTelemetry) {  // the weights before the update
#pragma unroll
        for (int k = 0; k < W; ++k) w[k] = pv[k];
      }
#pragma unroll
      for (int k = 0; k < W; ++k) sgd_element<kWeightDecay, kMomentum>(pv[k], gv[k], bv[k], s);
      if constexpr (kTelemetry) sums.template add<W>(w, gv, pv, inv_scale);
      store_pack<W>(p, i, pv);
      if (kMomentum) store_pack<W>(buf, i, bv);
      if (kCopy) store_pack<W>(model, i, pv);
    });
    if constexpr (kTelemetry) finish_block(ctx, shared, sums, a, tab, c, shared.arrived_last);
  }
};

}  // namespace agd_kernels::grid
