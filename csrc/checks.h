// Argument checks shared by every launcher: the CPU backend (csrc/cpu) and the grid kernels' host side
// (csrc/grid, for CUDA and for the grid emulator). A Backend policy supplies what differs:
//   const char* backend();  bool accepts(const at::Tensor&);  std::string where();
//   bool takes_dtype(at::ScalarType);  const char* dtypes();
// Bad values and shapes raise ValueError, bad dtypes TypeError, tensors on another device RuntimeError,
// always naming the argument and the expectation. Launchers run every check before they write anything,
// so a rejected call changes nothing.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <string>

namespace agd_kernels {

template <class Backend>
void check_device(const Backend& be, const char* op, const std::string& name, const at::Tensor& t) {
  TORCH_CHECK(be.accepts(t), op, ": ", name, " is on ", t.device(), "; the ", be.backend(), " backend takes ",
              be.where());
}

// The leading list of an op (`params`, or `list`): on the backend's device, one dtype it takes, dense.
template <class Backend>
void check_params(const Backend& be, const char* op, at::TensorList params, const char* list = "params") {
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const std::string name = std::string(list) + "[" + std::to_string(i) + "]";
    check_device(be, op, name, p);
    TORCH_CHECK_TYPE(be.takes_dtype(p.scalar_type()), op, ": ", name, " has dtype ", p.scalar_type(), "; the ",
                     be.backend(), " backend takes ", be.dtypes());
    TORCH_CHECK_TYPE(p.scalar_type() == params[0].scalar_type(), op, ": ", name, " is ", p.scalar_type(), " but ",
                     list, "[0] is ", params[0].scalar_type(), "; one call takes one dtype");
    TORCH_CHECK_VALUE(p.is_non_overlapping_and_dense(), op, ": ", name,
                      " must be dense and non-overlapping (e.g. contiguous); got strides ", p.strides());
  }
}

// `other` must match `params` (named `base` in messages) tensor by tensor: count, device, dtype, shape and
// memory layout. Elementwise kernels walk memory order, so any dense layout both share works (e.g.
// channels_last weights with channels_last state and gradient).
template <class Backend>
void check_like(const Backend& be, const char* op, const char* name, at::TensorList params, at::TensorList other,
                const char* base = "params") {
  TORCH_CHECK_VALUE(other.size() == params.size(), op, ": ", name, " has ", other.size(), " tensors, ", base,
                    " has ", params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& o = other[i];
    check_device(be, op, std::string(name) + "[" + std::to_string(i) + "]", o);
    TORCH_CHECK_TYPE(o.scalar_type() == params[i].scalar_type(), op, ": ", name, "[", i, "] is ", o.scalar_type(),
                     ", ", base, "[", i, "] is ", params[i].scalar_type());
    TORCH_CHECK_VALUE(o.sizes() == params[i].sizes(), op, ": ", name, "[", i, "] has shape ", o.sizes(), ", ", base,
                      "[", i, "] has ", params[i].sizes());
    const bool same_layout = (o.is_contiguous() && params[i].is_contiguous()) || o.strides() == params[i].strides();
    TORCH_CHECK_VALUE(o.is_non_overlapping_and_dense() && same_layout, op, ": ", name, "[", i, "] has strides ",
                      o.strides(), ", ", base, "[", i, "] has ", params[i].strides(),
                      "; both must be dense with the same memory layout");
  }
}

// One list an op takes beside `params`; a null name marks a list this call does not use (amsgrad off, no
// momentum), which is not checked.
struct NamedList {
  const char* name;
  at::TensorList tensors;
};

// The checks every optimizer op starts with: params, then each used list against params.
template <class Backend>
void check_lists(const Backend& be, const char* op, at::TensorList params, std::initializer_list<NamedList> lists) {
  check_params(be, op, params);
  for (const NamedList& list : lists) {
    if (list.name != nullptr) check_like(be, op, list.name, params, list.tensors);
  }
}

}  // namespace agd_kernels
