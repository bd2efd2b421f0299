// CPU backend of agd_kernels::rmsprop_step_ (schema in agd_kernels/ops.py): one parallel pass over all
// tensors, 3 to 5 streams (p, g, square_avg, grad_avg when centered, buffer with momentum).
#include <torch/library.h>

#include "agd_kernels/rmsprop.h"
#include "isa.h"
#include "multi_tensor.h"
#include "ops.h"
#include "telemetry.h"

namespace agd_kernels::cpu {
namespace {

// `loop`: PlainLoop, or SummedLoop with telemetry (telemetry.h).
template <typename T, typename G, bool kWeightDecay, int kCentering, bool kMomentum>
struct RmspropChunk {
  template <Isa I, class Loop>
  static void run(T* p, const G* g, T* v, T* gavg, T* buf, int64_t n, RmspropScalars<math_t<T>> s, Loop loop) {
    using M = math_t<T>;
    constexpr auto element = rmsprop_element<kWeightDecay, kCentering, kMomentum, M>;
    constexpr bool kCentered = kCentering != kNotCentered;
    if constexpr (kCentered && kMomentum) {
      loop.template run<I>(n, [&](M& pv, M gv, M& vv, M& av, M& bv) { element(pv, gv, vv, av, bv, s); },
                      p, g, v, gavg, buf);
    } else if constexpr (kCentered) {
      loop.template run<I>(n, [&](M& pv, M gv, M& vv, M& av) {
        M unused = 0;
        element(pv, gv, vv, av, unused, s);
      }, p, g, v, gavg);
    } else if constexpr (kMomentum) {
      loop.template run<I>(n, [&](M& pv, M gv, M& vv, M& bv) {
        M unused = 0;
        element(pv, gv, vv, unused, bv, s);
      }, p, g, v, buf);
    } else {
      loop.template run<I>(n, [&](M& pv, M gv, M& vv) {
        M unused = 0, unused2 = 0;
        element(pv, gv, vv, unused, unused2, s);
      }, p, g, v);
    }
  }
};

template <class Fn>
void dispatch_centering(RmspropCentering centering, Fn&& fn) {
  switch (centering) {
    case kNotCentered: return fn(std::integral_constant<int, kNotCentered>{});
    case kCenteredLerpFromStart: return fn(std::integral_constant<int, kCenteredLerpFromStart>{});
    case kCenteredLerpFromEnd: return fn(std::integral_constant<int, kCenteredLerpFromEnd>{});
  }
}

}  // namespace

void rmsprop_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                      at::TensorList grad_avgs, at::TensorList momentum_buffers, at::TensorList state_steps,
                      const at::Tensor& lr, double alpha, double eps, double weight_decay, double momentum,
                      bool centered, bool maximize, const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf, at::TensorList model_params,
                      const std::optional<at::Tensor>& telemetry) {
  constexpr const char* op = "rmsprop_step_";
  const bool has_momentum = momentum > 0.0;
  check_lists(kCpu, op, params, {{"square_avgs", square_avgs},
                                 {centered ? "grad_avgs" : nullptr, grad_avgs},
                                 {has_momentum ? "momentum_buffers" : nullptr, momentum_buffers}});
  const at::ScalarType grad_type = check_grads_and_model_params(kCpu, op, params, grads, model_params);
  check_telemetry(kCpu, op, params, telemetry);
  check_steps(op, params, state_steps);
  const auto in = step_inputs(op, params, lr, grad_scale, maximize, found_inf);
  if (!in) return;
  const Isa isa = active_isa();
  advance_steps(state_steps);  // counted for checkpoints; the math does not use it
  dispatch_param_grad(params[0].scalar_type(), grad_type, [&](auto types) {
    using scalar_t = typename decltype(types)::Param;
    using grad_t = typename decltype(types)::Grad;
    using M = math_t<scalar_t>;
    const auto s = rmsprop_scalars<M>(in->lr, alpha, eps, weight_decay, momentum, in->grad_mul);
    const auto none = std::vector<scalar_t*>(params.size());
    const auto p = data_ptrs<scalar_t>(params);
    const auto g = data_ptrs<const grad_t>(grads);
    const auto v = data_ptrs<scalar_t>(square_avgs);
    const auto a = centered ? data_ptrs<scalar_t>(grad_avgs) : none;
    const auto b = has_momentum ? data_ptrs<scalar_t>(momentum_buffers) : none;
    const auto model = data_ptrs<grad_t>(model_params);
    const auto chunks = make_chunks(params);
    Telemetry tel(telemetry, chunks, in->grad_mul, isa);
    dispatch_bool(weight_decay != 0.0, [&](auto wd) {
      dispatch_centering(rmsprop_centering(centered, alpha), [&](auto cen) {
        dispatch_bool(has_momentum, [&](auto mom) {
          using Kernel = RmspropChunk<scalar_t, grad_t, decltype(wd)::value, decltype(cen)::value, decltype(mom)::value>;
          parallel_over_chunks(chunks, [&](const Chunk& c) {
            const int64_t t = c.tensor, i = c.begin;
            tel.update(c, p[t] + i, g[t] + i, [&](auto loop) {
              run_isa<Kernel>(isa, p[t] + i, g[t] + i, v[t] + i, a[t] ? a[t] + i : nullptr,
                              b[t] ? b[t] + i : nullptr, c.numel(), s, loop);
            });
            if (!model.empty()) round_into_model(p[t] + i, model[t] + i, c.numel());
          });
          tel.finish();
        });
      });
    });
  });
}

TORCH_LIBRARY_IMPL(agd_kernels, CPU, m) { m.impl("rmsprop_step_", &rmsprop_step_cpu); }

}  // namespace agd_kernels::cpu
