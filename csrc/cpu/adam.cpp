// CPU backend of agd_kernels::adam_step_ (Adam, AdamW, AMSGrad; schema in agd_kernels/ops.py): one
// parallel pass over all tensors, 4 streams (5 with amsgrad), fp32 Adam moving 16 B read + 12 B written
// per element.
#include <torch/library.h>

#include "agd_kernels/adam.h"
#include "isa.h"
#include "multi_tensor.h"
#include "ops.h"
#include "telemetry.h"

namespace agd_kernels::cpu {
namespace {

// `loop`: PlainLoop, or SummedLoop with telemetry (telemetry.h).
template <typename T, typename G, bool kL2, bool kAmsgrad, bool kLerpFromEnd>
struct AdamChunk {
  template <Isa I, class Loop>
  static void run(T* p, const G* g, T* m, T* v, T* vmax, int64_t n, AdamScalars<math_t<T>> s, Loop loop) {
    using M = math_t<T>;
    if constexpr (kAmsgrad) {
      loop.template run<I>(n, [&](M& pv, M gv, M& mv, M& vv, M& xv) {
        adam_element<kL2, true, kLerpFromEnd>(pv, gv, mv, vv, xv, s);
      }, p, g, m, v, vmax);
    } else {
      loop.template run<I>(n, [&](M& pv, M gv, M& mv, M& vv) {
        M unused = 0;
        adam_element<kL2, false, kLerpFromEnd>(pv, gv, mv, vv, unused, s);
      }, p, g, m, v);
    }
  }
};

}  // namespace

void adam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                   at::TensorList max_exp_avg_sqs, at::TensorList state_steps, const at::Tensor& lr, double beta1,
                   double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
                   bool decoupled_weight_decay, const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& found_inf, at::TensorList model_params,
                   const std::optional<at::Tensor>& telemetry) {
  constexpr const char* op = "adam_step_";
  check_lists(kCpu, op, params, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs},
                                 {amsgrad ? "max_exp_avg_sqs" : nullptr, max_exp_avg_sqs}});
  const at::ScalarType grad_type = check_grads_and_model_params(kCpu, op, params, grads, model_params);
  check_telemetry(kCpu, op, params, telemetry);
  check_steps(op, params, state_steps);
  const auto in = step_inputs(op, params, lr, grad_scale, maximize, found_inf);
  if (!in) return;
  const Isa isa = active_isa();
  const std::vector<double> steps = advance_steps(state_steps);
  dispatch_param_grad(params[0].scalar_type(), grad_type, [&](auto types) {
    using scalar_t = typename decltype(types)::Param;
    using grad_t = typename decltype(types)::Grad;
    using M = math_t<scalar_t>;
    std::vector<AdamScalars<M>> scalars;
    scalars.reserve(params.size());
    for (const double t : steps) {
      scalars.push_back(adam_scalars<M>(in->lr, t, beta1, beta2, eps, weight_decay, decoupled_weight_decay,
                                        in->grad_mul));
    }
    const auto p = data_ptrs<scalar_t>(params);
    const auto g = data_ptrs<const grad_t>(grads);
    const auto m = data_ptrs<scalar_t>(exp_avgs);
    const auto v = data_ptrs<scalar_t>(exp_avg_sqs);
    const auto x = amsgrad ? data_ptrs<scalar_t>(max_exp_avg_sqs) : std::vector<scalar_t*>(params.size());
    const auto model = data_ptrs<grad_t>(model_params);
    const auto chunks = make_chunks(params);
    Telemetry tel(telemetry, chunks, in->grad_mul, isa);
    dispatch_bool(!decoupled_weight_decay && weight_decay != 0.0, [&](auto l2) {
      dispatch_bool(amsgrad, [&](auto ams) {
        dispatch_bool(lerp_from_end(1.0 - beta1), [&](auto from_end) {
          constexpr bool kL2 = decltype(l2)::value, kAmsgrad = decltype(ams)::value;
          using Kernel = AdamChunk<scalar_t, grad_t, kL2, kAmsgrad, decltype(from_end)::value>;
          parallel_over_chunks(chunks, [&](const Chunk& c) {
            const int64_t t = c.tensor, i = c.begin;
            tel.update(c, p[t] + i, g[t] + i, [&](auto loop) {
              run_isa<Kernel>(isa, p[t] + i, g[t] + i, m[t] + i, v[t] + i, kAmsgrad ? x[t] + i : nullptr,
                              c.numel(), scalars[t], loop);
            });
            if (!model.empty()) round_into_model(p[t] + i, model[t] + i, c.numel());
          });
          tel.finish();
        });
      });
    });
  });
}

TORCH_LIBRARY_IMPL(agd_kernels, CPU, m) { m.impl("adam_step_", &adam_step_cpu); }

}  // namespace agd_kernels::cpu
