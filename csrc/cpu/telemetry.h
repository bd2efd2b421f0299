// Telemetry on the CPU backend (agd_kernels/ops.py, "Telemetry"; docs/telemetry.md): the five sums of
// agd_kernels/reference/telemetry.py per parameter tensor, formed chunk by chunk inside the update's own
// parallel pass. Before a chunk's update its weights are copied into a per-thread snapshot (16K elements,
// 64 KiB in fp32) and summed with the gradient; after it Δw is summed against the snapshot. The chunk is
// still in L2 both times, so memory traffic stays the update's own. Per-chunk sums are added per tensor
// in chunk order: the same bits for any thread count, like every CPU kernel here. Where the types and the
// loop allow (Adam, RMSprop, Adagrad, yellowfin_apply_; not fp16), Telemetry::update has the update's own
// element loop add the terms instead (SummedLoop): one pass over the chunk, not three. LAMB splits the sums
// over its two ops (reference.telemetry READ_SUMS, UPDATE_SUMS): lamb_moments_ reads w and g and writes no
// weight (no snapshot, its own Σp² for w_sq), lamb_apply_ only snapshots w (its fp32 path reads no g).
#pragma once
#include <ATen/core/Tensor.h>

#include <array>
#include <cmath>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "isa.h"
#include "multi_tensor.h"

namespace agd_kernels::cpu {

// The element loops, built per ISA (isa.h). Each block of kTelemetryBlock elements is one `omp simd`
// reduction (the vector lanes keep their own partial sums, which the pragma allows to be added in any
// order: a fixed order per build, so the same bits for any thread count), then added into double. A lane
// sums 512 / 8 = 64 fp32 terms: within 64 ulps of its value. Measured on the 2-core machine, one core,
// 16K fp32 elements in L1/L2: 0.17 ns per element and pass, where 8 plain fp32 lanes the compiler
// vectorised itself took 1.0 (each add waited on the last).
constexpr int64_t kTelemetryBlock = 512;

// Which columns an op adds (reference.telemetry ALL_SUMS, READ_SUMS, UPDATE_SUMS); the others are never
// written. kRead takes w_sq from the op (Telemetry::add_w_sq).
enum class TelemetryColumns { kAll, kRead, kUpdate };

// Before the update: w (into the snapshot `w`), Σ w², Σ g², Σ w·g with g = grad · inv_scale. Without
// kAll (kRead): Σ g², Σ w·g only, no snapshot.
template <typename P, typename G, bool kAll = true>
struct TelemetryBefore {
  template <Isa I>
  static void run(const P* __restrict__ p, const G* __restrict__ g, math_t<P>* __restrict__ w, int64_t n,
                  math_t<P> inv_scale, double* sums) {
    using M = math_t<P>;
    for (int64_t b = 0; b < n; b += kTelemetryBlock) {
      const int64_t end = b + kTelemetryBlock < n ? b + kTelemetryBlock : n;
      M ww = 0, gg = 0, wg = 0;
#pragma omp simd reduction(+ : ww, gg, wg)
      for (int64_t i = b; i < end; ++i) {
        const M wi = static_cast<M>(p[i]);
        const M gi = static_cast<M>(static_cast<math_t<G>>(g[i])) * inv_scale;
        if constexpr (kAll) {
          w[i] = wi;
          ww += wi * wi;
        }
        gg += gi * gi;
        wg += wi * gi;
      }
      if constexpr (kAll) sums[0] += ww;
      sums[1] += gg;
      sums[2] += wg;
    }
  }
};

// Before the update, kUpdate: only the snapshot (lamb_apply_'s fp32 path reads no gradient).
template <typename P>
struct TelemetrySnapshot {
  template <Isa I>
  static void run(const P* __restrict__ p, math_t<P>* __restrict__ w, int64_t n) {
    using M = math_t<P>;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) w[i] = static_cast<M>(p[i]);
  }
};

// After the update wrote p (in its own dtype): Σ Δw², Σ w·Δw against the snapshot.
template <typename P>
struct TelemetryAfter {
  template <Isa I>
  static void run(const P* __restrict__ p, const math_t<P>* __restrict__ w, int64_t n, double* sums) {
    using M = math_t<P>;
    for (int64_t b = 0; b < n; b += kTelemetryBlock) {
      const int64_t end = b + kTelemetryBlock < n ? b + kTelemetryBlock : n;
      M dd = 0, wd = 0;
#pragma omp simd reduction(+ : dd, wd)
      for (int64_t i = b; i < end; ++i) {
        const M d = static_cast<M>(p[i]) - w[i];
        dd += d * d;
        wd += w[i] * d;
      }
      sums[3] += dd;
      sums[4] += wd;
    }
  }
};

// The five sums folded into an update's own element loop (the loop of isa.h map_elements, non-tiled path):
// streams p (written), g, then the rest, as map_elements takes them. Each element's five terms go into
// kBlock fp32 lanes per sum (lane = position in its 16-element block: no dependence between the elements
// of a block, so it vectorises with the update), and each kTelemetryBlock's lanes are added into double in
// lane order: one fixed order, 32 terms per lane. Δw is taken from the value stored into p.
template <Isa I, typename Fn, typename P, typename G, typename... R>
inline void map_elements_summed(int64_t n, Fn&& fn, double* sums, math_t<P> inv_scale, P* __restrict p,
                                const G* __restrict g, R* __restrict... rest) {
  using M = math_t<P>;
  for (int64_t b = 0; b < n; b += kTelemetryBlock) {
    const int64_t end = b + kTelemetryBlock < n ? b + kTelemetryBlock : n;
    M acc[kTelemetrySums][kBlock] = {};
    const auto element = [&](int64_t i, int k) {
      std::tuple<M, math_t<G>, math_t<R>...> x{agd_kernels::load(p, i), agd_kernels::load(g, i),
                                               agd_kernels::load(rest, i)...};
      const M w = std::get<0>(x), gi = static_cast<M>(std::get<1>(x)) * inv_scale;
      std::apply(fn, x);
      std::apply([&](M pv, auto, auto... v) {
        agd_kernels::store(p, i, pv);
        (store_if_mutable(rest, i, v), ...);
      }, x);
      const M d = agd_kernels::load(p, i) - w;
      acc[0][k] += w * w;
      acc[1][k] += gi * gi;
      acc[2][k] += w * gi;
      acc[3][k] += d * d;
      acc[4][k] += w * d;
    };
    int64_t i = b;
    for (; i + kBlock <= end; i += kBlock) {
      prefetch(p + i, kBlock);
      prefetch(g + i, kBlock);
      (prefetch(rest + i, kBlock), ...);
      for (int k = 0; k < kBlock; ++k) element(i + k, k);
    }
    for (int k = 0; i < end; ++i, ++k) element(i, k);
    for (int j = 0; j < kTelemetrySums; ++j)
      for (int k = 0; k < kBlock; ++k) sums[j] += acc[j][k];
  }
}

// How an update kernel runs its element loop (its last argument): PlainLoop is map_elements; SummedLoop
// also adds the chunk's five sums (map_elements_summed). Not for fp16, whose AVX2 loop goes through tiles.
struct PlainLoop {
  template <Isa I, typename Fn, typename... P>
  void run(int64_t n, Fn&& fn, P*... ptrs) const {
    map_elements<I>(n, fn, ptrs...);
  }
};

template <typename M>
struct SummedLoop {
  double* sums;
  M inv_scale;
  template <Isa I, typename Fn, typename P, typename G, typename... R>
  void run(int64_t n, Fn&& fn, P* p, const G* g, R*... rest) const {
    map_elements_summed<I>(n, fn, sums, inv_scale, p, g, rest...);
  }
};

template <typename P, typename G>
constexpr bool kSumsInLoop = !std::is_same_v<P, c10::Half> && !std::is_same_v<G, c10::Half>;

class Telemetry {
 public:
  // `chunks`: the op's make_chunks(params); `grad_mul`: the op's factor for raw gradients (1/grad_scale,
  // negated when maximizing: the sums take the loss's gradient, so its sign is dropped).
  // `columns`: the sums this op adds (kUpdate ignores grad_mul and the gradient).
  Telemetry(const std::optional<at::Tensor>& telemetry, const std::vector<Chunk>& chunks, double grad_mul, Isa isa,
            TelemetryColumns columns = TelemetryColumns::kAll)
      : out_(telemetry.has_value() ? telemetry->data_ptr<float>() : nullptr),
        chunks_(chunks),
        inv_scale_(std::abs(grad_mul)),
        isa_(isa),
        columns_(columns),
        sums_(out_ != nullptr ? chunks.size() : 0) {}

  // Before chunk c's update: snapshot its weights, sum w², g², w·g (what `columns` asks of the two).
  template <typename P, typename G>
  void before(const Chunk& c, const P* p, const G* g) {
    if (out_ == nullptr) return;
    using M = math_t<P>;
    M* w = snapshot<M>(c.numel());
    double* sums = sums_[index(c)].data();
    switch (columns_) {
      case TelemetryColumns::kAll:
        run_isa<TelemetryBefore<P, G>>(isa_, p, g, w, c.numel(), static_cast<M>(inv_scale_), sums);
        break;
      case TelemetryColumns::kRead:
        run_isa<TelemetryBefore<P, G, false>>(isa_, p, g, w, c.numel(), static_cast<M>(inv_scale_), sums);
        break;
      case TelemetryColumns::kUpdate:
        run_isa<TelemetrySnapshot<P>>(isa_, p, w, c.numel());
        break;
    }
  }

  // Chunk c's update, `update(loop)` running the op's kernel with `loop`: with telemetry on, a SummedLoop
  // where the types allow (one pass over the chunk instead of three: GPT-2 small, fp32 Adam, 2 cores,
  // +2% instead of +30%, docs/telemetry.md), else before() and after() around a PlainLoop.
  template <typename P, typename G, class Update>
  void update(const Chunk& c, const P* p, const G* g, const Update& update) {
    using M = math_t<P>;
    if constexpr (kSumsInLoop<P, G>) {
      if (out_ != nullptr) return update(SummedLoop<M>{sums_[index(c)].data(), static_cast<M>(inv_scale_)});
    }
    before(c, p, g);
    update(PlainLoop{});
    after(c, p);
  }

  // kRead: chunk c's Σ w², which the op has formed itself (lamb_moments_ sums p² for its norms).
  void add_w_sq(const Chunk& c, double w_sq) {
    if (out_ != nullptr) sums_[index(c)][0] += w_sq;
  }

  // After chunk c's update wrote p: sum Δw², w·Δw.
  template <typename P>
  void after(const Chunk& c, const P* p) {
    if (out_ == nullptr || columns_ == TelemetryColumns::kRead) return;
    run_isa<TelemetryAfter<P>>(isa_, p, static_cast<const math_t<P>*>(snapshot<math_t<P>>(c.numel())), c.numel(),
                               sums_[index(c)].data());
  }

  // After the parallel pass: each tensor's chunk sums, in chunk order, added into its row (the op's
  // columns only: the others keep every bit, -0.0 and NaN included).
  void finish() {
    if (out_ == nullptr) return;
    const int first = columns_ == TelemetryColumns::kUpdate ? 3 : 0;
    const int last = columns_ == TelemetryColumns::kRead ? 3 : kTelemetrySums;
    for (size_t k = 0; k < chunks_.size();) {
      const int64_t t = chunks_[k].tensor;
      double row[kTelemetrySums] = {};
      for (; k < chunks_.size() && chunks_[k].tensor == t; ++k) {
        for (int j = 0; j < kTelemetrySums; ++j) row[j] += sums_[k][j];
      }
      for (int j = first; j < last; ++j) out_[t * kTelemetrySums + j] += static_cast<float>(row[j]);
    }
  }

 private:
  // The thread's snapshot of one chunk: chunks run one at a time per thread, before() then after().
  template <typename M>
  static M* snapshot(int64_t n) {
    thread_local std::vector<double> buffer(kChunk);  // kChunk doubles hold a chunk of any math type
    return reinterpret_cast<M*>(buffer.data());
  }

  size_t index(const Chunk& c) const { return static_cast<size_t>(&c - chunks_.data()); }

  float* out_;
  const std::vector<Chunk>& chunks_;
  double inv_scale_;
  Isa isa_;
  TelemetryColumns columns_;
  std::vector<std::array<double, kTelemetrySums>> sums_;
};

}  // namespace agd_kernels::cpu
