// agd_kernels._C: importing it only runs the static TORCH_LIBRARY_IMPL registrars of csrc/cpu and
// csrc/cuda, which attach C++ kernels to the ops. The schemas live in agd_kernels/ops.py (one source),
// so the ops exist even on machines where this extension is missing; ops.py loads _C after defining them.
#include <Python.h>

extern "C" {
// An empty module: no pybind11, nothing exported to Python directly.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
