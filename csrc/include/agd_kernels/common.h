// Shared by the CPU loops (csrc/cpu) and the CUDA kernels (csrc/cuda): the per-element math of every
// algorithm is written once, as AGDK_HOST_DEVICE inline functions on fp32 (or fp64) values, so the CPU
// backend that CI executes runs the same arithmetic the GPU kernels compile.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define AGDK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define AGDK_HOST_DEVICE inline
#endif

namespace agd_kernels {

// Math type of a stored type: fp32 for fp32/bf16/fp16, fp64 for fp64 (at::opmath_type without ATen,
// so .cu files need not include ATen headers for it).
template <typename T> struct MathType { using type = float; };
template <> struct MathType<double> { using type = double; };
template <typename T> using math_t = typename MathType<T>::type;

// Load/store converters: c10::Half and c10::BFloat16 convert to and from float on host and device;
// stores round to nearest even.
template <typename T> AGDK_HOST_DEVICE math_t<T> load(const T* p, long i) { return static_cast<math_t<T>>(p[i]); }
template <typename T> AGDK_HOST_DEVICE void store(T* p, long i, math_t<T> v) { p[i] = static_cast<T>(v); }

}  // namespace agd_kernels
