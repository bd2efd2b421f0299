// CUDA backend of agd_kernels::stochastic_round_: the grid kernel StochasticRoundKernel
// (csrc/include/agd_kernels/grid/stochastic_round.h), one launch per call.
#include <torch/library.h>

#include "../grid/rounding_ops.h"
#include "device.cuh"

namespace agd_kernels::cuda {

void stochastic_round_cuda(at::TensorList dst, at::TensorList src, const at::Tensor& seed, at::TensorList steps,
                           at::IntArrayRef offsets) {
  CudaDevice dev = device_of(dst, seed);
  grid::stochastic_round(dev, dst, src, seed, steps, offsets);
}

TORCH_LIBRARY_IMPL(agd_kernels, CUDA, m) { m.impl("stochastic_round_", &stochastic_round_cuda); }

}  // namespace agd_kernels::cuda
