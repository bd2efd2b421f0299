// agd_kernels._C's Python functions: one per op (csrc/op_call.cpp).
#pragma once
#include <Python.h>

namespace agd_kernels {

// Null-terminated method table for the module's PyModuleDef.
PyMethodDef* op_call_methods();

}  // namespace agd_kernels
