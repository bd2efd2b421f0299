// CPU backend of agd_kernels::lamb_step_ (schema in agd_kernels/ops.py, semantics in
// agd_kernels/reference/lamb.py). With the gradient norm pass (slice_sumsq_, before this op) a step is
// three passes over the parameters:
//   stage 1: read p, g, m, v; write m, v; per-chunk fp64 partials of ||p||^2 and ||u||^2;
//   (the calling thread: per-tensor trust ratios from the partials, added in chunk order);
//   stage 2: read p, m, v; recompute u with the same arithmetic; write p.
// fp32 moves 24 + 16 B per element over the two stages (apex: the same, plus separate norm passes);
// 16-bit types defer the moments to stage 2 (see kDeferMoments).
#include <torch/library.h>

#include <type_traits>

#include "agd_kernels/lamb.h"
#include "isa.h"
#include "multi_tensor.h"
#include "ops.h"

namespace agd_kernels::cpu {
namespace {

// 16-bit m and v round when stored, while the reference takes u from the unrounded moments: recomputing
// u from stored fp16 moments moved parameters by up to 5.8e3 (a v that rounds to 0 under eps = 1e-6).
// So the 16-bit path leaves m and v alone in stage 1 and recomputes the moments from the old state in
// stage 2 (one more read of g, 2 B per element). fp32/fp64 store them in stage 1 and stage 2 re-reads
// them: storing rounds nothing there, so both stages see the same u.
template <typename T>
constexpr bool kDeferMoments = sizeof(T) == 2;

template <typename T>
using MomentPtr = std::conditional_t<kDeferMoments<T>, const T*, T*>;

template <typename T, bool kL2, bool kDecoupled>
struct LambNorms {
  // Stage 1 on n elements: the moments (stored unless deferred) and sum p^2, sum u^2 into sums[0..1],
  // in fp64 (exact squares of fp32 values) with a fixed pairwise combine: deterministic.
  template <Isa I>
  static void run(const T* p, const T* g, MomentPtr<T> m, MomentPtr<T> v, int64_t n, LambScalars<math_t<T>> s,
                  double* sums) {
    using M = math_t<T>;
    double acc_p[kLanes] = {}, acc_u[kLanes] = {};
    M p_tile[kTile], u_tile[kTile];
    for (int64_t i = 0; i < n; i += kTile) {
      const int64_t len = n - i < kTile ? n - i : kTile;
      map_elements<I>(len, [&](M pv, M gv, M& mv, M& vv, M& p_out, M& u_out) {
        lamb_moments<kL2>(pv, gv, mv, vv, s);
        p_out = pv;
        u_out = lamb_direction<kDecoupled>(pv, mv, vv, s);
      }, p + i, g + i, m + i, v + i, p_tile, u_tile);
      for (int64_t k = len; k < kTile; ++k) p_tile[k] = u_tile[k] = M(0);  // the tail adds nothing
      for (int j = 0; j < kTile; j += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          const double pd = p_tile[j + l], ud = u_tile[j + l];
          acc_p[l] += pd * pd;
          acc_u[l] += ud * ud;
        }
      }
    }
    sums[0] = sum_lanes(acc_p);
    sums[1] = sum_lanes(acc_u);
  }
};

template <typename T, bool kL2, bool kDecoupled>
struct LambApply {
  // Stage 2: p <- p - step_size * u (step_size = lr * this tensor's trust ratio).
  template <Isa I>
  static void run(T* p, const T* g, T* m, T* v, int64_t n, LambScalars<math_t<T>> s, math_t<T> step_size) {
    using M = math_t<T>;
    if constexpr (kDeferMoments<T>) {
      map_elements<I>(n, [&](M& pv, M gv, M& mv, M& vv) {
        lamb_moments<kL2>(pv, gv, mv, vv, s);
        lamb_apply(pv, lamb_direction<kDecoupled>(pv, mv, vv, s), step_size);
      }, p, g, m, v);
    } else {
      map_elements<I>(n, [&](M& pv, M mv, M vv) {
        lamb_apply(pv, lamb_direction<kDecoupled>(pv, mv, vv, s), step_size);
      }, p, static_cast<const T*>(m), static_cast<const T*>(v));
    }
  }
};

}  // namespace

void lamb_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                   at::TensorList state_steps, const at::Tensor& lr, const at::Tensor& grad_sumsq,
                   double max_grad_norm, double beta1, double beta2, double eps, double weight_decay,
                   bool bias_correction, bool grad_averaging, bool adam_w_mode, bool use_trust_ratio,
                   double phi_min, double phi_max, const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "lamb_step_";
  check_params(op, params);
  check_like(op, "grads", params, grads);
  check_like(op, "exp_avgs", params, exp_avgs);
  check_like(op, "exp_avg_sqs", params, exp_avg_sqs);
  check_steps(op, params, state_steps);
  TORCH_CHECK(grad_sumsq.device().is_cpu(), op, ": grad_sumsq is on ", grad_sumsq.device(),
              "; the cpu backend takes CPU tensors");
  TORCH_CHECK_TYPE(grad_sumsq.scalar_type() == at::kFloat || grad_sumsq.scalar_type() == at::kDouble, op,
                   ": grad_sumsq must be float32 (or float64); got ", grad_sumsq.scalar_type());
  const double lr_value = read_scalar(op, "lr", lr);
  const double scale = grad_scale.has_value() ? read_scalar(op, "grad_scale", *grad_scale) : 1.0;
  if (params.empty() || found_inf_set(op, found_inf)) return;
  // N^2 = sum of every entry, added in order in fp64 (a few hundred values: serial and deterministic).
  double total = 0.0;
  const at::Tensor sumsq = grad_sumsq.contiguous();
  AT_DISPATCH_FLOATING_TYPES(sumsq.scalar_type(), "lamb_grad_sumsq", [&] {
    const scalar_t* x = sumsq.const_data_ptr<scalar_t>();
    for (int64_t k = 0; k < sumsq.numel(); ++k) total += static_cast<double>(x[k]);
  });
  const double clip = lamb_clip_divisor(total, max_grad_norm, scale);
  const Isa isa = active_isa();
  const std::vector<double> steps = advance_steps(state_steps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "lamb_step_cpu", [&] {
    using M = math_t<scalar_t>;
    std::vector<LambScalars<M>> scalars;
    scalars.reserve(params.size());
    for (const double t : steps) {
      scalars.push_back(lamb_scalars<M>(t, beta1, beta2, eps, weight_decay, bias_correction, grad_averaging,
                                        1.0 / (scale * clip)));
    }
    const auto p = data_ptrs<scalar_t>(params);
    const auto g = data_ptrs<const scalar_t>(grads);
    const auto m = data_ptrs<scalar_t>(exp_avgs);
    const auto v = data_ptrs<scalar_t>(exp_avg_sqs);
    const auto chunks = make_chunks(params);
    std::vector<double> partials(2 * chunks.size());
    const bool l2 = !adam_w_mode && weight_decay != 0.0, decoupled = adam_w_mode && weight_decay != 0.0;
    dispatch_bool(l2, [&](auto l2_flag) {
      dispatch_bool(decoupled, [&](auto decoupled_flag) {
        constexpr bool kL2 = decltype(l2_flag)::value, kDecoupled = decltype(decoupled_flag)::value;
        parallel_over_chunks(chunks, [&](const Chunk& c) {
          const int64_t t = c.tensor, i = c.begin;
          const int64_t k = &c - chunks.data();  // c is chunks[k]: its two partials sit at 2k, 2k + 1
          run_isa<LambNorms<scalar_t, kL2, kDecoupled>>(isa, static_cast<const scalar_t*>(p[t] + i), g[t] + i,
                                                        MomentPtr<scalar_t>(m[t] + i), MomentPtr<scalar_t>(v[t] + i),
                                                        c.numel(), scalars[t], partials.data() + 2 * k);
        });
        // Per-tensor step sizes lr * ratio; a tensor's chunks are consecutive, so this adds in chunk order.
        std::vector<double> p_sumsq(params.size(), 0.0), u_sumsq(params.size(), 0.0);
        for (size_t k = 0; k < chunks.size(); ++k) {
          p_sumsq[chunks[k].tensor] += partials[2 * k];
          u_sumsq[chunks[k].tensor] += partials[2 * k + 1];
        }
        std::vector<M> step_size(params.size());
        for (size_t t = 0; t < params.size(); ++t) {
          const double ratio = use_trust_ratio ? lamb_trust_ratio(p_sumsq[t], u_sumsq[t], phi_min, phi_max) : 1.0;
          step_size[t] = static_cast<M>(lr_value * ratio);
        }
        parallel_over_chunks(chunks, [&](const Chunk& c) {
          const int64_t t = c.tensor, i = c.begin;
          run_isa<LambApply<scalar_t, kL2, kDecoupled>>(isa, p[t] + i, g[t] + i, m[t] + i, v[t] + i, c.numel(),
                                                        scalars[t], step_size[t]);
        });
      });
    });
  });
}

TORCH_LIBRARY_IMPL(agd_kernels, CPU, m) { m.impl("lamb_step_", &lamb_step_cpu); }

}  // namespace agd_kernels::cpu
