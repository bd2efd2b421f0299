// agd_kernels._C: loading it runs the static TORCH_LIBRARY_IMPL registrars of csrc/cpu and csrc/cuda,
// which attach C++ kernels to the ops. The schemas live in agd_kernels/ops.py (one source), so the ops
// exist even on machines where this extension is missing; ops.py loads _C after defining them.
// Imported as a module it also has one function per op (csrc/op_call.cpp), a cheaper way to call the
// same dispatcher ops from Python than torch.ops, and the optimizers' collect_grads (csrc/grads.cpp).
#include <Python.h>

#include <vector>

#include "grads.h"
#include "op_call.h"

extern "C" {
PyObject* PyInit__C(void) {
  static std::vector<PyMethodDef> methods = [] {
    std::vector<PyMethodDef> all;
    for (PyMethodDef* table : {agd_kernels::op_call_methods(), agd_kernels::grads_methods()}) {
      for (; table->ml_name != nullptr; ++table) all.push_back(*table);
    }
    all.push_back({nullptr, nullptr, 0, nullptr});
    return all;
  }();
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods.data()};
  return PyModule_Create(&module_def);
}
}
