// The contract between a kernel body and whatever runs it. A body is a struct K with
//   using Args = ...;              kernel arguments, passed by value (trivially copyable)
//   using Shared = ...;            the block's shared memory (trivially constructible: CUDA leaves it
//                                  uninitialised, and so does the emulator, which poisons it)
//   static constexpr int kThreads; threads per block
//   template <class Ctx> static void run(Ctx& ctx, Shared& shared, const Args& args);
// and Ctx (the block context) offers block(), blocks(), thread(), threads(), sync() (the block barrier),
// fence() (orders this thread's global writes before its later ones, device-wide) and
// atomic_add(int32_t*, int32_t) (an integer atomic; no body uses a float atomic, so sums never depend
// on arrival order). csrc/cuda/device.cuh implements Ctx with CUDA intrinsics; the grid emulator
// (csrc/testing/emulator.h) implements it on CPU, so CI executes these bodies with g++.
//
// Everything here follows common.h's rules (no std::, no ATen, no exceptions).
#pragma once
#include <stdint.h>

#include "agd_kernels/common.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#define AGDK_DEVICE __device__ __forceinline__
#else
#define AGDK_DEVICE inline
#endif

namespace agd_kernels::grid {

// 256 threads: 8 warps per block, up to 8 resident blocks per SM on sm_80/sm_90 (2048 threads), so a
// block that waits on its loads leaves 7 others to issue. Elements per block (the chunk): 32768, i.e.
// 32 fp32 vectors of 4 or 16 fp16/bf16 vectors of 8 per thread, enough loads in flight to amortise the
// per-block prologue (table lookups, one scalar read); a 1B-parameter model needs 30.5K blocks and a
// 244 KiB block map.
constexpr int kThreads = 256;
constexpr int64_t kChunk = 32768;
// 128-bit global accesses (LDG.E.128 / STG.E.128): 4 fp32 or 8 fp16/bf16 elements per access.
constexpr int kVectorBytes = 16;

template <int W>
struct Width {
  static constexpr int value = W;
};

template <typename T>
struct VectorWidth {
  static constexpr int value = kVectorBytes / static_cast<int>(sizeof(T));
};

// W consecutive elements as one aligned aggregate: dereferencing a pointer to it is one 128-bit access
// when W * sizeof(T) == 16 (the table guarantees the alignment, see Table::vector_ok).
template <typename T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};

template <int W, typename T>
AGDK_DEVICE void load_pack(const T* base, int64_t i, math_t<T> (&out)[W]) {
  const Pack<T, W> pack = *reinterpret_cast<const Pack<T, W>*>(base + i);
#pragma unroll
  for (int k = 0; k < W; ++k) out[k] = static_cast<math_t<T>>(pack.v[k]);
}

template <int W, typename T>
AGDK_DEVICE void store_pack(T* base, int64_t i, const math_t<T> (&in)[W]) {
  Pack<T, W> pack;
#pragma unroll
  for (int k = 0; k < W; ++k) pack.v[k] = static_cast<T>(in[k]);
  *reinterpret_cast<Pack<T, W>*>(base + i) = pack;
}

// Master weights (agd_kernels/ops.py, "Mixed precision"): a body templated on the params' type T and the
// grads' type G runs on fp32 masters with 16-bit grads when they differ, and then also stores each updated
// master, rounded to nearest even, into a model param of type G (only stored, never loaded). Vectors
// follow T: 4 elements per thread, so the fp32 streams stay 128-bit and the 16-bit ones are 64-bit.
// Bytes per element, Adam: 14 read + 14 written, where a kernel on fp32 copies of the grads plus a
// copy-back pass moved 40 (2 + 4 for g.float(), 16 + 12 for the step, 4 + 2 for the copy-back).
template <typename A, typename B>
struct SameType {
  static constexpr bool value = false;
};
template <typename A>
struct SameType<A, A> {
  static constexpr bool value = true;
};
template <typename T, typename G>
constexpr bool kCopies = !SameType<T, G>::value;

// A per-step scalar the kernel reads from device memory (lr, grad_scale, found_inf): no host sync, and a
// CUDA graph replays with whatever the tensor holds at replay time.
struct Scalar {
  enum Kind : int32_t { kAbsent = 0, kFloat = 1, kDouble = 2 };
  const void* ptr;
  int32_t kind;
};

AGDK_DEVICE double read_scalar(const Scalar& s, double absent) {
  if (s.kind == Scalar::kFloat) return static_cast<double>(*static_cast<const float*>(s.ptr));
  if (s.kind == Scalar::kDouble) return *static_cast<const double*>(s.ptr);
  return absent;
}

// found_inf (AMP): any nonzero value skips the whole step, state_steps included.
AGDK_DEVICE bool skip_step(const Scalar& found_inf) { return read_scalar(found_inf, 0.0) != 0.0; }

// The device-side tensor table of one call: built on the host once per parameter set (csrc/grid/table.h)
// and kept on the device, so a launch reads it instead of receiving pointers as arguments, one launch
// serves any number of tensors, and a captured CUDA graph keeps pointing at valid memory. int64 words:
//   ptr[list][tensor]   lists x tensors data pointers (0 for a list the call does not use)
//   numel[tensor]
//   vector_ok[tensor]   1 when every element list's pointer of the tensor is 16-byte aligned
//   block[b]            tensor << 32 | chunk index within the tensor, for each block of the launch
// A tensor of n elements has max(1, ceil(n / kChunk)) blocks: an empty tensor still gets one, which
// advances its step counter. counters: one int32 per tensor, zero between launches (see last_block).
struct Table {
  const int64_t* words;
  int32_t* counters;
  int64_t tensors;
  int32_t lists;

  template <typename T>
  AGDK_DEVICE T* ptr(int list, int64_t tensor) const {
    T* p = reinterpret_cast<T*>(static_cast<uintptr_t>(words[list * tensors + tensor]));
#if defined(__CUDA_ARCH__)
    // A pointer read from memory is generic to nvcc, which then emits LD.E/ST.E (generic addressing,
    // resolved per access) instead of LDG/STG: without this the SASS census counted 0 LDG.E.128 in the
    // fp32 Adam, RMSprop, Adagrad and LAMB kernels. Every table pointer is a torch CUDA allocation.
    __builtin_assume(__isGlobal(p));
#endif
    return p;
  }
  // A per-entry word of list `list` that is not a pointer (a body's own table column).
  AGDK_DEVICE int64_t word(int list, int64_t tensor) const { return words[list * tensors + tensor]; }
  AGDK_DEVICE int64_t numel(int64_t tensor) const { return words[lists * tensors + tensor]; }
  AGDK_DEVICE bool vector_ok(int64_t tensor) const { return words[(lists + 1) * tensors + tensor] != 0; }
  AGDK_DEVICE int64_t block_word(int64_t block) const { return words[(lists + 2) * tensors + block]; }
};

AGDK_HOST_DEVICE int64_t blocks_of(int64_t numel) { return numel == 0 ? 1 : (numel + kChunk - 1) / kChunk; }

// The chunk a block works on: elements [begin, end) of tensor `tensor`.
struct Chunk {
  int64_t tensor, begin, end;
};

AGDK_DEVICE Chunk chunk_of(const Table& table, int64_t block) {
  const int64_t word = table.block_word(block);
  Chunk c;
  c.tensor = word >> 32;
  c.begin = (word & 0xffffffffLL) * kChunk;
  const int64_t n = table.numel(c.tensor);
  c.end = n < c.begin + kChunk ? n : c.begin + kChunk;
  return c;
}

// Calls fn(Width<W>{}, i) so that every element of [c.begin, c.end) is covered once by this block's
// threads: 128-bit vectors (W = VectorWidth<T>) where the tensor is aligned, then a scalar tail (W = 1)
// for the last numel % W elements. Consecutive threads take consecutive vectors (coalesced). Chunk
// starts are multiples of kChunk, hence of W, so vectors never straddle chunks.
template <typename T, class Ctx, class Fn>
AGDK_DEVICE void for_each_vector(Ctx& ctx, const Table& table, const Chunk& c, Fn&& fn) {
  constexpr int W = VectorWidth<T>::value;
  const int64_t stride = ctx.threads();
  int64_t tail = c.begin;
  if (table.vector_ok(c.tensor)) {
    tail = c.begin + (c.end - c.begin) / W * W;
    for (int64_t i = c.begin + ctx.thread() * static_cast<int64_t>(W); i < tail; i += stride * W) fn(Width<W>{}, i);
  }
  for (int64_t i = tail + ctx.thread(); i < c.end; i += stride) fn(Width<1>{}, i);
}

// True in every thread of exactly one block of the tensor: the last of its blocks to get here. The
// barrier makes the whole block's work precede thread 0's fence and atomic, so the last block sees what
// every sibling wrote; it resets the counter for the next launch (CUDA-graph replays included). `flag`
// is a shared-memory word that broadcasts thread 0's answer.
template <class Ctx>
AGDK_DEVICE bool last_block(Ctx& ctx, int32_t* counter, int64_t blocks, int32_t& flag) {
  ctx.sync();
  if (ctx.thread() == 0) {
    ctx.fence();
    const int32_t arrived = ctx.atomic_add(counter, 1);
    flag = arrived == blocks - 1;
    if (flag) *counter = 0;
  }
  ctx.sync();
  return flag != 0;
}

// The step counter of a tensor after this step: +1 in its own dtype, as torch's `step += 1`.
AGDK_DEVICE double next_step(const void* step, bool fp64) {
  return fp64 ? *static_cast<const double*>(step) + 1.0
              : static_cast<double>(*static_cast<const float*>(step) + 1.0f);
}

AGDK_DEVICE void store_step(void* step, bool fp64, double t) {
  if (fp64) {
    *static_cast<double*>(step) = t;
  } else {
    *static_cast<float*>(step) = static_cast<float>(t);
  }
}

// The block's sum of one value per thread over a FIXED tree in shared memory: scratch[i] += scratch[i + s]
// for s = threads/2, threads/4, ..., 1, so the result has one possible value for a given input order,
// whatever the scheduling (no warp shuffles, whose order the emulator would have to model too, and no
// atomics). scratch holds ctx.threads() values, a power of two. Every thread gets the sum.
template <typename A, class Ctx>
AGDK_DEVICE A block_sum(Ctx& ctx, A* scratch, A value) {
  const int tid = ctx.thread();
  scratch[tid] = value;
  ctx.sync();
  for (int s = ctx.threads() / 2; s > 0; s /= 2) {
    if (tid < s) scratch[tid] += scratch[tid + s];
    ctx.sync();
  }
  const A sum = scratch[0];
  ctx.sync();  // scratch may be reused right after
  return sum;
}

}  // namespace agd_kernels::grid
