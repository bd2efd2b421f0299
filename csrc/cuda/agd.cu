// CUDA backend of agd_kernels::agd_step_: the grid kernels AgdScalarsKernel and AgdUpdateKernel
// (csrc/include/agd_kernels/grid/agd.h), two launches per call; with slice_sumsq_, AGD's step is 3.
#include <torch/library.h>

#include "../grid/agd_ops.h"
#include "device.cuh"

namespace agd_kernels::cuda {

std::tuple<at::Tensor, at::Tensor> agd_step_cuda(at::TensorList params, at::TensorList grads,
                                                 const at::Tensor& sumsq, const at::Tensor& slice_sv,
                                                 at::IntArrayRef slice_start, at::IntArrayRef slice_count,
                                                 int64_t depth, double gain,
                                                 const std::optional<at::Tensor>& grad_scale,
                                                 const std::optional<at::Tensor>& found_inf, at::TensorList model_params, const std::optional<at::Tensor>& telemetry) {
  CudaDevice dev = device_of(params, sumsq);
  return grid::agd_step(dev, params, grads, sumsq, slice_sv, slice_start, slice_count, depth, gain, grad_scale,
                        found_inf, model_params, telemetry);
}

TORCH_LIBRARY_IMPL(agd_kernels, CUDA, m) { m.impl("agd_step_", &agd_step_cuda); }

}  // namespace agd_kernels::cuda
