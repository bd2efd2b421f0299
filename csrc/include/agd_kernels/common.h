// Shared by the CPU loops (csrc/cpu) and the CUDA kernels (csrc/cuda): the per-element math of every
// algorithm is written once, as AGDK_HOST_DEVICE inline functions on fp32 (or fp64) values, so the CPU
// backend that CI executes runs the same arithmetic the GPU kernels compile.
//
// Rules for everything under include/agd_kernels: no std::, no ATen, no exceptions, no host-only calls,
// and no data-dependent branches in element functions (a branch blocks vectorisation of the CPU loop;
// per-call flags are template parameters, data-dependent choices are selects `c ? a : b`).
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define AGDK_HOST_DEVICE __host__ __device__ __forceinline__
#else
// always_inline: the CPU loops are compiled twice (baseline and AVX2, csrc/cpu/isa.h) and each copy
// must carry its own inlined math; an out-of-line call per element would also stop vectorisation.
#define AGDK_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace agd_kernels {

// Math type of a stored type: fp32 for fp32/bf16/fp16, fp64 for fp64 (at::opmath_type without ATen,
// so .cu files need not include ATen headers for it).
template <typename T> struct MathType { using type = float; };
template <> struct MathType<double> { using type = double; };
template <typename T> struct MathType<const T> : MathType<T> {};
template <typename T> using math_t = typename MathType<T>::type;

// Load/store converters: c10::Half and c10::BFloat16 convert to and from float on host and device;
// stores round to nearest even.
template <typename T> AGDK_HOST_DEVICE math_t<T> load(const T* p, int64_t i) { return static_cast<math_t<T>>(p[i]); }
template <typename T> AGDK_HOST_DEVICE void store(T* p, int64_t i, math_t<T> v) { p[i] = static_cast<T>(v); }

AGDK_HOST_DEVICE float msqrt(float x) { return sqrtf(x); }
AGDK_HOST_DEVICE double msqrt(double x) { return sqrt(x); }

// max / min that return NaN when either input is NaN, like torch.maximum / minimum (fmax drops it).
template <typename M>
AGDK_HOST_DEVICE M max_nan(M a, M b) { return (a < b || b != b) ? b : a; }

template <typename M>
AGDK_HOST_DEVICE M min_nan(M a, M b) { return (b < a || b != b) ? b : a; }

// torch.lerp(start, end, weight) exactly as ATen evaluates it: anchored at the nearer end, so weight 1
// returns `end` bit-exactly. Which end is a per-call fact (lerp_from_end(weight)) and a template
// parameter: as a run-time select it kept gcc from vectorising the bf16 Adam loop under AVX2 (3.9 ns
// instead of 0.86 ns per element).
AGDK_HOST_DEVICE bool lerp_from_end(double weight) { return !(weight < 0.5 && weight > -0.5); }

template <bool kFromEnd, typename M>
AGDK_HOST_DEVICE M torch_lerp(M start, M end, M weight) {
  const M diff = end - start;
  return kFromEnd ? end - diff * (M(1) - weight) : start + weight * diff;
}

}  // namespace agd_kernels
