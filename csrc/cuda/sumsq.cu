// CUDA backend of agd_kernels::slice_sumsq_: the grid kernel SliceSumsqKernel
// (csrc/include/agd_kernels/grid/sumsq.h), one launch per call, the same bits every run.
#include <torch/library.h>

#include "../grid/reduction_ops.h"
#include "device.cuh"

namespace agd_kernels::cuda {

void slice_sumsq_cuda(at::TensorList tensors, const at::Tensor& out) {
  CudaDevice dev = device_of(tensors, out);
  grid::slice_sumsq(dev, tensors, out);
}

TORCH_LIBRARY_IMPL(agd_kernels, CUDA, m) { m.impl("slice_sumsq_", &slice_sumsq_cuda); }

}  // namespace agd_kernels::cuda
