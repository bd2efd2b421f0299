// The grid kernels under the emulator, registered as CPU kernels of the test-only namespace agd_kernels_emu
// (schemas: the op table's, defined by tests/backends/emulated.py before it loads this library). Tests run
// the op matrix through them against the reference, exactly as for the real backends.
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include <string>

#include "../grid/agd_ops.h"
#include "../grid/elementwise_ops.h"
#include "../grid/lamb_ops.h"
#include "../grid/reduction_ops.h"
#include "../grid/rounding_ops.h"
#include "../grid/yellowfin_ops.h"
#include "emulator.h"

namespace agd_kernels::emulator {
namespace {

// The Device policy of csrc/grid/host.h for CPU memory: the "device-side" table is a CPU tensor kept
// alive for the call, the counters start at zero as the CUDA cache's do.
struct EmuDevice : grid::KernelDtypes {
  at::Tensor words, counters;          // the call's table, alive until the launch returns
  std::vector<at::Tensor> scratch;

  const char* backend() const { return "emulated cuda"; }
  bool accepts(const at::Tensor& t) const { return t.device().is_cpu(); }
  std::string where() const { return "CPU tensors"; }

  grid::Table table(std::vector<int64_t> words, int64_t tensors, int32_t lists) {
    this->words = at::empty({static_cast<int64_t>(words.size())}, at::TensorOptions().dtype(at::kLong));
    std::memcpy(this->words.mutable_data_ptr<int64_t>(), words.data(), words.size() * sizeof(int64_t));
    counters = at::zeros({tensors}, at::TensorOptions().dtype(at::kInt));
    return grid::Table{this->words.const_data_ptr<int64_t>(), counters.mutable_data_ptr<int32_t>(), tensors, lists};
  }

  double* scratch_doubles(int64_t n) {
    // NaN-filled: a partial read before it is written shows in the result.
    scratch.push_back(at::full({n}, std::numeric_limits<double>::quiet_NaN(), at::TensorOptions().dtype(at::kDouble)));
    return scratch.back().mutable_data_ptr<double>();
  }

  template <class K>
  void launch(int64_t blocks, const typename K::Args& args) {
    emulator::launch<K>(blocks, args);
    // Every counter must be back at zero: the next launch on a cached table (CUDA) relies on it.
    if (!counters.defined()) return;  // a launch without a table (AGD's scalars)
    const int32_t* c = counters.const_data_ptr<int32_t>();
    TORCH_CHECK(std::all_of(c, c + counters.numel(), [](int32_t x) { return x == 0; }),
                "grid emulator: arrival counters not reset after the launch");
  }
};

void adam_step_emu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                   at::TensorList max_exp_avg_sqs, at::TensorList state_steps, const at::Tensor& lr, double beta1,
                   double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
                   bool decoupled_weight_decay, const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& found_inf, at::TensorList model_params,
                   const std::optional<at::Tensor>& telemetry) {
  EmuDevice dev;
  grid::adam_step(dev, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2, eps,
                  weight_decay, amsgrad, maximize, decoupled_weight_decay, grad_scale, found_inf, model_params, telemetry);
}

void sgd_step_emu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, const at::Tensor& lr,
                  double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
                  bool is_first_step, const std::optional<at::Tensor>& grad_scale,
                  const std::optional<at::Tensor>& found_inf, at::TensorList model_params,
                  const std::optional<at::Tensor>& telemetry) {
  EmuDevice dev;
  grid::sgd_step(dev, params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov, maximize,
                 is_first_step, grad_scale, found_inf, model_params, telemetry);
}

void rmsprop_step_emu(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                      at::TensorList grad_avgs, at::TensorList momentum_buffers, at::TensorList state_steps,
                      const at::Tensor& lr, double alpha, double eps, double weight_decay, double momentum,
                      bool centered, bool maximize, const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf, at::TensorList model_params,
                      const std::optional<at::Tensor>& telemetry) {
  EmuDevice dev;
  grid::rmsprop_step(dev, params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, lr, alpha, eps,
                     weight_decay, momentum, centered, maximize, grad_scale, found_inf, model_params, telemetry);
}

void adagrad_step_emu(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                      at::TensorList state_steps, const at::Tensor& lr, double lr_decay, double weight_decay,
                      double eps, bool maximize, const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf, at::TensorList model_params,
                      const std::optional<at::Tensor>& telemetry) {
  EmuDevice dev;
  grid::adagrad_step(dev, params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize,
                     grad_scale, found_inf, model_params, telemetry);
}

void slice_sumsq_emu(at::TensorList tensors, const at::Tensor& out) {
  EmuDevice dev;
  grid::slice_sumsq(dev, tensors, out);
}

std::tuple<at::Tensor, at::Tensor> agd_step_emu(at::TensorList params, at::TensorList grads, const at::Tensor& sumsq,
                                                const at::Tensor& slice_sv, at::IntArrayRef slice_start,
                                                at::IntArrayRef slice_count, int64_t depth, double gain,
                                                const std::optional<at::Tensor>& grad_scale,
                                                const std::optional<at::Tensor>& found_inf, at::TensorList model_params, const std::optional<at::Tensor>& telemetry) {
  EmuDevice dev;
  return grid::agd_step(dev, params, grads, sumsq, slice_sv, slice_start, slice_count, depth, gain, grad_scale,
                        found_inf, model_params, telemetry);
}

void lamb_moments_emu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList state_steps, const at::Tensor& grad_sumsq,
                      const at::Tensor& norms, double max_grad_norm, double beta1, double beta2, double eps,
                      double weight_decay, bool bias_correction, bool grad_averaging, bool adam_w_mode,
                      const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& telemetry) {
  EmuDevice dev;
  grid::lamb_moments(dev, params, grads, exp_avgs, exp_avg_sqs, state_steps, grad_sumsq, norms, max_grad_norm, beta1,
                     beta2, eps, weight_decay, bias_correction, grad_averaging, adam_w_mode, grad_scale, found_inf, telemetry);
}

void lamb_apply_emu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList state_steps, const at::Tensor& lr,
                    const at::Tensor& grad_sumsq, const at::Tensor& norms, double max_grad_norm, double beta1,
                    double beta2, double eps, double weight_decay, bool bias_correction, bool grad_averaging,
                    bool adam_w_mode, bool use_trust_ratio, double phi_min, double phi_max,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf, at::TensorList model_params, const std::optional<at::Tensor>& telemetry) {
  EmuDevice dev;
  grid::lamb_apply(dev, params, grads, exp_avgs, exp_avg_sqs, state_steps, lr, grad_sumsq, norms, max_grad_norm,
                   beta1, beta2, eps, weight_decay, bias_correction, grad_averaging, adam_w_mode, use_trust_ratio,
                   phi_min, phi_max, grad_scale, found_inf, model_params, telemetry);
}

void yellowfin_stats_emu(at::TensorList grads, at::TensorList grad_avgs, const at::Tensor& out) {
  EmuDevice dev;
  grid::yellowfin_stats(dev, grads, grad_avgs, out);
}

std::tuple<at::Tensor, at::Tensor> yellowfin_tune_emu(
    const at::Tensor& tuner, const at::Tensor& stats, double numel, double beta, int64_t curv_win_width,
    bool zero_debias, bool sparsity_debias, double clip_thresh, double auto_clip_fac, bool adapt_clip,
    double stat_protect_fac, double catastrophic_move_thresh, bool force_non_inc_step, bool h_min_log_smooth,
    bool h_max_log_smooth, const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  EmuDevice dev;
  return grid::yellowfin_tune(dev, tuner, stats, numel, beta, curv_win_width, zero_debias, sparsity_debias,
                              clip_thresh, auto_clip_fac, adapt_clip, stat_protect_fac, catastrophic_move_thresh,
                              force_non_inc_step, h_min_log_smooth, h_max_log_smooth, grad_scale, found_inf);
}

void yellowfin_apply_emu(at::TensorList params, at::TensorList grads, at::TensorList grad_avgs,
                         at::TensorList momentum_buffers, const at::Tensor& tuner, const at::Tensor& stats,
                         double beta, double weight_decay, const std::optional<at::Tensor>& found_inf, at::TensorList model_params, const std::optional<at::Tensor>& telemetry) {
  EmuDevice dev;
  grid::yellowfin_apply(dev, params, grads, grad_avgs, momentum_buffers, tuner, stats, beta, weight_decay, found_inf, model_params, telemetry);
}

void stochastic_round_emu(at::TensorList dst, at::TensorList src, const at::Tensor& seed, at::TensorList steps,
                          at::IntArrayRef offsets) {
  EmuDevice dev;
  grid::stochastic_round(dev, dst, src, seed, steps, offsets);
}

// A deliberately wrong body: threads 128..255 return before the barrier the others wait at. The emulator
// must report it (tests/backends/test_cuda_emulated.py), as it would for a real kernel with that bug.
struct DivergentBarrierProbe {
  static constexpr int kThreads = grid::kThreads;
  struct Args {};
  struct Shared {};
  template <class Ctx>
  static void run(Ctx& ctx, Shared&, const Args&) {
    if (ctx.thread() >= ctx.threads() / 2) return;
    ctx.sync();
  }
};

void divergent_barrier_probe() { emulator::launch<DivergentBarrierProbe>(1, {}); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(agd_kernels_emu, m) { m.def("divergent_barrier_probe() -> ()", &divergent_barrier_probe); }

TORCH_LIBRARY_IMPL(agd_kernels_emu, CPU, m) {
  m.impl("adam_step_", &adam_step_emu);
  m.impl("sgd_step_", &sgd_step_emu);
  m.impl("rmsprop_step_", &rmsprop_step_emu);
  m.impl("adagrad_step_", &adagrad_step_emu);
  m.impl("slice_sumsq_", &slice_sumsq_emu);
  m.impl("agd_step_", &agd_step_emu);
  m.impl("lamb_moments_", &lamb_moments_emu);
  m.impl("lamb_apply_", &lamb_apply_emu);
  m.impl("yellowfin_stats_", &yellowfin_stats_emu);
  m.impl("yellowfin_tune_", &yellowfin_tune_emu);
  m.impl("yellowfin_apply_", &yellowfin_apply_emu);
  m.impl("stochastic_round_", &stochastic_round_emu);
}

}  // namespace agd_kernels::emulator
