// Telemetry on the CPU backend (agd_kernels/ops.py, "Telemetry"; docs/telemetry.md): the five sums of
// agd_kernels/reference/telemetry.py per parameter tensor, formed chunk by chunk inside the update's own
// parallel pass. Before a chunk's update its weights are copied into a per-thread snapshot (16K elements,
// 64 KiB in fp32) and summed with the gradient; after it Δw is summed against the snapshot. The chunk is
// still in L2 both times, so memory traffic stays the update's own. Per-chunk sums are added per tensor
// in chunk order: the same bits for any thread count, like every CPU kernel here.
#pragma once
#include <ATen/core/Tensor.h>

#include <array>
#include <cmath>
#include <optional>
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

  // Before chunk c's update: snapshot its weights, sum w², g², w·g.
  template <typename P, typename G>
  void before(const Chunk& c, const P* p, const G* g) {
    if (out_ == nullptr) return;
    using M = math_t<P>;
    run_isa<TelemetryBefore<P, G>>(isa_, p, g, snapshot<M>(c.numel()), c.numel(), static_cast<M>(inv_scale_),
                                   sums_[index(c)].data());
  }

  // After chunk c's update wrote p: sum Δw², w·Δw.
  template <typename P>
  void after(const Chunk& c, const P* p) {
    if (out_ == nullptr) return;
    run_isa<TelemetryAfter<P>>(isa_, p, static_cast<const math_t<P>*>(snapshot<math_t<P>>(c.numel())), c.numel(),
                               sums_[index(c)].data());
  }

  // After the parallel pass: each tensor's chunk sums, in chunk order, added into its row.
  void finish() {
    if (out_ == nullptr) return;
    for (size_t k = 0; k < chunks_.size();) {
      const int64_t t = chunks_[k].tensor;
      double row[kTelemetrySums] = {};
      for (; k < chunks_.size() && chunks_[k].tensor == t; ++k) {
        for (int j = 0; j < kTelemetrySums; ++j) row[j] += sums_[k][j];
      }
      for (int j = 0; j < kTelemetrySums; ++j) out_[t * kTelemetrySums + j] += static_cast<float>(row[j]);
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
