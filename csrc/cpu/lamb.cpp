// CPU backend of agd_kernels::lamb_moments_ and lamb_apply_ (schemas in agd_kernels/ops.py, semantics in
// agd_kernels/reference/lamb.py). With the gradient norm pass (slice_sumsq_, before both) a step is three
// passes over the parameters:
//   lamb_moments_: read p, g, m, v; write m, v; per-chunk fp64 partials of ||p||^2 and ||u||^2, added per
//                  tensor in chunk order into norms (the caller may all-reduce them before lamb_apply_);
//   lamb_apply_:   trust ratios from norms; read p, m, v; recompute u with the same arithmetic; write p.
// fp32 moves 24 + 16 B per element over the two ops (apex: the same, plus separate norm passes); 16-bit
// types defer the moments to lamb_apply_ (kLambDeferMoments in agd_kernels/lamb.h).
#include <torch/library.h>

#include <type_traits>

#include "agd_kernels/lamb.h"
#include "isa.h"
#include "multi_tensor.h"
#include "ops.h"
#include "telemetry.h"

namespace agd_kernels::cpu {
namespace {

template <typename T>
using MomentPtr = std::conditional_t<kLambDeferMoments<T>, const T*, T*>;

template <typename T, typename G, bool kL2, bool kDecoupled>
struct LambMoments {
  // n elements: the moments (stored unless deferred) and sum p^2, sum u^2 into sums[0..1], in fp64 (exact
  // squares of fp32 values) with a fixed pairwise combine: deterministic. `tel`: NoSums, or ReadSums with
  // telemetry (telemetry.h): the same loop then also forms g = grad · inv_scale in a third tile and adds
  // Σp², Σg², Σp·g (fp64 lanes, as the norms) to the chunk's w_sq, g_sq, w_g.
  template <Isa I, class Tel>
  static void run(const T* p, const G* g, MomentPtr<T> m, MomentPtr<T> v, int64_t n, LambScalars<math_t<T>> s,
                  double* sums, Tel tel) {
    using M = math_t<T>;
    constexpr bool kTelemetry = !std::is_same_v<Tel, NoSums>;
    double acc_p[kLanes] = {}, acc_u[kLanes] = {}, acc_g[kLanes] = {}, acc_wg[kLanes] = {};
    M p_tile[kTile], u_tile[kTile], g_tile[kTile];
    const auto moments = [&](M pv, M gv, M& mv, M& vv, M& p_out, M& u_out) {
      lamb_moments<kL2>(pv, gv, mv, vv, s);
      p_out = pv;
      u_out = lamb_direction<kDecoupled>(pv, mv, vv, s);
    };
    for (int64_t i = 0; i < n; i += kTile) {
      const int64_t len = n - i < kTile ? n - i : kTile;
      if constexpr (kTelemetry) {
        map_elements<I>(len, [&](M pv, M gv, M& mv, M& vv, M& p_out, M& u_out, M& g_out) {
          g_out = gv * tel.inv_scale;
          moments(pv, gv, mv, vv, p_out, u_out);
        }, p + i, g + i, m + i, v + i, p_tile, u_tile, g_tile);
      } else {
        map_elements<I>(len, moments, p + i, g + i, m + i, v + i, p_tile, u_tile);
      }
      for (int64_t k = len; k < kTile; ++k) {  // the tail adds nothing
        p_tile[k] = u_tile[k] = M(0);
        if constexpr (kTelemetry) g_tile[k] = M(0);
      }
      for (int j = 0; j < kTile; j += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          const double pd = p_tile[j + l], ud = u_tile[j + l];
          acc_p[l] += pd * pd;
          acc_u[l] += ud * ud;
          if constexpr (kTelemetry) {
            const double gd = g_tile[j + l];
            acc_g[l] += gd * gd;
            acc_wg[l] += pd * gd;
          }
        }
      }
    }
    sums[0] = sum_lanes(acc_p);
    sums[1] = sum_lanes(acc_u);
    if constexpr (kTelemetry) {
      tel.sums[0] += sums[0];
      tel.sums[1] += sum_lanes(acc_g);
      tel.sums[2] += sum_lanes(acc_wg);
    }
  }
};

template <typename T, typename G, bool kL2, bool kDecoupled>
struct LambApply {
  // p <- p - step_size * u (step_size = lr * this tensor's trust ratio). `loop`: PlainLoop, or SummedLoop
  // with telemetry (telemetry.h, kUpdate: Δw², w·Δw only).
  template <Isa I, class Loop>
  static void run(T* p, const G* g, T* m, T* v, int64_t n, LambScalars<math_t<T>> s, math_t<T> step_size,
                  Loop loop) {
    using M = math_t<T>;
    if constexpr (kLambDeferMoments<T>) {
      loop.template run<I>(n, [&](M& pv, M gv, M& mv, M& vv) {
        lamb_moments<kL2>(pv, gv, mv, vv, s);
        lamb_apply(pv, lamb_direction<kDecoupled>(pv, mv, vv, s), step_size);
      }, p, g, m, v);
    } else {
      loop.template run<I>(n, [&](M& pv, M mv, M vv) {
        lamb_apply(pv, lamb_direction<kDecoupled>(pv, mv, vv, s), step_size);
      }, p, static_cast<const T*>(m), static_cast<const T*>(v));
    }
  }
};

// Calls fn(l2, decoupled) with the two weight-decay modes as compile-time flags.
template <class Fn>
void dispatch_decay(bool adam_w_mode, double weight_decay, Fn&& fn) {
  dispatch_bool(!adam_w_mode && weight_decay != 0.0, [&](auto l2) {
    dispatch_bool(adam_w_mode && weight_decay != 0.0, [&](auto decoupled) { fn(l2, decoupled); });
  });
}

// What both ops check, before anything is written: the lists, grad_sumsq, norms (1-D, contiguous, float64
// or float32, 2 slots per tensor) and the scalars. Returns grad_scale (1 without one); *grad_type is the
// grads' dtype. model_params: lamb_apply_'s, nullptr for lamb_moments_ (which writes no parameter).
double check_lamb(const char* op, at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                  at::TensorList exp_avg_sqs, at::TensorList state_steps, const at::Tensor& grad_sumsq,
                  const at::Tensor& norms, const std::optional<at::Tensor>& grad_scale,
                  const at::TensorList* model_params, at::ScalarType* grad_type) {
  check_lists(kCpu, op, params, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  *grad_type = model_params ? check_grads_and_model_params(kCpu, op, params, grads, *model_params)
                            : check_grads(kCpu, op, params, grads);
  check_steps(op, params, state_steps);
  TORCH_CHECK(grad_sumsq.device().is_cpu(), op, ": grad_sumsq is on ", grad_sumsq.device(),
              "; the cpu backend takes CPU tensors");
  TORCH_CHECK_TYPE(grad_sumsq.scalar_type() == at::kFloat || grad_sumsq.scalar_type() == at::kDouble, op,
                   ": grad_sumsq must be float32 (or float64); got ", grad_sumsq.scalar_type());
  TORCH_CHECK(norms.device().is_cpu(), op, ": norms is on ", norms.device(), "; the cpu backend takes CPU tensors");
  TORCH_CHECK_TYPE(norms.scalar_type() == at::kDouble || norms.scalar_type() == at::kFloat, op,
                   ": norms must be float64 (or float32); got ", norms.scalar_type());
  const int64_t slots = 2 * static_cast<int64_t>(params.size());
  TORCH_CHECK_VALUE(norms.dim() == 1 && norms.numel() == slots, op,
                    ": norms must be 1-D with 2 slots per tensor of params (", slots, "); got shape ", norms.sizes());
  TORCH_CHECK_VALUE(norms.is_contiguous(), op, ": norms must be contiguous (e.g. a narrow() of a 1-D buffer); got "
                    "strides ", norms.strides());
  return grad_scale.has_value() ? read_scalar(op, "grad_scale", *grad_scale) : 1.0;
}

// The clip divisor k from N^2 = the sum of every grad_sumsq entry, added in order in fp64 (a few hundred
// values: serial and deterministic).
double clip_divisor(const at::Tensor& grad_sumsq, double max_grad_norm, double scale) {
  double total = 0.0;
  const at::Tensor sumsq = grad_sumsq.contiguous();
  AT_DISPATCH_FLOATING_TYPES(sumsq.scalar_type(), "lamb_grad_sumsq", [&] {
    const scalar_t* x = sumsq.const_data_ptr<scalar_t>();
    for (int64_t k = 0; k < sumsq.numel(); ++k) total += static_cast<double>(x[k]);
  });
  return lamb_clip_divisor(total, max_grad_norm, scale);
}

template <typename M>
std::vector<LambScalars<M>> lamb_scalars_of(const std::vector<double>& steps, double beta1, double beta2, double eps,
                                            double weight_decay, bool bias_correction, bool grad_averaging,
                                            double grad_mul) {
  std::vector<LambScalars<M>> scalars;
  scalars.reserve(steps.size());
  for (const double t : steps) {
    scalars.push_back(lamb_scalars<M>(t, beta1, beta2, eps, weight_decay, bias_correction, grad_averaging, grad_mul));
  }
  return scalars;
}

// The step counters as lamb_moments_ left them (already advanced), as doubles: read through data pointers
// as advance_steps writes them (no dispatcher call per tensor, as item() would make).
std::vector<double> read_steps(at::TensorList steps) {
  std::vector<double> t(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    t[i] = steps[i].scalar_type() == at::kFloat ? *steps[i].const_data_ptr<float>()
                                                : *steps[i].const_data_ptr<double>();
  }
  return t;
}

}  // namespace

void lamb_moments_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList state_steps, const at::Tensor& grad_sumsq,
                      const at::Tensor& norms, double max_grad_norm, double beta1, double beta2, double eps,
                      double weight_decay, bool bias_correction, bool grad_averaging, bool adam_w_mode,
                      const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                      const std::optional<at::Tensor>& telemetry) {
  constexpr const char* op = "lamb_moments_";
  check_telemetry(kCpu, op, params, telemetry);
  at::ScalarType grad_type;
  const double scale = check_lamb(op, params, grads, exp_avgs, exp_avg_sqs, state_steps, grad_sumsq, norms,
                                  grad_scale, nullptr, &grad_type);
  if (params.empty() || found_inf_set(op, found_inf)) return;
  const double clip = clip_divisor(grad_sumsq, max_grad_norm, scale);
  const Isa isa = active_isa();
  const auto chunks = make_chunks(params);
  std::vector<double> partials(2 * chunks.size());
  // w_sq, g_sq, w_g (no weight is written here); w_sq is the chunk's Σp² partial of the norms, g the
  // gradient unscaled but not clipped.
  Telemetry<TelemetryColumns::kRead> tel(telemetry, chunks, 1.0 / scale, isa);
  const std::vector<double> steps = advance_steps(state_steps);
  dispatch_param_grad(params[0].scalar_type(), grad_type, [&](auto types) {
    using scalar_t = typename decltype(types)::Param;
    using grad_t = typename decltype(types)::Grad;
    const auto scalars = lamb_scalars_of<math_t<scalar_t>>(steps, beta1, beta2, eps, weight_decay, bias_correction,
                                                           grad_averaging, 1.0 / (scale * clip));
    const auto p = data_ptrs<const scalar_t>(params);
    const auto g = data_ptrs<const grad_t>(grads);
    const auto m = data_ptrs<scalar_t>(exp_avgs);
    const auto v = data_ptrs<scalar_t>(exp_avg_sqs);
    dispatch_decay(adam_w_mode, weight_decay, [&](auto l2, auto decoupled) {
      using Kernel = LambMoments<scalar_t, grad_t, decltype(l2)::value, decltype(decoupled)::value>;
      parallel_over_chunks(chunks, [&](const Chunk& c) {
        const int64_t t = c.tensor, i = c.begin;
        const int64_t k = &c - chunks.data();  // c is chunks[k]: its two partials sit at 2k, 2k + 1
        tel.template read<math_t<scalar_t>>(c, [&](auto sums) {
          run_isa<Kernel>(isa, p[t] + i, g[t] + i, MomentPtr<scalar_t>(m[t] + i), MomentPtr<scalar_t>(v[t] + i),
                          c.numel(), scalars[t], partials.data() + 2 * k, sums);
        });
      });
    });
  });
  tel.finish();
  // A tensor's chunks are consecutive, so this adds its partials in chunk order.
  std::vector<double> sums(2 * params.size(), 0.0);
  for (size_t k = 0; k < chunks.size(); ++k) {
    sums[2 * chunks[k].tensor] += partials[2 * k];
    sums[2 * chunks[k].tensor + 1] += partials[2 * k + 1];
  }
  AT_DISPATCH_FLOATING_TYPES(norms.scalar_type(), "lamb_norms_out", [&] {
    scalar_t* out = norms.mutable_data_ptr<scalar_t>();
    for (size_t j = 0; j < sums.size(); ++j) out[j] = static_cast<scalar_t>(sums[j]);
  });
}

void lamb_apply_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                    at::TensorList state_steps, const at::Tensor& lr, const at::Tensor& grad_sumsq,
                    const at::Tensor& norms, double max_grad_norm, double beta1, double beta2, double eps,
                    double weight_decay, bool bias_correction, bool grad_averaging, bool adam_w_mode,
                    bool use_trust_ratio, double phi_min, double phi_max, const std::optional<at::Tensor>& grad_scale,
                    const std::optional<at::Tensor>& found_inf, at::TensorList model_params,
                    const std::optional<at::Tensor>& telemetry) {
  constexpr const char* op = "lamb_apply_";
  check_telemetry(kCpu, op, params, telemetry);
  at::ScalarType grad_type;
  const double scale = check_lamb(op, params, grads, exp_avgs, exp_avg_sqs, state_steps, grad_sumsq, norms,
                                  grad_scale, &model_params, &grad_type);
  const double lr_value = read_scalar(op, "lr", lr);
  if (params.empty() || found_inf_set(op, found_inf)) return;
  const double clip = clip_divisor(grad_sumsq, max_grad_norm, scale);  // used by the 16-bit (deferred) path
  const Isa isa = active_isa();
  const auto chunks = make_chunks(params);
  Telemetry<TelemetryColumns::kUpdate> tel(telemetry, chunks, 1.0, isa);  // d_sq, w_d: reads no gradient
  const std::vector<double> steps = read_steps(state_steps);
  std::vector<double> sums(norms.numel());
  AT_DISPATCH_FLOATING_TYPES(norms.scalar_type(), "lamb_norms_in", [&] {
    const scalar_t* in = norms.const_data_ptr<scalar_t>();
    for (size_t j = 0; j < sums.size(); ++j) sums[j] = static_cast<double>(in[j]);
  });
  dispatch_param_grad(params[0].scalar_type(), grad_type, [&](auto types) {
    using scalar_t = typename decltype(types)::Param;
    using grad_t = typename decltype(types)::Grad;
    using M = math_t<scalar_t>;
    const auto scalars = lamb_scalars_of<M>(steps, beta1, beta2, eps, weight_decay, bias_correction, grad_averaging,
                                            1.0 / (scale * clip));
    std::vector<M> step_size(params.size());
    for (size_t t = 0; t < params.size(); ++t) {
      const double ratio = use_trust_ratio ? lamb_trust_ratio(sums[2 * t], sums[2 * t + 1], phi_min, phi_max) : 1.0;
      step_size[t] = static_cast<M>(lr_value * ratio);
    }
    const auto p = data_ptrs<scalar_t>(params);
    const auto g = data_ptrs<const grad_t>(grads);
    const auto m = data_ptrs<scalar_t>(exp_avgs);
    const auto v = data_ptrs<scalar_t>(exp_avg_sqs);
    const auto model = data_ptrs<grad_t>(model_params);
    dispatch_decay(adam_w_mode, weight_decay, [&](auto l2, auto decoupled) {
      using Kernel = LambApply<scalar_t, grad_t, decltype(l2)::value, decltype(decoupled)::value>;
      parallel_over_chunks(chunks, [&](const Chunk& c) {
        const int64_t t = c.tensor, i = c.begin;
        tel.update(c, p[t] + i, g[t] + i, [&](auto loop) {
          run_isa<Kernel>(isa, p[t] + i, g[t] + i, m[t] + i, v[t] + i, c.numel(), scalars[t], step_size[t], loop);
        });
        if (!model.empty()) round_into_model(p[t] + i, model[t] + i, c.numel());
      });
    });
  });
  tel.finish();
}

TORCH_LIBRARY_IMPL(agd_kernels, CPU, m) {
  m.impl("lamb_moments_", &lamb_moments_cpu);
  m.impl("lamb_apply_", &lamb_apply_cpu);
}

}  // namespace agd_kernels::cpu
