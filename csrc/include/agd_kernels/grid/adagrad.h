// Adagrad kernel body (agd_kernels::adagrad_step_, dense gradients): one launch per step, math from
// ../adagrad.h; lr/(1 + (t - 1)·lr_decay) uses the tensor's advanced step t.
#pragma once
#include "agd_kernels/adagrad.h"
#include "agd_kernels/grid/block.h"
#include "agd_kernels/grid/telemetry.h"

namespace agd_kernels::grid {

template <typename T, typename G, bool kWeightDecay, bool kTelemetry>
struct AdagradKernel {
  static constexpr bool kCopy = kCopies<T, G>;
  using M = math_t<T>;
  static constexpr int kThreads = grid::kThreads;
  enum List { kParam, kGrad, kStateSum, kModelParam, kStep, kLists };

  struct Args : TelemetryArgs<kTelemetry> {
    Table table;
    Scalar lr, grad_scale, found_inf;
    double lr_decay, weight_decay, eps;
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
    void* step = tab.ptr<void>(kStep, c.tensor);
    const double t = next_step(step, a.steps_fp64);
    const double grad_mul = (a.maximize ? -1.0 : 1.0) / read_scalar(a.grad_scale, 1.0);
    const AdagradScalars<M> s =
        adagrad_scalars<M>(read_scalar(a.lr, 0.0), t, a.lr_decay, a.weight_decay, a.eps, grad_mul);
    T* p = tab.ptr<T>(kParam, c.tensor);
    const G* g = tab.ptr<const G>(kGrad, c.tensor);
    G* model = tab.ptr<G>(kModelParam, c.tensor);
    T* sum = tab.ptr<T>(kStateSum, c.tensor);
    TelemetrySums<kTelemetry, T> sums;
    const M inv_scale = telemetry_inv_scale<kTelemetry, M>(a.grad_scale);
    for_each_vector<T>(ctx, tab, c, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      M pv[W], gv[W], sv[W], w[W];
      load_pack<W>(p, i, pv);
      load_pack<W>(g, i, gv);
      load_pack<W>(sum, i, sv);
      if constexpr (kTelemetry) {  // the weights before the update
#pragma unroll
        for (int k = 0; k < W; ++k) w[k] = pv[k];
      }
#pragma unroll
      for (int k = 0; k < W; ++k) adagrad_element<kWeightDecay>(pv[k], gv[k], sv[k], s);
      if constexpr (kTelemetry) sums.template add<W>(w, gv, pv, inv_scale);
      store_pack<W>(p, i, pv);
      store_pack<W>(sum, i, sv);
      if (kCopy) store_pack<W>(model, i, pv);
    });
    if (finish_block(ctx, shared, sums, a, tab, c, shared.last) && ctx.thread() == 0)
      store_step(step, a.steps_fp64, t);
  }
};

}  // namespace agd_kernels::grid
