// CPU backend of the three YellowFin ops (schemas in agd_kernels/ops.py, semantics in
// agd_kernels/reference/yellowfin.py): a step is two passes over the parameters.
//   yellowfin_stats_ (pass A, per bucket): sum g^2, sum gbar*g, sum gbar^2, nnz(g); reads g and gbar.
//   yellowfin_tune_  (calling thread): the fp64 tuner step of csrc/include/agd_kernels/yellowfin.h.
//   yellowfin_apply_ (pass B, per bucket): gbar EMA and the momentum step; reads g, p, gbar, buf and
//                    writes p, gbar, buf (36 B per fp32 element over both passes, docs/yellowfin.md §9).
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <cmath>

#include "agd_kernels/yellowfin.h"
#include "isa.h"
#include "multi_tensor.h"
#include "ops.h"
#include "telemetry.h"

namespace agd_kernels::cpu {
namespace {

template <typename T, typename G>
struct YellowfinStats {
  // sums[0..3] = sum g^2, sum a*g, sum a^2, nnz(g) over n elements; products rounded in the math type
  // (as the reference does), sums in fp64 with a fixed pairwise combine: deterministic.
  template <Isa I>
  static void run(const G* g, const T* a, int64_t n, double* sums) {
    using M = math_t<T>;
    double acc[4][kLanes] = {};
    M tile[4][kTile];
    for (int64_t i = 0; i < n; i += kTile) {
      const int64_t len = n - i < kTile ? n - i : kTile;
      map_elements<I>(len, [&](M gv, M av, M& gg, M& ag, M& aa, M& nz) {
        gg = gv * gv;
        ag = av * gv;
        aa = av * av;
        nz = gv != M(0) ? M(1) : M(0);
      }, g + i, a + i, tile[0], tile[1], tile[2], tile[3]);
      for (int s = 0; s < 4; ++s)
        for (int64_t k = len; k < kTile; ++k) tile[s][k] = M(0);  // the tail adds nothing
      for (int s = 0; s < 4; ++s)
        for (int j = 0; j < kTile; j += kLanes)
          for (int l = 0; l < kLanes; ++l) acc[s][l] += static_cast<double>(tile[s][j + l]);
    }
    for (int s = 0; s < 4; ++s) sums[s] = sum_lanes(acc[s]);
  }
};

// `loop`: PlainLoop, or SummedLoop with telemetry (telemetry.h).
template <typename T, typename G, bool kWeightDecay, bool kHeavy>
struct YellowfinApply {
  template <Isa I, class Loop>
  static void run(T* p, const G* g, T* gbar, T* buf, int64_t n, YellowfinScalars<math_t<T>> s, Loop loop) {
    using M = math_t<T>;
    if constexpr (kHeavy) {
      loop.template run<I>(n, [&](M& pv, M gv, M& av, M& bv) {
        yellowfin_element<kWeightDecay, true>(pv, gv, av, bv, s);
      }, p, g, gbar, buf);
    } else {
      loop.template run<I>(n, [&](M& pv, M gv, M& av) {
        M unused = 0;
        yellowfin_element<kWeightDecay, false>(pv, gv, av, unused, s);
      }, p, g, gbar);
    }
  }
};

void check_fp64_cpu(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " is on ", t.device(), "; the cpu backend takes CPU tensors");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kDouble, op, ": ", name, " must be float64; got ", t.scalar_type());
}

// The stats rows of every bucket summed column by column, by the same ATen reduction the reference
// uses (stats.reshape(-1, 4).sum(0)), so both start the fp64 tuner step from the same bits: through the
// cubic and the log-smoothed window an ulp of sum g^2 can grow to hundreds of ulps of mu.
void summed_stats(const char* op, const at::Tensor& stats, double sums[4]) {
  check_fp64_cpu(op, "stats", stats);
  TORCH_CHECK_VALUE(stats.numel() % 4 == 0, op,
                    ": stats must hold rows of 4 values (one row per bucket); got shape ", stats.sizes());
  const at::Tensor total = stats.reshape({-1, 4}).sum(0);
  const double* x = total.const_data_ptr<double>();
  for (int s = 0; s < 4; ++s) sums[s] = x[s];
}

}  // namespace

void yellowfin_stats_cpu(at::TensorList grads, at::TensorList grad_avgs, const at::Tensor& out) {
  constexpr const char* op = "yellowfin_stats_";
  // grad_avgs set the dtype (fp32 beside 16-bit grads under master weights), as params do for the other ops
  check_params(kCpu, op, grad_avgs, "grad_avgs");
  const at::ScalarType grad_type = check_grads(kCpu, op, grad_avgs, grads, "grad_avgs");
  check_fp64_cpu(op, "out", out);
  TORCH_CHECK_VALUE(out.numel() == 4 && out.dim() == 1, op, ": out must be a 1-D tensor of 4 values; got shape ",
                    out.sizes());
  double total[4] = {0.0, 0.0, 0.0, 0.0};
  if (!grads.empty()) {
    const Isa isa = active_isa();
    const auto chunks = make_chunks(grads);
    std::vector<double> partials(4 * chunks.size());
    dispatch_param_grad(grad_avgs[0].scalar_type(), grad_type, [&](auto types) {
      using scalar_t = typename decltype(types)::Param;
      using grad_t = typename decltype(types)::Grad;
      const auto g = data_ptrs<const grad_t>(grads);
      const auto a = data_ptrs<const scalar_t>(grad_avgs);
      parallel_over_chunks(chunks, [&](const Chunk& c) {
        const int64_t k = &c - chunks.data();  // c is chunks[k]: its partials sit at 4k .. 4k + 3
        run_isa<YellowfinStats<scalar_t, grad_t>>(isa, g[c.tensor] + c.begin, a[c.tensor] + c.begin, c.numel(),
                                                  partials.data() + 4 * k);
      });
    });
    for (size_t k = 0; k < chunks.size(); ++k)  // chunk order: deterministic for any thread count
      for (int s = 0; s < 4; ++s) total[s] += partials[4 * k + s];
  }
  double* o = out.mutable_data_ptr<double>();
  for (int s = 0; s < 4; ++s) o[s * out.stride(0)] = total[s];
}

std::tuple<at::Tensor, at::Tensor> yellowfin_tune_cpu(
    const at::Tensor& tuner, const at::Tensor& stats, double numel, double beta, int64_t curv_win_width,
    bool zero_debias, bool sparsity_debias, double clip_thresh, double auto_clip_fac, bool adapt_clip,
    double stat_protect_fac, double catastrophic_move_thresh, bool force_non_inc_step, bool h_min_log_smooth,
    bool h_max_log_smooth, const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "yellowfin_tune_";
  check_fp64_cpu(op, "tuner", tuner);
  TORCH_CHECK_VALUE(curv_win_width >= 1, op, ": curv_win_width must be >= 1; got ", curv_win_width);
  TORCH_CHECK_VALUE(tuner.dim() == 1 && tuner.is_contiguous() && tuner.numel() == kYfSlots + curv_win_width, op,
                    ": tuner must be a contiguous 1-D tensor of ", kYfSlots, " slots + curv_win_width = ",
                    kYfSlots + curv_win_width, " values; got shape ", tuner.sizes());
  double sums[4];
  summed_stats(op, stats, sums);
  const double inv_scale = grad_multiplier(op, grad_scale, /*maximize=*/false);
  const bool skip = found_inf_set(op, found_inf);
  const YellowfinConfig config{numel, beta, curv_win_width, zero_debias, sparsity_debias, clip_thresh,
                               auto_clip_fac, adapt_clip, stat_protect_fac, catastrophic_move_thresh,
                               force_non_inc_step, h_min_log_smooth, h_max_log_smooth};
  double* state = tuner.mutable_data_ptr<double>();
  yellowfin_tune(state, sums, inv_scale, skip, config);
  return {at::scalar_tensor(state[kYfAppliedLr], tuner.options()), at::scalar_tensor(state[kYfMuT], tuner.options())};
}

void yellowfin_apply_cpu(at::TensorList params, at::TensorList grads, at::TensorList grad_avgs,
                         at::TensorList momentum_buffers, const at::Tensor& tuner, const at::Tensor& stats,
                         double beta, double weight_decay, const std::optional<at::Tensor>& found_inf,
                         at::TensorList model_params, const std::optional<at::Tensor>& telemetry) {
  constexpr const char* op = "yellowfin_apply_";
  check_telemetry(kCpu, op, params, telemetry);
  check_lists(kCpu, op, params, {{"grad_avgs", grad_avgs}, {"momentum_buffers", momentum_buffers}});
  const at::ScalarType grad_type = check_grads_and_model_params(kCpu, op, params, grads, model_params);
  check_fp64_cpu(op, "tuner", tuner);
  TORCH_CHECK_VALUE(tuner.dim() == 1 && tuner.is_contiguous() && tuner.numel() > kYfSlots, op,
                    ": tuner must be a contiguous 1-D tensor of ", kYfSlots, " slots and the window; got shape ",
                    tuner.sizes());
  double sums[4];
  summed_stats(op, stats, sums);
  // The same skip rule as yellowfin_tune_ (decision 6): nothing is written.
  if (params.empty() || found_inf_set(op, found_inf) || !std::isfinite(sums[0])) return;
  const double* state = tuner.const_data_ptr<double>();
  const Isa isa = active_isa();
  dispatch_param_grad(params[0].scalar_type(), grad_type, [&](auto types) {
    using scalar_t = typename decltype(types)::Param;
    using grad_t = typename decltype(types)::Grad;
    using M = math_t<scalar_t>;
    const auto s = yellowfin_scalars<M>(state, beta, weight_decay);
    const auto p = data_ptrs<scalar_t>(params);
    const auto g = data_ptrs<const grad_t>(grads);
    const auto a = data_ptrs<scalar_t>(grad_avgs);
    const auto b = data_ptrs<scalar_t>(momentum_buffers);
    const auto model = data_ptrs<grad_t>(model_params);
    const auto chunks = make_chunks(params);
    // g of the sums is the loss's gradient: the raw one times the 1/grad_scale yellowfin_tune_ stored.
    Telemetry tel(telemetry, chunks, state[kYfGradUnscale], isa);
    dispatch_bool(weight_decay != 0.0, [&](auto wd) {
      dispatch_bool(state[kYfMuT] != 0.0, [&](auto heavy) {
        using Kernel = YellowfinApply<scalar_t, grad_t, decltype(wd)::value, decltype(heavy)::value>;
        parallel_over_chunks(chunks, [&](const Chunk& c) {
          const int64_t t = c.tensor, i = c.begin;
          tel.update(c, p[t] + i, g[t] + i, [&](auto loop) {
            run_isa<Kernel>(isa, p[t] + i, g[t] + i, a[t] + i, b[t] + i, c.numel(), s, loop);
          });
          if (!model.empty()) round_into_model(p[t] + i, model[t] + i, c.numel());
        });
      });
    });
    tel.finish();
  });
}

TORCH_LIBRARY_IMPL(agd_kernels, CPU, m) {
  m.impl("yellowfin_stats_", &yellowfin_stats_cpu);
  m.impl("yellowfin_tune_", &yellowfin_tune_cpu);
  m.impl("yellowfin_apply_", &yellowfin_apply_cpu);
}

}  // namespace agd_kernels::cpu
