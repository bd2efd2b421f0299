// LAMB kernel bodies (agd_kernels::lamb_moments_ and lamb_apply_, math from ../lamb.h): with slice_sumsq_ on
// the gradients first, a step is three launches, none of whose scalars the host reads.
//   LambMomentsKernel  moments (stored for fp32; deferred to apply for 16-bit types, kLambDeferMoments), u,
//                      and per block fp64 sums of p² and u² (fixed trees); the tensor's last block adds its
//                      blocks' partials (strided fixed order + tree) into norms[2i], norms[2i + 1] and
//                      advances the step counter.
//   LambApplyKernel    trust ratio from norms (which the caller may have all-reduced in between), then
//                      p ← p − lr·ratio·u, u recomputed from the stored (or, 16-bit, recomputed) moments.
// Both form the global clip divisor from grad_sumsq in every block (a few hundred slots: a strided read and
// one fixed tree, the same value in every block) rather than in one more launch.
// kTelemetry (grid/telemetry.h) splits the five sums as the reference does: the moments kernel adds w_sq (the
// tensor's Σp² it computes for `norms`, fp64 per element), g_sq and w_g (g divided by grad_scale, before the
// clip); the apply kernel d_sq and w_d. Neither writes the other's columns.
#pragma once
#include "agd_kernels/grid/block.h"
#include "agd_kernels/grid/telemetry.h"
#include "agd_kernels/lamb.h"

namespace agd_kernels::grid {

// A 1-D fp32/fp64 tensor the kernels read (grad_sumsq) or write (norms).
struct Vector {
  void* ptr;
  int64_t numel, stride;
  bool fp64;

  AGDK_DEVICE double get(int64_t i) const {
    return fp64 ? static_cast<const double*>(ptr)[i * stride]
                : static_cast<double>(static_cast<const float*>(ptr)[i * stride]);
  }
  AGDK_DEVICE void set(int64_t i, double value) const {
    if (fp64) {
      static_cast<double*>(ptr)[i * stride] = value;
    } else {
      static_cast<float*>(ptr)[i * stride] = static_cast<float>(value);
    }
  }
};

struct LambHyper {
  double max_grad_norm, beta1, beta2, eps, weight_decay;
  bool bias_correction, grad_averaging, steps_fp64;
};

// The element functions are called qualified (agd_kernels::lamb_moments, ::lamb_apply): the host launchers
// of the same names in namespace grid (csrc/grid/lamb_ops.h) would otherwise hide them.
enum LambList { kLambParam, kLambGrad, kLambExpAvg, kLambExpAvgSq, kLambModelParam, kLambStep };

// 1 / (grad_scale · clip divisor) in every thread: Σ grad_sumsq over a fixed tree, then lamb_clip_divisor.
template <class Ctx>
AGDK_DEVICE double lamb_grad_mul(Ctx& ctx, double* scratch, const Vector& grad_sumsq, const LambHyper& h,
                                 double scale) {
  double sum = 0.0;
  for (int64_t k = ctx.thread(); k < grad_sumsq.numel; k += ctx.threads()) sum += grad_sumsq.get(k);
  const double total = block_sum(ctx, scratch, sum);
  return 1.0 / (scale * lamb_clip_divisor(total, h.max_grad_norm, scale));
}

template <typename T, typename G, bool kL2, bool kDecoupled, bool kTelemetry>
struct LambMomentsKernel {
  using M = math_t<T>;
  static constexpr int kThreads = grid::kThreads;
  static constexpr bool kDefer = kLambDeferMoments<T>;

  struct Args : TelemetryArgs<kTelemetry> {
    Table table;
    Vector grad_sumsq, norms;
    double* partials;  // two per block
    Scalar grad_scale, found_inf;
    LambHyper h;
  };
  struct Shared : TelemetryShared<kTelemetry, kTelemetryDSq - kTelemetryGSq> {
    double scratch[kThreads];
    LambScalars<M> scalars;
    double step;
    int32_t last;
  };

  template <class Ctx>
  AGDK_DEVICE static void run(Ctx& ctx, Shared& shared, const Args& a) {
    if (skip_step(a.found_inf)) return;
    const Table& tab = a.table;
    const Chunk c = chunk_of(tab, ctx.block());
    const double grad_mul = lamb_grad_mul(ctx, shared.scratch, a.grad_sumsq, a.h, read_scalar(a.grad_scale, 1.0));
    // The step pointer is read from the table at each use rather than kept live: kept, ptxas saved it to
    // the stack across lamb_scalars' fp64 calls (8 B of local memory in 7 of the 16 master-weights
    // variants, sm_80/sm_90).
    if (ctx.thread() == 0) {
      shared.step = next_step(tab.ptr<void>(kLambStep, c.tensor), a.h.steps_fp64);
      shared.scalars = lamb_scalars<M>(shared.step, a.h.beta1, a.h.beta2, a.h.eps, a.h.weight_decay,
                                       a.h.bias_correction, a.h.grad_averaging, grad_mul);
    }
    ctx.sync();
    const LambScalars<M> s = shared.scalars;
    const T* p = tab.ptr<const T>(kLambParam, c.tensor);
    const G* g = tab.ptr<const G>(kLambGrad, c.tensor);
    T* m = tab.ptr<T>(kLambExpAvg, c.tensor);
    T* v = tab.ptr<T>(kLambExpAvgSq, c.tensor);
    double acc_p = 0.0, acc_u = 0.0;
    TelemetrySums<kTelemetry, T> sums;
    const M inv_scale = telemetry_inv_scale<kTelemetry, M>(a.grad_scale);
    for_each_vector<T>(ctx, tab, c, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      M pv[W], gv[W], mv[W], vv[W];
      load_pack<W>(p, i, pv);
      load_pack<W>(g, i, gv);
      load_pack<W>(m, i, mv);
      load_pack<W>(v, i, vv);
      if constexpr (kTelemetry) sums.template add_grad<W>(pv, gv, inv_scale);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        agd_kernels::lamb_moments<kL2>(pv[k], gv[k], mv[k], vv[k], s);
        const double pd = pv[k], ud = lamb_direction<kDecoupled>(pv[k], mv[k], vv[k], s);
        acc_p += pd * pd;  // exact: the square of an fp32 value fits fp64
        acc_u += ud * ud;
      }
      if (!kDefer) {
        store_pack<W>(m, i, mv);
        store_pack<W>(v, i, vv);
      }
    });
    const double sum_p = block_sum(ctx, shared.scratch, acc_p);
    const double sum_u = block_sum(ctx, shared.scratch, acc_u);
    if (ctx.thread() == 0) {
      a.partials[2 * ctx.block()] = sum_p;
      a.partials[2 * ctx.block() + 1] = sum_u;
    }
    if constexpr (kTelemetry) telemetry_block<kTelemetryGSq, kTelemetryDSq>(ctx, shared, sums, a.tel);
    const int64_t blocks = blocks_of(tab.numel(c.tensor));
    if (!last_block(ctx, tab.counters + c.tensor, blocks, shared.last)) return;
    // Telemetry's g_sq and w_g first: after the norms' trees, ptxas reloaded the thread index from the stack
    // inside this tree's loop (fp32, no weight decay, sm_80 and sm_90); here the reload stays outside loops.
    if constexpr (kTelemetry) telemetry_tensor<kTelemetryGSq, kTelemetryDSq>(ctx, shared, a.tel, c, blocks);
    // A tensor's blocks are consecutive in the block map: the first is this block minus its chunk index.
    const volatile double* partials = a.partials + 2 * (ctx.block() - c.begin / kChunk);
    double part_p = 0.0, part_u = 0.0;
    for (int64_t b = ctx.thread(); b < blocks; b += ctx.threads()) {
      part_p += partials[2 * b];
      part_u += partials[2 * b + 1];
    }
    const double norm_p = block_sum(ctx, shared.scratch, part_p);
    const double norm_u = block_sum(ctx, shared.scratch, part_u);
    if (ctx.thread() == 0) {
      a.norms.set(2 * c.tensor, norm_p);
      a.norms.set(2 * c.tensor + 1, norm_u);
      store_step(tab.ptr<void>(kLambStep, c.tensor), a.h.steps_fp64, shared.step);
    }
    if constexpr (kTelemetry) {
      if (ctx.thread() == 0) a.tel.rows[c.tensor * kTelemetryColumns] += static_cast<float>(norm_p);  // w_sq
    }
  }
};

template <typename T, typename G, bool kL2, bool kDecoupled, bool kTelemetry>
struct LambApplyKernel {
  using M = math_t<T>;
  static constexpr bool kCopy = kCopies<T, G>;
  static constexpr int kThreads = grid::kThreads;
  static constexpr bool kDefer = kLambDeferMoments<T>;

  struct Args : TelemetryArgs<kTelemetry> {
    Table table;
    Vector grad_sumsq, norms;
    Scalar lr, grad_scale, found_inf;
    LambHyper h;
    bool use_trust_ratio;
    double phi_min, phi_max;
  };
  struct Shared : TelemetryShared<kTelemetry, kTelemetryColumns - kTelemetryDSq> {
    double scratch[kThreads];
    LambScalars<M> scalars;
    M step_size;
  };

  template <class Ctx>
  AGDK_DEVICE static void run(Ctx& ctx, Shared& shared, const Args& a) {
    if (skip_step(a.found_inf)) return;
    const Table& tab = a.table;
    const Chunk c = chunk_of(tab, ctx.block());
    // Only the deferred (16-bit) path recomputes the moments from the clipped gradient.
    const double grad_mul =
        kDefer ? lamb_grad_mul(ctx, shared.scratch, a.grad_sumsq, a.h, read_scalar(a.grad_scale, 1.0)) : 1.0;
    if (ctx.thread() == 0) {
      const void* step = tab.ptr<const void>(kLambStep, c.tensor);
      const double t = a.h.steps_fp64 ? *static_cast<const double*>(step)
                                      : static_cast<double>(*static_cast<const float*>(step));
      shared.scalars = lamb_scalars<M>(t, a.h.beta1, a.h.beta2, a.h.eps, a.h.weight_decay, a.h.bias_correction,
                                       a.h.grad_averaging, grad_mul);
      const double ratio = a.use_trust_ratio ? lamb_trust_ratio(a.norms.get(2 * c.tensor),
                                                                a.norms.get(2 * c.tensor + 1), a.phi_min, a.phi_max)
                                             : 1.0;
      shared.step_size = static_cast<M>(read_scalar(a.lr, 0.0) * ratio);
    }
    ctx.sync();
    const LambScalars<M> s = shared.scalars;
    const M step_size = shared.step_size;
    T* p = tab.ptr<T>(kLambParam, c.tensor);
    const G* g = tab.ptr<const G>(kLambGrad, c.tensor);
    T* m = tab.ptr<T>(kLambExpAvg, c.tensor);
    T* v = tab.ptr<T>(kLambExpAvgSq, c.tensor);
    G* model = tab.ptr<G>(kLambModelParam, c.tensor);
    TelemetrySums<kTelemetry, T> sums;
    for_each_vector<T>(ctx, tab, c, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      M pv[W], gv[W], mv[W], vv[W], w[W];
      load_pack<W>(p, i, pv);
      if (kDefer) load_pack<W>(g, i, gv);
      load_pack<W>(m, i, mv);
      load_pack<W>(v, i, vv);
      if constexpr (kTelemetry) {  // the weights before the update
#pragma unroll
        for (int k = 0; k < W; ++k) w[k] = pv[k];
      }
#pragma unroll
      for (int k = 0; k < W; ++k) {
        if (kDefer) agd_kernels::lamb_moments<kL2>(pv[k], gv[k], mv[k], vv[k], s);
        agd_kernels::lamb_apply(pv[k], lamb_direction<kDecoupled>(pv[k], mv[k], vv[k], s), step_size);
      }
      if constexpr (kTelemetry) sums.template add_update<W>(w, pv);
      store_pack<W>(p, i, pv);
      if (kCopy) store_pack<W>(model, i, pv);
      if (kDefer) {
        store_pack<W>(m, i, mv);
        store_pack<W>(v, i, vv);
      }
    });
    if constexpr (kTelemetry) finish_block<kTelemetryDSq>(ctx, shared, sums, a, tab, c, shared.arrived_last);
  }
};

}  // namespace agd_kernels::grid
