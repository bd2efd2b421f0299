// CPU backend of agd_kernels::agd_step_ (docs/agd.md §6 phases B and C; schema in agd_kernels/ops.py).
// Phase B (G, eta and one coefficient per slice) runs once on the calling thread from the per-slice sums
// of squares that slice_sumsq_ wrote; phase C is one parallel pass p <- p - c_tap * g over all tensors
// (12 B per fp32 element: g and p read, p written).
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "agd_kernels/agd.h"
#include "isa.h"
#include "multi_tensor.h"
#include "ops.h"
#include "telemetry.h"

namespace agd_kernels::cpu {
namespace {

// Elements [0, n) of a tensor with one coefficient (a matrix with one tap, or a follower). `loop`: PlainLoop,
// or SummedLoop with telemetry (telemetry.h), here and in AgdTaps.
template <typename T, typename G, typename S>
struct AgdUniform {
  template <Isa I, class Loop>
  static void run(T* p, const G* g, int64_t n, S coefficient, Loop loop) {
    using M = math_t<T>;
    const M c = static_cast<M>(coefficient);
    loop.template run<I, true>(n, [&](M& pv, M gv) { agd_element(pv, gv, c); }, p, g);
  }
};

// Elements of a row-major (rows x K) tap layout starting at tap j0: coefficient of element e is
// coefficients[(j0 + e) % K], walked one (partial) row at a time.
template <typename T, typename G, typename S>
struct AgdTaps {
  template <Isa I, class Loop>
  static void run(T* p, const G* g, int64_t n, const S* coefficients, int64_t K, int64_t j0, Loop loop) {
    using M = math_t<T>;
    for (int64_t i = 0, j = j0; i < n; j = 0) {
      const int64_t len = std::min(n - i, K - j);
      loop.template run<I, true>(len, [&](M& pv, M gv, math_t<S> c) { agd_element(pv, gv, static_cast<M>(c)); },
                                 p + i, g + i, coefficients + j);
      i += len;
    }
  }
};

// Phase B and C for sums of squares stored as S (fp32 normally; fp64 for the fp64 oracle).
template <typename S>
void agd_update(at::TensorList params, at::TensorList grads, const at::Tensor& sumsq, const at::Tensor& slice_sv,
                at::IntArrayRef slice_start, at::IntArrayRef slice_count, int64_t depth, double gain,
                double inv_grad_scale, at::Tensor& eta_out, at::Tensor& G_out, at::TensorList model_params,
                at::ScalarType grad_type, const std::optional<at::Tensor>& telemetry) {
  const S* sq = sumsq.const_data_ptr<S>();
  const S* sv = slice_sv.const_data_ptr<S>();
  const int64_t slots = sumsq.numel(), sq_stride = sumsq.stride(0), sv_stride = slice_sv.stride(0);
  // G = (1/depth) * sum over every slot of sv * ||g_slot||, unscaled: norms grow with the loss scale.
  double G = 0.0;
  for (int64_t k = 0; k < slots; ++k) {
    G += static_cast<double>(sv[k * sv_stride]) * sqrt(static_cast<double>(sq[k * sq_stride]));
  }
  G = G / static_cast<double>(depth) * inv_grad_scale;
  const S G_s = static_cast<S>(G), eta_s = static_cast<S>(agd_eta(G));
  G_out.fill_(G_s);
  eta_out.fill_(eta_s);
  if (params.empty()) return;
  const S step = static_cast<S>(gain * static_cast<double>(eta_s) / static_cast<double>(depth));

  // One coefficient per tap of each matrix, one per follower (from its owner's pooled sum of squares
  // and sv). A follower of a weight without slots (a zero-size kernel dim) is not updated.
  std::vector<S> coefficients;
  std::vector<int64_t> first(params.size());
  std::vector<bool> update(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t start = slice_start[i], count = slice_count[i];
    first[i] = static_cast<int64_t>(coefficients.size());
    update[i] = count > 0;
    if (params[i].dim() >= 2) {
      for (int64_t j = 0; j < count; ++j)
        coefficients.push_back(agd_coefficient(step, sv[(start + j) * sv_stride], sq[(start + j) * sq_stride]));
    } else if (count > 0) {
      double pooled = 0.0;
      for (int64_t j = 0; j < count; ++j) pooled += static_cast<double>(sq[(start + j) * sq_stride]);
      coefficients.push_back(agd_coefficient(step, sv[start * sv_stride], static_cast<S>(pooled)));
    }
  }

  // The tap layout needs logical (o, i, *k) order in memory: other layouts run on contiguous copies.
  std::vector<at::Tensor> p_work(params.begin(), params.end()), g_work(grads.begin(), grads.end());
  for (size_t i = 0; i < params.size(); ++i) {
    if (num_slices(params[i]) > 1 && !params[i].is_contiguous()) {
      p_work[i] = params[i].contiguous();
      g_work[i] = grads[i].contiguous();
    }
  }
  const Isa isa = active_isa();
  dispatch_param_grad(params[0].scalar_type(), grad_type, [&](auto types) {
    using scalar_t = typename decltype(types)::Param;
    using grad_t = typename decltype(types)::Grad;
    const auto p = data_ptrs<scalar_t>(p_work);
    const auto g = data_ptrs<const grad_t>(g_work);
    const auto model = data_ptrs<grad_t>(model_params);
    const auto chunks = make_chunks(p_work);
    // A worked-on copy holds the parameter's values (in tap order): its sums are the parameter's.
    Telemetry tel(telemetry, chunks, inv_grad_scale, isa);
    parallel_over_chunks(chunks, [&](const Chunk& c) {
      const int64_t t = c.tensor, K = num_slices(p_work[t]);
      scalar_t* pc = p[t] + c.begin;
      const grad_t* gc = g[t] + c.begin;
      if (!update[t]) {  // still adds its w², g², w·g (and Δw = 0), as the reference does
        tel.before(c, pc, gc);
        tel.after(c, pc);
        return;
      }
      tel.update(c, pc, gc, [&](auto loop) {
        if (K == 1) {
          run_isa<AgdUniform<scalar_t, grad_t, S>>(isa, pc, gc, c.numel(), coefficients[first[t]], loop);
        } else {
          run_isa<AgdTaps<scalar_t, grad_t, S>>(isa, pc, gc, c.numel(), coefficients.data() + first[t], K,
                                                c.begin % K, loop);
        }
      });
      // A worked-on copy's model parameter is written below, from the parameter in its own layout.
      if (!model.empty() && p_work[t].is_same(params[t])) round_into_model(pc, model[t] + c.begin, c.numel());
    });
    tel.finish();
  });
  for (size_t i = 0; i < params.size(); ++i) {
    if (p_work[i].is_same(params[i])) continue;
    params[i].copy_(p_work[i]);
    if (!model_params.empty() && update[i]) model_params[i].copy_(params[i]);  // rounds to nearest even
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> agd_step_cpu(at::TensorList params, at::TensorList grads, const at::Tensor& sumsq,
                                                const at::Tensor& slice_sv, at::IntArrayRef slice_start,
                                                at::IntArrayRef slice_count, int64_t depth, double gain,
                                                const std::optional<at::Tensor>& grad_scale,
                                                const std::optional<at::Tensor>& found_inf, at::TensorList model_params,
                                                const std::optional<at::Tensor>& telemetry) {
  constexpr const char* op = "agd_step_";
  check_telemetry(kCpu, op, params, telemetry);
  check_params(kCpu, op, params);
  const at::ScalarType grad_type = check_grads_and_model_params(kCpu, op, params, grads, model_params);
  TORCH_CHECK_VALUE(sumsq.device().is_cpu() && sumsq.dim() == 1 &&
                    (sumsq.scalar_type() == at::kFloat || sumsq.scalar_type() == at::kDouble),
                    op, ": sumsq must be a 1-D float32 (or float64) CPU tensor; got ", sumsq.scalar_type(),
                    " of shape ", sumsq.sizes(), " on ", sumsq.device());
  check_agd_slots(op, params, sumsq, slice_sv, slice_start, slice_count, depth);
  const double inv_scale = grad_multiplier(op, grad_scale, /*maximize=*/false);
  at::Tensor eta = at::zeros({}, sumsq.options()), G = at::zeros({}, sumsq.options());
  if (found_inf_set(op, found_inf)) return {eta, G};  // skipped step: nothing written, eta = G = 0
  if (sumsq.scalar_type() == at::kFloat) {
    agd_update<float>(params, grads, sumsq, slice_sv, slice_start, slice_count, depth, gain, inv_scale, eta, G,
                      model_params, grad_type, telemetry);
  } else {
    agd_update<double>(params, grads, sumsq, slice_sv, slice_start, slice_count, depth, gain, inv_scale, eta, G,
                       model_params, grad_type, telemetry);
  }
  return {eta, G};
}

TORCH_LIBRARY_IMPL(agd_kernels, CPU, m) { m.impl("agd_step_", &agd_step_cpu); }

}  // namespace agd_kernels::cpu
