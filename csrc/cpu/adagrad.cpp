// CPU backend of agd_kernels::adagrad_step_ (dense gradients; schema in agd_kernels/ops.py): one parallel
// pass over all tensors, 3 streams (p, g, sum).
#include <torch/library.h>

#include "agd_kernels/adagrad.h"
#include "isa.h"
#include "multi_tensor.h"
#include "ops.h"
#include "telemetry.h"

namespace agd_kernels::cpu {
namespace {

// `loop`: PlainLoop, or SummedLoop with telemetry (telemetry.h).
template <typename T, typename G, bool kWeightDecay>
struct AdagradChunk {
  template <Isa I, class Loop>
  static void run(T* p, const G* g, T* sum, int64_t n, AdagradScalars<math_t<T>> s, Loop loop) {
    using M = math_t<T>;
    loop.template run<I>(n, [&](M& pv, M gv, M& sv) { adagrad_element<kWeightDecay>(pv, gv, sv, s); }, p, g, sum);
  }
};

}  // namespace

void adagrad_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                      at::TensorList state_steps, const at::Tensor& lr, double lr_decay, double weight_decay,
                      double eps, bool maximize, const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf, at::TensorList model_params,
                      const std::optional<at::Tensor>& telemetry) {
  constexpr const char* op = "adagrad_step_";
  check_lists(kCpu, op, params, {{"state_sums", state_sums}});
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
    std::vector<AdagradScalars<M>> scalars;
    scalars.reserve(params.size());
    for (const double t : steps) {
      scalars.push_back(adagrad_scalars<M>(in->lr, t, lr_decay, weight_decay, eps, in->grad_mul));
    }
    const auto p = data_ptrs<scalar_t>(params);
    const auto g = data_ptrs<const grad_t>(grads);
    const auto sum = data_ptrs<scalar_t>(state_sums);
    const auto model = data_ptrs<grad_t>(model_params);
    const auto chunks = make_chunks(params);
    Telemetry tel(telemetry, chunks, in->grad_mul, isa);
    dispatch_bool(weight_decay != 0.0, [&](auto wd) {
      constexpr bool kWeightDecay = decltype(wd)::value;
      parallel_over_chunks(chunks, [&](const Chunk& c) {
        const int64_t t = c.tensor, i = c.begin;
        tel.update(c, p[t] + i, g[t] + i, [&](auto loop) {
          run_isa<AdagradChunk<scalar_t, grad_t, kWeightDecay>>(isa, p[t] + i, g[t] + i, sum[t] + i, c.numel(),
                                                                scalars[t], loop);
        });
        if (!model.empty()) round_into_model(p[t] + i, model[t] + i, c.numel());
      });
      tel.finish();
    });
  });
}

TORCH_LIBRARY_IMPL(agd_kernels, CPU, m) { m.impl("adagrad_step_", &adagrad_step_cpu); }

}  // namespace agd_kernels::cpu
