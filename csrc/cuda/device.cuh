// The CUDA side of the grid kernels: the block context of agd_kernels/grid/block.h on CUDA intrinsics, the
// one __global__ template every kernel body is launched through, and the Device policy of
// csrc/grid/host.h (table cache, current stream, launch check).
//
// Kernel names in the SASS: agdk_kernel<agd_kernels::grid::AdamKernel<float, false, false, false>> etc.,
// one instance per (body, dtype, flags); `cuobjdump -symbols` / `-sass` list them by those names.
#pragma once
#include <ATen/ops/empty.h>
#include <c10/core/Device.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "../grid/host.h"
#include "agd_kernels/grid/block.h"

namespace agd_kernels::cuda {

struct CudaContext {
  __device__ __forceinline__ int64_t block() const { return blockIdx.x; }
  __device__ __forceinline__ int64_t blocks() const { return gridDim.x; }
  __device__ __forceinline__ int thread() const { return threadIdx.x; }
  __device__ __forceinline__ int threads() const { return blockDim.x; }
  __device__ __forceinline__ void sync() { __syncthreads(); }
  __device__ __forceinline__ void fence() { __threadfence(); }
  __device__ __forceinline__ int32_t atomic_add(int32_t* p, int32_t v) { return atomicAdd(p, v); }
};

template <class K>
__global__ void __launch_bounds__(K::kThreads) agdk_kernel(const typename K::Args args) {
  __shared__ typename K::Shared shared;
  CudaContext ctx;
  K::run(ctx, shared, args);
}

// The device copy of a tensor table (grid/block.h), cached by its exact words (pointers, sizes, block
// map) and device: a hit costs a hash of the words and no copy, so a steady training loop uploads each
// table once. Under CUDA-graph capture a miss is an error (the copy would be captured from a host buffer
// and the table allocated in the graph's private pool): run one eager step before capturing, as torch's
// own capturable optimizers require. Tables are kept until 4096 newer ones exist (a few KiB each for
// typical models; a replayed graph must use one of the last 4096 parameter sets).
grid::Table cached_table(c10::Device device, std::vector<int64_t> words, int64_t tensors, int32_t lists);

// The Device policy of csrc/grid/host.h: tensors on one CUDA device, launches on its current stream.
struct CudaDevice : grid::KernelDtypes {
  c10::Device device;

  const char* backend() const { return "cuda"; }
  bool accepts(const at::Tensor& t) const { return t.device() == device; }
  std::string where() const { return "tensors on " + device.str() + " (the device of params[0])"; }

  std::vector<at::Tensor> scratch;  // freed after the launch: the caching allocator orders reuse on the stream

  grid::Table table(std::vector<int64_t> words, int64_t tensors, int32_t lists) {
    return cached_table(device, std::move(words), tensors, lists);
  }

  double* scratch_doubles(int64_t n) {
    scratch.push_back(at::empty({n}, at::TensorOptions().dtype(at::kDouble).device(device)));
    return scratch.back().mutable_data_ptr<double>();
  }

  template <class K>
  void launch(int64_t blocks, const typename K::Args& args) {
    const c10::cuda::CUDAGuard guard(device);
    // gridDim.x allows 2^31 - 1 blocks: 70 trillion elements at 32768 per block.
    agdk_kernel<K><<<static_cast<unsigned int>(blocks), K::kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// The device of a call: params[0]'s, or that of `other` (lr, out) when there are no parameters (then
// nothing is launched).
inline CudaDevice device_of(at::TensorList params, const at::Tensor& other) {
  const c10::Device d = params.empty() ? other.device() : params[0].device();
  TORCH_CHECK(d.is_cuda(), "the cuda backend takes CUDA tensors; got ", d);
  return CudaDevice{{}, d};  // {} : the KernelDtypes base
}

}  // namespace agd_kernels::cuda
