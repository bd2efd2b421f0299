// Telemetry on the CPU backend (agd_kernels/ops.py, "Telemetry"; docs/telemetry.md): the five sums of
// agd_kernels/reference/telemetry.py per parameter tensor, formed chunk by chunk inside the update's own
// parallel pass. Before a chunk's update its weights are copied into a per-thread snapshot (16K elements,
// 64 KiB in fp32) and summed with the gradient; after it Δw is summed against the snapshot. The chunk is
// still in L2 both times, so memory traffic stays the update's own. Per-chunk sums are added per tensor
// in chunk order: the same bits for any thread count, like every CPU kernel here. Where the types allow
// (not fp16), Telemetry::update has the update's own element loop add the terms instead (SummedLoop): one
// pass over the chunk, not three. LAMB splits the sums over its two ops (reference.telemetry READ_SUMS,
// UPDATE_SUMS): lamb_moments_ writes no weight and adds Σg², Σw·g in its own loop beside the Σp² of its
// norms (w_sq; Telemetry::read, every dtype), lamb_apply_ adds Δw², w·Δw only (its fp32 path reads no g).
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
// written. kRead sums in the op's own loop (Telemetry::read), with its own Σp² for w_sq.
enum class TelemetryColumns { kAll, kRead, kUpdate };

// Before the update: w (into the snapshot `w`), Σ w², Σ g², Σ w·g with g = grad · inv_scale.
template <typename P, typename G>
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
        w[i] = wi;
        ww += wi * wi;
        gg += gi * gi;
        wg += wi * gi;
      }
      sums[0] += ww;
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

// The sums folded into an update's own element loop (the loop of isa.h map_elements, non-tiled path):
// streams p (written), then the rest as map_elements takes them; for kAll the first of them is the
// gradient. Each element's terms go into kBlock fp32 lanes per sum (lane = position in its 16-element
// block: no dependence between the elements of a block, so it vectorises with the update), and each
// kTelemetryBlock's lanes are added into double in lane order: one fixed order, 32 terms per lane. Δw is
// taken from the value stored into p. kColumns: kAll (five sums) or kUpdate (Δw², w·Δw only).
template <Isa I, TelemetryColumns kColumns, typename Fn, typename P, typename... R>
inline void map_elements_summed(int64_t n, Fn&& fn, double* sums, math_t<P> inv_scale, P* __restrict p,
                                R* __restrict... rest) {
  using M = math_t<P>;
  constexpr bool kAll = kColumns == TelemetryColumns::kAll;
  for (int64_t b = 0; b < n; b += kTelemetryBlock) {
    const int64_t end = b + kTelemetryBlock < n ? b + kTelemetryBlock : n;
    M acc[kTelemetrySums][kBlock] = {};
    const auto element = [&](int64_t i, int k) {
      std::tuple<M, math_t<R>...> x{agd_kernels::load(p, i), agd_kernels::load(rest, i)...};
      const M w = std::get<0>(x);
      M gi = 0;
      if constexpr (kAll) gi = static_cast<M>(std::get<1>(x)) * inv_scale;
      std::apply(fn, x);
      std::apply([&](M pv, auto... v) {
        agd_kernels::store(p, i, pv);
        (store_if_mutable(rest, i, v), ...);
      }, x);
      const M d = agd_kernels::load(p, i) - w;
      if constexpr (kAll) {
        acc[0][k] += w * w;
        acc[1][k] += gi * gi;
        acc[2][k] += w * gi;
      }
      acc[3][k] += d * d;
      acc[4][k] += w * d;
    };
    int64_t i = b;
    for (; i + kBlock <= end; i += kBlock) {
      prefetch(p + i, kBlock);
      (prefetch(rest + i, kBlock), ...);
      for (int k = 0; k < kBlock; ++k) element(i + k, k);
    }
    for (int k = 0; i < end; ++i, ++k) element(i, k);
    for (int j = kAll ? 0 : 3; j < kTelemetrySums; ++j)
      for (int k = 0; k < kBlock; ++k) sums[j] += acc[j][k];
  }
}

// How an update kernel runs its element loop (its last argument): PlainLoop is map_elements; SummedLoop
// also adds the chunk's sums (map_elements_summed). Not for fp16, whose AVX2 loop goes through tiles.
// kLoadBlocks as map_elements' (SGD and AGD: whole blocks, no prefetch); SummedLoop ignores it. p -= c·g,
// one core, fp32 (ns per element, no sums / summed block through isa.h map_block / summed element by
// element without prefetch / with): 16K elements in L2 0.08 / 2.0 (stayed scalar) / 0.24 / 0.21; 8M
// elements from memory 0.32 / - / 0.76 / 0.43.
struct PlainLoop {
  template <Isa I, bool kLoadBlocks = false, typename Fn, typename... P>
  void run(int64_t n, Fn&& fn, P*... ptrs) const {
    map_elements<I, kLoadBlocks>(n, fn, ptrs...);
  }
};

template <typename M, TelemetryColumns kColumns>
struct SummedLoop {
  double* sums;
  M inv_scale;
  template <Isa I, bool kLoadBlocks = false, typename Fn, typename P, typename... R>
  void run(int64_t n, Fn&& fn, P* p, R*... rest) const {
    map_elements_summed<I, kColumns>(n, fn, sums, inv_scale, p, rest...);
  }
};

template <typename P, typename G>
constexpr bool kSumsInLoop = !std::is_same_v<P, c10::Half> && !std::is_same_v<G, c10::Half>;

// kRead (lamb_moments_): what its kernel gets, its last argument. NoSums without telemetry; ReadSums: the
// chunk's sums, which the kernel's own loop adds w², g², w·g to (g = grad · inv_scale).
struct NoSums {};

template <typename M>
struct ReadSums {
  double* sums;
  M inv_scale;
};

// kColumns: the sums this op adds (kUpdate ignores grad_mul and the gradient).
template <TelemetryColumns kColumns = TelemetryColumns::kAll>
class Telemetry {
 public:
  // `chunks`: the op's make_chunks(params); `grad_mul`: the op's factor for raw gradients (1/grad_scale,
  // negated when maximizing: the sums take the loss's gradient, so its sign is dropped).
  Telemetry(const std::optional<at::Tensor>& telemetry, const std::vector<Chunk>& chunks, double grad_mul, Isa isa)
      : out_(telemetry.has_value() ? telemetry->data_ptr<float>() : nullptr),
        chunks_(chunks),
        inv_scale_(std::abs(grad_mul)),
        isa_(isa),
        sums_(out_ != nullptr ? chunks.size() : 0) {}

  // Before chunk c's update: snapshot its weights, sum w², g², w·g (kAll; kUpdate only snapshots).
  template <typename P, typename G>
  void before(const Chunk& c, const P* p, const G* g) {
    static_assert(kColumns != TelemetryColumns::kRead, "kRead sums in the op's own loop: read()");
    if (out_ == nullptr) return;
    using M = math_t<P>;
    M* w = snapshot<M>(c.numel());
    if constexpr (kColumns == TelemetryColumns::kAll) {
      run_isa<TelemetryBefore<P, G>>(isa_, p, g, w, c.numel(), static_cast<M>(inv_scale_), sums_[index(c)].data());
    } else {
      run_isa<TelemetrySnapshot<P>>(isa_, p, w, c.numel());
    }
  }

  // Chunk c's update, `update(loop)` running the op's kernel with `loop`: with telemetry on, a SummedLoop
  // where the types allow (one pass over the chunk instead of three: GPT-2 small, fp32 Adam, 2 cores,
  // +2% instead of +30%, docs/telemetry.md), else before() and after() around a PlainLoop.
  template <typename P, typename G, class Update>
  void update(const Chunk& c, const P* p, const G* g, const Update& update) {
    using M = math_t<P>;
    if constexpr (kSumsInLoop<P, G>) {
      if (out_ != nullptr) {
        return update(SummedLoop<M, kColumns>{sums_[index(c)].data(), static_cast<M>(inv_scale_)});
      }
    }
    before(c, p, g);
    update(PlainLoop{});
    after(c, p);
  }

  // kRead: chunk c's kernel, `update(sums)` running it with ReadSums<M> (telemetry on) or NoSums.
  template <typename M, class Update>
  void read(const Chunk& c, const Update& update) {
    static_assert(kColumns == TelemetryColumns::kRead);
    if (out_ != nullptr) return update(ReadSums<M>{sums_[index(c)].data(), static_cast<M>(inv_scale_)});
    update(NoSums{});
  }

  // After chunk c's update wrote p: sum Δw², w·Δw.
  template <typename P>
  void after(const Chunk& c, const P* p) {
    if (out_ == nullptr) return;
    run_isa<TelemetryAfter<P>>(isa_, p, static_cast<const math_t<P>*>(snapshot<math_t<P>>(c.numel())), c.numel(),
                               sums_[index(c)].data());
  }

  // After the parallel pass: each tensor's chunk sums, in chunk order, added into its row (the op's
  // columns only: the others keep every bit, -0.0 and NaN included).
  void finish() {
    if (out_ == nullptr) return;
    constexpr int first = kColumns == TelemetryColumns::kUpdate ? 3 : 0;
    constexpr int last = kColumns == TelemetryColumns::kRead ? 3 : kTelemetrySums;
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
  std::vector<std::array<double, kTelemetrySums>> sums_;
};

}  // namespace agd_kernels::cpu
