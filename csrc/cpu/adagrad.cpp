// CPU backend of agd_kernels::adagrad_step_ (dense gradients; schema in agd_kernels/ops.py): one parallel
// pass over all tensors, 3 streams (p, g, sum).
#include <torch/library.h>

#include "agd_kernels/adagrad.h"
#include "isa.h"
#include "multi_tensor.h"
#include "ops.h"

namespace agd_kernels::cpu {
namespace {

template <typename T, bool kWeightDecay>
struct AdagradChunk {
  template <Isa I>
  static void run(T* p, const T* g, T* sum, int64_t n, AdagradScalars<math_t<T>> s) {
    using M = math_t<T>;
    map_elements<I>(n, [&](M& pv, M gv, M& sv) { adagrad_element<kWeightDecay>(pv, gv, sv, s); }, p, g, sum);
  }
};

}  // namespace

void adagrad_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                      at::TensorList state_steps, const at::Tensor& lr, double lr_decay, double weight_decay,
                      double eps, bool maximize, const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf, at::TensorList model_params) {
  constexpr const char* op = "adagrad_step_";
  TORCH_CHECK_NOT_IMPLEMENTED(model_params.empty(), op, ": model_params is not implemented by this backend yet");
  check_lists(kCpu, op, params, {{"grads", grads}, {"state_sums", state_sums}});
  check_steps(op, params, state_steps);
  const auto in = step_inputs(op, params, lr, grad_scale, maximize, found_inf);
  if (!in) return;
  const Isa isa = active_isa();
  const std::vector<double> steps = advance_steps(state_steps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "adagrad_step_cpu", [&] {
    using M = math_t<scalar_t>;
    std::vector<AdagradScalars<M>> scalars;
    scalars.reserve(params.size());
    for (const double t : steps) {
      scalars.push_back(adagrad_scalars<M>(in->lr, t, lr_decay, weight_decay, eps, in->grad_mul));
    }
    const auto p = data_ptrs<scalar_t>(params);
    const auto g = data_ptrs<const scalar_t>(grads);
    const auto sum = data_ptrs<scalar_t>(state_sums);
    const auto chunks = make_chunks(params);
    dispatch_bool(weight_decay != 0.0, [&](auto wd) {
      constexpr bool kWeightDecay = decltype(wd)::value;
      parallel_over_chunks(chunks, [&](const Chunk& c) {
        const int64_t t = c.tensor, i = c.begin;
        run_isa<AdagradChunk<scalar_t, kWeightDecay>>(isa, p[t] + i, g[t] + i, sum[t] + i, c.numel(), scalars[t]);
      });
    });
  });
}

TORCH_LIBRARY_IMPL(agd_kernels, CPU, m) { m.impl("adagrad_step_", &adagrad_step_cpu); }

}  // namespace agd_kernels::cpu
