// CPU backend of agd_kernels::sgd_step_ (schema in agd_kernels/ops.py): one parallel pass over all tensors.
#include <torch/library.h>

#include "agd_kernels/sgd.h"
#include "isa.h"
#include "multi_tensor.h"
#include "ops.h"
#include "telemetry.h"

namespace agd_kernels::cpu {
namespace {

// Kernel of one chunk: 2 streams without momentum (p, g), 3 with (p, g, buf). `loop`: PlainLoop, or
// SummedLoop with telemetry (telemetry.h).
template <typename T, typename G, bool kWeightDecay, bool kMomentum>
struct SgdChunk {
  template <Isa I, class Loop>
  static void run(T* p, const G* g, T* buf, int64_t n, SgdScalars<math_t<T>> s, Loop loop) {
    using M = math_t<T>;
    if constexpr (kMomentum) {
      loop.template run<I, true>(n, [&](M& pv, M gv, M& bv) { sgd_element<kWeightDecay, true>(pv, gv, bv, s); },
                                 p, g, buf);
    } else {
      loop.template run<I, true>(n, [&](M& pv, M gv) {
        M unused = 0;
        sgd_element<kWeightDecay, false>(pv, gv, unused, s);
      }, p, g);
    }
  }
};

}  // namespace

void sgd_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, const at::Tensor& lr,
                  double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
                  bool is_first_step, const std::optional<at::Tensor>& grad_scale,
                  const std::optional<at::Tensor>& found_inf, at::TensorList model_params,
                  const std::optional<at::Tensor>& telemetry) {
  constexpr const char* op = "sgd_step_";
  const bool has_momentum = momentum != 0.0;
  check_lists(kCpu, op, params, {{has_momentum ? "momentum_buffers" : nullptr, momentum_buffers}});
  const at::ScalarType grad_type = check_grads_and_model_params(kCpu, op, params, grads, model_params);
  check_telemetry(kCpu, op, params, telemetry);
  const auto in = step_inputs(op, params, lr, grad_scale, maximize, found_inf);
  if (!in) return;
  const Isa isa = active_isa();
  dispatch_param_grad(params[0].scalar_type(), grad_type, [&](auto types) {
    using scalar_t = typename decltype(types)::Param;
    using grad_t = typename decltype(types)::Grad;
    using M = math_t<scalar_t>;
    const auto s = sgd_scalars<M>(in->lr, momentum, dampening, weight_decay, nesterov, is_first_step, in->grad_mul);
    const auto p = data_ptrs<scalar_t>(params);
    const auto g = data_ptrs<const grad_t>(grads);
    const auto b = has_momentum ? data_ptrs<scalar_t>(momentum_buffers) : std::vector<scalar_t*>(params.size());
    const auto model = data_ptrs<grad_t>(model_params);
    const auto chunks = make_chunks(params);
    Telemetry tel(telemetry, chunks, in->grad_mul, isa);
    dispatch_bool(weight_decay != 0.0, [&](auto wd) {
      dispatch_bool(has_momentum, [&](auto mom) {
        constexpr bool kWeightDecay = decltype(wd)::value, kMomentum = decltype(mom)::value;
        parallel_over_chunks(chunks, [&](const Chunk& c) {
          const int64_t t = c.tensor, i = c.begin;
          tel.update(c, p[t] + i, g[t] + i, [&](auto loop) {
            run_isa<SgdChunk<scalar_t, grad_t, kWeightDecay, kMomentum>>(isa, p[t] + i, g[t] + i,
                                                                 kMomentum ? b[t] + i : nullptr, c.numel(), s, loop);
          });
          if (!model.empty()) round_into_model(p[t] + i, model[t] + i, c.numel());
        });
        tel.finish();
      });
    });
  });
}

TORCH_LIBRARY_IMPL(agd_kernels, CPU, m) { m.impl("sgd_step_", &sgd_step_cpu); }

}  // namespace agd_kernels::cpu
