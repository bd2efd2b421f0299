// The first CUDA source: keeps the nvcc build path exercised in every CI run, and lets
// `python -m agd_kernels.info` report what the CUDA runtime sees without needing a GPU.
#include <cuda_runtime.h>
#include <torch/library.h>

#include <string>

namespace agd_kernels::cuda {

// "runtime 13000, 1 device(s)" or "runtime 13000, no device: <reason>"; never throws.
std::string cuda_runtime_info() {
  int runtime = 0, count = 0;
  cudaRuntimeGetVersion(&runtime);
  const cudaError_t err = cudaGetDeviceCount(&count);
  std::string out = "runtime " + std::to_string(runtime) + ", ";
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later CUDA calls are not poisoned by this probe
    return out + "no device: " + cudaGetErrorString(err);
  }
  return out + std::to_string(count) + " device(s)";
}

TORCH_LIBRARY_FRAGMENT(agd_kernels, m) { m.def("cuda_runtime_info() -> str", &cuda_runtime_info); }

}  // namespace agd_kernels::cuda
