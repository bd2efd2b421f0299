// Two builds of every CPU element loop: baseline x86-64 (SSE2) and AVX2+FMA+F16C (Haswell, 2013, and
// later), picked at run time, so the wheel stays portable (no -march) and still runs at memory speed.
// Measured on the 2-core build machine, one core, Adam on L2-resident data (ns per element, base -> AVX2):
//   fp32 0.54 -> 0.48, bf16 1.47 -> 0.86, fp16 4.3 -> 0.48 (F16C tiles, below); fp64 1.67 either way.
// At ~25 GB/s per core an fp32 Adam element (28 B) takes 1.1 ns of memory time and a bf16/fp16 one
// (14 B) 0.56 ns, so without the AVX2 build the 16-bit types would be compute-bound.
//
// Mechanism: `run_isa<Kernel>(isa, args...)` calls Kernel::run<I>(args...) through a wrapper that carries
// `flatten` (everything below is inlined into it) and, for AVX2, a target attribute, so the same source
// compiles once per ISA. Nothing below a wrapper may call into ATen (flatten would inline it).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "agd_kernels/common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define AGDK_HAVE_AVX2_BUILD 1
#define AGDK_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

namespace agd_kernels::cpu {

enum class Isa { kBase, kAvx2 };

// The ISA for this call: AVX2 when the CPU has it. AGD_KERNELS_CPU_ISA=base forces the baseline build
// (tests run both builds this way); =avx2 requires AVX2. Read per call so tests can switch it.
inline Isa active_isa() {
  const char* forced = std::getenv("AGD_KERNELS_CPU_ISA");
  const bool base = forced != nullptr && std::strcmp(forced, "base") == 0;
  TORCH_CHECK(forced == nullptr || forced[0] == '\0' || base || std::strcmp(forced, "avx2") == 0,
              "AGD_KERNELS_CPU_ISA must be 'base' or 'avx2' (or unset); got '", forced, "'");
#ifdef AGDK_HAVE_AVX2_BUILD
  static const bool has_avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  constexpr bool has_avx2 = false;
#endif
  TORCH_CHECK(base || has_avx2 || forced == nullptr || forced[0] == '\0',
              "AGD_KERNELS_CPU_ISA=avx2 but this CPU lacks AVX2/FMA/F16C");
  return has_avx2 && !base ? Isa::kAvx2 : Isa::kBase;
}

template <class Kernel, class... A>
__attribute__((flatten)) void run_base(A... args) {
  Kernel::template run<Isa::kBase>(args...);
}

#ifdef AGDK_HAVE_AVX2_BUILD
template <class Kernel, class... A>
__attribute__((flatten)) AGDK_TARGET_AVX2 void run_avx2(A... args) {
  Kernel::template run<Isa::kAvx2>(args...);
}
#endif

// fp64 loops gain nothing from AVX2 (1.67 ns per Adam element either way: the fp64 divide and sqrt
// bound them), so kernels whose first argument points to double have the baseline build only.
template <class First, class... Rest>
constexpr bool kHasAvx2Build = !std::is_same_v<std::remove_cv_t<std::remove_pointer_t<First>>, double>;

template <class Kernel, class... A>
void run_isa(Isa isa, A... args) {
#ifdef AGDK_HAVE_AVX2_BUILD
  if constexpr (kHasAvx2Build<A...>) {
    if (isa == Isa::kAvx2) return run_avx2<Kernel>(args...);
  }
#endif
  run_base<Kernel>(args...);
}

// ---------------------------------------------------------------------------------------------------
// Element loops. `map_elements<I>(n, fn, ptrs...)` calls fn(x0, x1, ...) for i < n with xk the math-type
// value of ptrs[k][i] (fp32 for fp32/bf16/fp16, fp64 for fp64) and writes back every stream whose
// pointer is not const. fn must be branch-free so the loop vectorises: per-call choices are template
// parameters, because gcc turns a select on a loop-invariant condition into a branch (see torch_lerp).

// Tile of the fp16 path: 64 elements = 8 AVX registers per stream, all in L1.
constexpr int kTile = 64;

template <Isa I, typename T>
struct TileIO {
  static void load(const T* src, math_t<T>* dst) {
    for (int k = 0; k < kTile; ++k) dst[k] = agd_kernels::load(src, k);
  }
  static void store(T* dst, const math_t<T>* src) {
    for (int k = 0; k < kTile; ++k) agd_kernels::store(dst, k, src[k]);
  }
};

#ifdef AGDK_HAVE_AVX2_BUILD
// F16C converts 8 halves per instruction; c10::Half's portable bit-twiddling conversion vectorises too,
// but at 1.9 ns per Adam element (vs 0.48) it would make fp16 compute-bound.
template <>
struct TileIO<Isa::kAvx2, c10::Half> {
  AGDK_TARGET_AVX2 static void load(const c10::Half* src, float* dst) {
    for (int k = 0; k < kTile; k += 8)
      _mm256_storeu_ps(dst + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
  }
  AGDK_TARGET_AVX2 static void store(c10::Half* dst, const float* src) {
    for (int k = 0; k < kTile; k += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + k), _MM_FROUND_TO_NEAREST_INT));
  }
};
#endif

// Only fp16 under AVX2 goes through tiles; everything else converts inline, which gcc vectorises
// (the tile copies would cost fp32 Adam 0.83 vs 0.48 ns per element).
template <Isa I, typename T>
constexpr bool kTiled = I == Isa::kAvx2 && std::is_same_v<std::remove_const_t<T>, c10::Half>;

// Software prefetch 2 KiB ahead of every stream, one hint per 64-byte line: fp32 Adam on 124M parameters
// (4 read streams) went from 73.4 to 67.2 ms on 2 cores (torch fused: 71.9 ms; 1, 4 and 8 KiB ahead:
// 68.1, 70.3, 72.2 ms), the fp32 sum of squares on one core from 9.1 to 10.2 GB/s. A hint past the end
// of an array is harmless: prefetches never fault.
constexpr int64_t kPrefetchBytes = 2048;
// Elements per block of the element loops (a prefetch round, where they prefetch): one 64-byte line of fp32.
constexpr int64_t kBlock = 16;

// Addresses are computed as integers: a pointer moved past the end of its array would be undefined.
template <typename T>
inline void prefetch(const T* ptr, int64_t count) {
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(ptr) + kPrefetchBytes;
  const int64_t bytes = count * static_cast<int64_t>(sizeof(T));
  for (int64_t offset = 0; offset < bytes; offset += 64) {
    __builtin_prefetch(reinterpret_cast<const void*>(ahead + offset));
  }
}

// Independent fp64 accumulators of the reduction loops (sums of squares, LAMB norms, YellowFin stats):
// 4 AVX2 registers per sum, enough to hide the FMA latency.
constexpr int kLanes = 16;

// The kLanes accumulators added in a fixed pairwise order, so a chunk's sum never depends on the thread
// count; acc is consumed.
inline double sum_lanes(double (&acc)[kLanes]) {
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
  return acc[0];
}

template <typename T>
void store_if_mutable(T* ptr, int64_t i, math_t<T> value) {
  if constexpr (!std::is_const_v<T>) agd_kernels::store(ptr, i, value);
}

template <Isa I, typename T>
void store_tile_if_mutable(T* ptr, const math_t<T>* tile) {
  if constexpr (!std::is_const_v<T>) TileIO<I, T>::store(ptr, tile);
}

template <Isa I, typename Fn, typename... P, size_t... S>
void map_tiles(std::index_sequence<S...>, int64_t n, Fn& fn, P*... ptrs) {
  std::tuple<std::array<math_t<P>, kTile>...> tiles;
  for (int64_t i = 0; i < n; i += kTile) {
    const int64_t len = n - i < kTile ? n - i : kTile;
    (prefetch(ptrs + i, kTile), ...);
    if (len == kTile) {
      (TileIO<I, std::remove_const_t<P>>::load(ptrs + i, std::get<S>(tiles).data()), ...);
    } else {  // the tail: unused lanes hold zeros, computed on and never stored
      for (int k = 0; k < kTile; ++k)
        ((std::get<S>(tiles)[k] = k < len ? agd_kernels::load(ptrs, i + k) : math_t<P>(0)), ...);
    }
    for (int k = 0; k < kTile; ++k) fn(std::get<S>(tiles)[k]...);
    if (len == kTile) {
      (store_tile_if_mutable<I>(ptrs + i, std::get<S>(tiles).data()), ...);
    } else {
      for (int64_t k = 0; k < len; ++k) (store_if_mutable(ptrs, i + k, std::get<S>(tiles)[k]), ...);
    }
  }
}

// One full block of kBlock elements: every stream's values are loaded into registers first, fn runs on
// them, and each stream is then stored in one run. With all loads ahead of all stores in program order,
// gcc needs no aliasing proof to turn the block into vector loads, FMAs and stores. Element by element
// (load, compute, store, next) it could not rule out that a store to p feeds the next load of g, and
// emitted the unrolled block of AGD's p -= c * g and of SGD with momentum as scalar code: on GPT-2's 50
// matrices, 2 threads, agd_step_ ran at 0.64-0.82x the speed of p.add_(g, alpha=c) over the same bytes,
// 0.95-0.99x with blocks (3 interleaved runs each).
template <typename Fn, typename... P, size_t... S>
inline void map_block(std::index_sequence<S...>, Fn& fn, P*... ptrs) {
  std::tuple<std::array<math_t<P>, kBlock>...> x;
  for (int k = 0; k < kBlock; ++k) ((std::get<S>(x)[k] = agd_kernels::load(ptrs, k)), ...);
  for (int k = 0; k < kBlock; ++k) fn(std::get<S>(x)[k]...);
  (
      [&] {
        for (int k = 0; k < kBlock; ++k) store_if_mutable(ptrs, k, std::get<S>(x)[k]);
      }(),
      ...);
}

// kLoadBlocks (AGD, SGD): whole blocks through map_block, without software prefetch, which on the
// 2-core AMD EPYC VM slows such 2-3 stream loops (standalone, 124M fp32, 2 threads, interleaved:
// p -= c*g 24.2 ms without, 26.9 with). Kept off for the other kernels: with blocks and no prefetch,
// LAMB's step went from 0.73-0.78x to 0.35-0.53x of its floor and YellowFin's from 0.69-0.92x to
// 0.32-0.34x on GPT-2 (their 4-6 stream loops into stack tiles), not yet investigated.
template <Isa I, bool kLoadBlocks = false, typename Fn, typename... P>
inline void map_elements(int64_t n, Fn&& fn, P* __restrict... ptrs) {
  if constexpr ((kTiled<I, P> || ...)) {
    map_tiles<I>(std::index_sequence_for<P...>{}, n, fn, ptrs...);
  } else {
    const auto element = [&](int64_t i) {
      std::tuple<math_t<P>...> x{agd_kernels::load(ptrs, i)...};
      std::apply(fn, x);
      std::apply([&](auto... v) { (store_if_mutable(ptrs, i, v), ...); }, x);
    };
    // Full blocks have a constant trip count, so gcc emits them as straight vector code without the
    // remainder checks of a variable-length loop; the tail runs after. fp32 Adagrad on L2-resident data,
    // one core, against torch's fused kernel in the same process: 0.70 vs 0.63 ns per element before,
    // 0.45 vs 0.49 after (and on GPT-2's tensors, 2 cores: 89.1 vs 85.4 ms before, 95.3 vs 96.4 after).
    int64_t b = 0;
    for (; b + kBlock <= n; b += kBlock) {
      if constexpr (kLoadBlocks) {
        map_block(std::index_sequence_for<P...>{}, fn, (ptrs + b)...);
      } else {
        (prefetch(ptrs + b, kBlock), ...);
        for (int64_t i = b; i < b + kBlock; ++i) element(i);
      }
    }
    for (int64_t i = b; i < n; ++i) element(i);
  }
}

}  // namespace agd_kernels::cpu
