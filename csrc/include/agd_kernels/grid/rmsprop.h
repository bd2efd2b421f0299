// RMSprop kernel body (agd_kernels::rmsprop_step_): plain, centered, momentum; one launch per step, math
// from ../rmsprop.h. The step counter only advances (checkpoints count it), in each tensor's last block.
#pragma once
#include "agd_kernels/grid/block.h"
#include "agd_kernels/grid/telemetry.h"
#include "agd_kernels/rmsprop.h"

namespace agd_kernels::grid {

template <typename T, typename G, bool kWeightDecay, int kCentering, bool kMomentum, bool kTelemetry>
struct RmspropKernel {
  static constexpr bool kCopy = kCopies<T, G>;
  using M = math_t<T>;
  static constexpr int kThreads = grid::kThreads;
  static constexpr bool kCentered = kCentering != kNotCentered;
  enum List { kParam, kGrad, kSquareAvg, kGradAvg, kMomentumBuffer, kModelParam, kStep, kLists };

  struct Args : TelemetryArgs<kTelemetry> {
    Table table;
    Scalar lr, grad_scale, found_inf;
    double alpha, eps, weight_decay, momentum;
    bool maximize, steps_fp64;
  };
  struct Shared : TelemetryShared<kTelemetry> {
    int32_t last;
  };

  template <class Ctx>
  AGDK_DEVICE static void run(Ctx& ctx, Shared& shared, const Args& a) {
    if (skip_step(a.found_inf)) return;
    const Table& tab = a.table;
    const Chunk c = chunk_of(tab, ctx.block());
    const double grad_mul = (a.maximize ? -1.0 : 1.0) / read_scalar(a.grad_scale, 1.0);
    const RmspropScalars<M> s =
        rmsprop_scalars<M>(read_scalar(a.lr, 0.0), a.alpha, a.eps, a.weight_decay, a.momentum, grad_mul);
    T* p = tab.ptr<T>(kParam, c.tensor);
    const G* g = tab.ptr<const G>(kGrad, c.tensor);
    G* model = tab.ptr<G>(kModelParam, c.tensor);
    T* v = tab.ptr<T>(kSquareAvg, c.tensor);
    T* gavg = tab.ptr<T>(kGradAvg, c.tensor);
    T* buf = tab.ptr<T>(kMomentumBuffer, c.tensor);
    TelemetrySums<kTelemetry, T> sums;
    const M inv_scale = telemetry_inv_scale<kTelemetry, M>(a.grad_scale);
    for_each_vector<T>(ctx, tab, c, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      M pv[W], gv[W], vv[W], av[W], bv[W], w[W];
      load_pack<W>(p, i, pv);
      load_pack<W>(g, i, gv);
      load_pack<W>(v, i, vv);
      if (kCentered) load_pack<W>(gavg, i, av);
      if (kMomentum) load_pack<W>(buf, i, bv);
      if constexpr (kTelemetry) {  // the weights before the update
#pragma unroll
        for (int k = 0; k < W; ++k) w[k] = pv[k];
      }
#pragma unroll
      for (int k = 0; k < W; ++k)
        rmsprop_element<kWeightDecay, kCentering, kMomentum>(pv[k], gv[k], vv[k], av[k], bv[k], s);
      if constexpr (kTelemetry) sums.template add<W>(w, gv, pv, inv_scale);
      store_pack<W>(p, i, pv);
      store_pack<W>(v, i, vv);
      if (kCentered) store_pack<W>(gavg, i, av);
      if (kMomentum) store_pack<W>(buf, i, bv);
      if (kCopy) store_pack<W>(model, i, pv);
    });
    void* step = tab.ptr<void>(kStep, c.tensor);
    const double t = next_step(step, a.steps_fp64);  // read before arriving: the last block writes it
    if (finish_block(ctx, shared, sums, a, tab, c, shared.last) && ctx.thread() == 0)
      store_step(step, a.steps_fp64, t);
  }
};

}  // namespace agd_kernels::grid
