// CPU backend of agd_kernels::sgd_step_ (schema in agd_kernels/ops.py): one parallel pass over all tensors.
#include <torch/library.h>

#include "agd_kernels/sgd.h"
#include "isa.h"
#include "multi_tensor.h"
#include "ops.h"

namespace agd_kernels::cpu {
namespace {

// Kernel of one chunk: 2 streams without momentum (p, g), 3 with (p, g, buf).
template <typename T, bool kWeightDecay, bool kMomentum>
struct SgdChunk {
  template <Isa I>
  static void run(T* p, const T* g, T* buf, int64_t n, SgdScalars<math_t<T>> s) {
    using M = math_t<T>;
    if constexpr (kMomentum) {
      map_elements<I, true>(n, [&](M& pv, M gv, M& bv) { sgd_element<kWeightDecay, true>(pv, gv, bv, s); }, p, g, buf);
    } else {
      map_elements<I, true>(n, [&](M& pv, M gv) {
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
                  const std::optional<at::Tensor>& found_inf, at::TensorList model_params) {
  constexpr const char* op = "sgd_step_";
  TORCH_CHECK_NOT_IMPLEMENTED(model_params.empty(), op, ": model_params is not implemented by this backend yet");
  const bool has_momentum = momentum != 0.0;
  check_lists(kCpu, op, params, {{"grads", grads}, {has_momentum ? "momentum_buffers" : nullptr, momentum_buffers}});
  const auto in = step_inputs(op, params, lr, grad_scale, maximize, found_inf);
  if (!in) return;
  const Isa isa = active_isa();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "sgd_step_cpu", [&] {
    using M = math_t<scalar_t>;
    const auto s = sgd_scalars<M>(in->lr, momentum, dampening, weight_decay, nesterov, is_first_step, in->grad_mul);
    const auto p = data_ptrs<scalar_t>(params);
    const auto g = data_ptrs<const scalar_t>(grads);
    const auto b = has_momentum ? data_ptrs<scalar_t>(momentum_buffers) : std::vector<scalar_t*>(params.size());
    const auto chunks = make_chunks(params);
    dispatch_bool(weight_decay != 0.0, [&](auto wd) {
      dispatch_bool(has_momentum, [&](auto mom) {
        constexpr bool kWeightDecay = decltype(wd)::value, kMomentum = decltype(mom)::value;
        parallel_over_chunks(chunks, [&](const Chunk& c) {
          const int64_t t = c.tensor, i = c.begin;
          run_isa<SgdChunk<scalar_t, kWeightDecay, kMomentum>>(isa, p[t] + i, g[t] + i,
                                                               kMomentum ? b[t] + i : nullptr, c.numel(), s);
        });
      });
    });
  });
}

TORCH_LIBRARY_IMPL(agd_kernels, CPU, m) { m.impl("sgd_step_", &sgd_step_cpu); }

}  // namespace agd_kernels::cpu
