// Adam / AdamW / AMSGrad kernel body (agd_kernels::adam_step_): one launch per step over every tensor of the
// call, fp32 moving 16 B read + 12 B written per element (20 + 16 with amsgrad; master weights 14 + 14),
// math from ../adam.h.
#pragma once
#include "agd_kernels/adam.h"
#include "agd_kernels/grid/block.h"
#include "agd_kernels/grid/telemetry.h"

namespace agd_kernels::grid {

template <typename T, typename G, bool kL2, bool kAmsgrad, bool kLerpFromEnd, bool kTelemetry>
struct AdamKernel {
  using M = math_t<T>;
  static constexpr bool kCopy = kCopies<T, G>;
  static constexpr int kThreads = grid::kThreads;
  enum List { kParam, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq, kModelParam, kStep, kLists };

  struct Args : TelemetryArgs<kTelemetry> {
    Table table;
    Scalar lr, grad_scale, found_inf;
    double beta1, beta2, eps, weight_decay;
    bool decoupled, maximize, steps_fp64;
  };
  struct Shared : TelemetryShared<kTelemetry> {
    AdamScalars<M> scalars;  // computed once per block: two fp64 pows per block, not per thread
    double step;
    int32_t last;
  };

  template <class Ctx>
  AGDK_DEVICE static void run(Ctx& ctx, Shared& shared, const Args& a) {
    if (skip_step(a.found_inf)) return;  // the same answer in every block: none writes, none arrives
    const Table& tab = a.table;
    const Chunk c = chunk_of(tab, ctx.block());
    void* step = tab.ptr<void>(kStep, c.tensor);
    if (ctx.thread() == 0) {
      const double grad_mul = (a.maximize ? -1.0 : 1.0) / read_scalar(a.grad_scale, 1.0);
      shared.step = next_step(step, a.steps_fp64);
      shared.scalars = adam_scalars<M>(read_scalar(a.lr, 0.0), shared.step, a.beta1, a.beta2, a.eps,
                                       a.weight_decay, a.decoupled, grad_mul);
    }
    ctx.sync();
    const AdamScalars<M> s = shared.scalars;
    T* p = tab.ptr<T>(kParam, c.tensor);
    const G* g = tab.ptr<const G>(kGrad, c.tensor);
    G* model = tab.ptr<G>(kModelParam, c.tensor);
    T* m = tab.ptr<T>(kExpAvg, c.tensor);
    T* v = tab.ptr<T>(kExpAvgSq, c.tensor);
    T* vmax = tab.ptr<T>(kMaxExpAvgSq, c.tensor);
    TelemetrySums<kTelemetry, T> sums;
    const M inv_scale = telemetry_inv_scale<kTelemetry, M>(a.grad_scale);
    for_each_vector<T>(ctx, tab, c, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      M pv[W], gv[W], mv[W], vv[W], xv[W], w[W];
      load_pack<W>(p, i, pv);
      load_pack<W>(g, i, gv);
      load_pack<W>(m, i, mv);
      load_pack<W>(v, i, vv);
      if (kAmsgrad) load_pack<W>(vmax, i, xv);
      if constexpr (kTelemetry) {  // the weights before the update
#pragma unroll
        for (int k = 0; k < W; ++k) w[k] = pv[k];
      }
#pragma unroll
      for (int k = 0; k < W; ++k) adam_element<kL2, kAmsgrad, kLerpFromEnd>(pv[k], gv[k], mv[k], vv[k], xv[k], s);
      if constexpr (kTelemetry) sums.template add<W>(w, gv, pv, inv_scale);
      store_pack<W>(p, i, pv);
      store_pack<W>(m, i, mv);
      store_pack<W>(v, i, vv);
      if (kAmsgrad) store_pack<W>(vmax, i, xv);
      if (kCopy) store_pack<W>(model, i, pv);
    });
    // Every block read the old step above; the tensor's last block advances it once all have.
    if (finish_block(ctx, shared, sums, a, tab, c, shared.last) && ctx.thread() == 0)
      store_step(step, a.steps_fp64, shared.step);
  }
};

}  // namespace agd_kernels::grid
