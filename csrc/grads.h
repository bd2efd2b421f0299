// agd_kernels._C.collect_grads (csrc/grads.cpp).
#pragma once
#include <Python.h>

namespace agd_kernels {

// Null-terminated method table for the module's PyModuleDef.
PyMethodDef* grads_methods();

}  // namespace agd_kernels
