// Python entry points of the ops, agd_kernels._C.<op>(*args): the dispatcher op that
// torch.ops.agd_kernels.<op> calls, called through its typed (unboxed) handle with the tensors borrowed
// from the caller's Python lists. agd_kernels.ops uses them for the cpu and cuda backends.
//
// Why: torch.ops' boxed call copies every tensor into a c10::List and drops those lists with the GIL
// released, so each tensor pays two atomic refcount round trips and, for its PyObject's decref, a GIL
// acquire (perf: a third of an RMSprop call on 640 tensors of 100 elements). Borrowing costs nothing per
// tensor. The metadata is pointer-chased (list item -> THPVariable -> TensorImpl) and cold after a step's
// data streamed through the caches, so the loop prefetches it a few items ahead. RMSprop on the
// many-small set (640 tensors), caches flushed before each call: 3.45 ms through torch.ops, 2.61 ms here.
//
// Arguments are positional (agd_kernels.ops passes them so). Anything this path does not take returns
// NotImplemented, and agd_kernels.ops then calls torch.ops, which handles it (and raises its usual
// errors): tensor subclasses (DTensor, FakeTensor), active torch-function or dispatch modes, argument
// types other than the schema's.
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/ops.h"
#include "op_call.h"
#include "tensor_objects.h"

namespace agd_kernels {
namespace {

using Borrow = c10::MaybeOwnedTraits<at::Tensor>;

// A call with at least this many elements (16.8M: ~20 ms of fp32 Adam on the 2-core build VM) releases
// the GIL while its kernel runs, so other Python threads (data loading, logging) are not held up by a
// long step. Smaller calls keep it: releasing costs a reference on every tensor object, given back
// after the kernel when those objects have left the caches (RMSprop on 640 tensors of ~4K elements:
// 2.04 ms holding the GIL, 2.15 ms releasing it; 3.08 and 3.36 ms with caches flushed).
constexpr int64_t kReleaseGilNumel = int64_t{1} << 24;

// What the arguments of one call share: every tensor object borrowed (for the references taken
// before the GIL is released) and their total element count.
struct CallState {
  std::vector<PyObject*> objects;
  int64_t numel = 0;
};

at::Tensor borrow(PyObject* obj, CallState& call) {
  const at::Tensor& t = THPVariable_Unpack(obj);
  call.objects.push_back(obj);
  call.numel += t.numel();
  return Borrow::createBorrow(t);
}

// Arg<T>: holds one Python argument converted to the C++ parameter type T; load() returns false for
// anything the fast path leaves to torch.ops.
template <class T>
struct Arg;

template <>
struct Arg<at::TensorList> {
  std::vector<at::Tensor> tensors;
  ~Arg() {
    for (at::Tensor& t : tensors) Borrow::destroyBorrow(t);
  }
  bool load(PyObject* obj, CallState& call) {
    if (!PyList_Check(obj) && !PyTuple_Check(obj)) return false;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
    PyObject* const* items = PySequence_Fast_ITEMS(obj);
    tensors.reserve(n);
    for (Py_ssize_t i = 0; i < n; ++i) {
      prefetch_tensor_objects(items, i, n);
      if (!is_plain_tensor(items[i])) return false;
      tensors.push_back(borrow(items[i], call));
    }
    return true;
  }
  at::TensorList get() const { return tensors; }
};

template <>
struct Arg<const at::Tensor&> {
  std::optional<at::Tensor> tensor;
  ~Arg() {
    if (tensor) Borrow::destroyBorrow(*tensor);
  }
  bool load(PyObject* obj, CallState& call) {
    if (!is_plain_tensor(obj)) return false;
    tensor = borrow(obj, call);
    return true;
  }
  const at::Tensor& get() const { return *tensor; }
};

template <>
struct Arg<const std::optional<at::Tensor>&> {
  std::optional<at::Tensor> tensor;
  ~Arg() {
    if (tensor) Borrow::destroyBorrow(*tensor);
  }
  bool load(PyObject* obj, CallState& call) {
    if (obj == Py_None) return true;
    if (!is_plain_tensor(obj)) return false;
    tensor = borrow(obj, call);
    return true;
  }
  const std::optional<at::Tensor>& get() const { return tensor; }
};

template <>
struct Arg<double> {
  double value = 0.0;
  bool load(PyObject* obj, CallState&) {
    if (PyFloat_Check(obj)) {
      value = PyFloat_AS_DOUBLE(obj);
      return true;
    }
    if (!PyLong_Check(obj) || PyBool_Check(obj)) return false;
    value = PyLong_AsDouble(obj);
    return !(value == -1.0 && PyErr_Occurred());
  }
  double get() const { return value; }
};

template <>
struct Arg<bool> {
  bool value = false;
  bool load(PyObject* obj, CallState&) {
    if (!PyBool_Check(obj)) return false;
    value = obj == Py_True;
    return true;
  }
  bool get() const { return value; }
};

template <>
struct Arg<int64_t> {
  int64_t value = 0;
  bool load(PyObject* obj, CallState&) {
    if (!PyLong_Check(obj) || PyBool_Check(obj)) return false;
    value = PyLong_AsLongLong(obj);
    return !(value == -1 && PyErr_Occurred());
  }
  int64_t get() const { return value; }
};

template <>
struct Arg<at::IntArrayRef> {
  std::vector<int64_t> values;
  bool load(PyObject* obj, CallState& call) {
    if (!PyList_Check(obj) && !PyTuple_Check(obj)) return false;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
    PyObject* const* items = PySequence_Fast_ITEMS(obj);
    values.resize(n);
    Arg<int64_t> item;
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (!item.load(items[i], call)) return false;
      values[i] = item.value;
    }
    return true;
  }
  at::IntArrayRef get() const { return values; }
};

PyObject* to_python(std::tuple<at::Tensor, at::Tensor>&& out) {
  PyObject* first = THPVariable_Wrap(std::move(std::get<0>(out)));
  if (first == nullptr) return nullptr;
  PyObject* second = THPVariable_Wrap(std::move(std::get<1>(out)));
  if (second == nullptr) {
    Py_DECREF(first);
    return nullptr;
  }
  PyObject* pair = PyTuple_Pack(2, first, second);
  Py_DECREF(first);
  Py_DECREF(second);
  return pair;
}

// Runs fn with the GIL released when the call is large, holding a reference to every tensor object
// meanwhile: the kernel reads tensors borrowed from them, and another thread could otherwise empty a
// list and free one. The references go back after the GIL does.
template <class Fn>
decltype(auto) run_kernel(CallState& call, Fn&& fn) {
  if (call.numel < kReleaseGilNumel) return fn();
  struct Held {
    const std::vector<PyObject*>& objects;
    ~Held() {
      for (PyObject* obj : objects) Py_DECREF(obj);
    }
  };
  struct GilReleased {
    PyThreadState* state = PyEval_SaveThread();
    ~GilReleased() { PyEval_RestoreThread(state); }
  };
  for (PyObject* obj : call.objects) Py_INCREF(obj);
  Held held{call.objects};
  GilReleased no_gil;  // destroyed first: the GIL is back before `held` lets go
  return fn();
}

bool modes_active() {
  return at::impl::torch_function_mode_enabled() || c10::impl::TorchDispatchModeTLS::any_modes_set();
}

template <const char* kName, class Sig>
struct OpCall;

template <const char* kName, class R, class... Args>
struct OpCall<kName, R(Args...)> {
  template <size_t... I>
  static bool load(std::tuple<Arg<Args>...>& args, PyObject* const* objs, CallState& call,
                   std::index_sequence<I...>) {
    return (std::get<I>(args).load(objs[I], call) && ...);
  }

  // METH_FASTCALL: positional arguments only.
  static PyObject* run(PyObject* /*module*/, PyObject* const* objs, Py_ssize_t nargs) {
    HANDLE_TH_ERRORS
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(kName, "").typed<R(Args...)>();
    if (nargs != static_cast<Py_ssize_t>(sizeof...(Args)) || modes_active()) Py_RETURN_NOTIMPLEMENTED;
    CallState call;
    std::tuple<Arg<Args>...> args;
    if (!load(args, objs, call, std::index_sequence_for<Args...>{})) {
      PyErr_Clear();  // an int that overflowed int64: torch.ops reports it
      Py_RETURN_NOTIMPLEMENTED;
    }
    auto invoke = [&]() -> R {
      return std::apply([&](const auto&... arg) -> R { return op.call(arg.get()...); }, args);
    };
    if constexpr (std::is_void_v<R>) {
      run_kernel(call, invoke);
      Py_RETURN_NONE;
    } else {
      return to_python(run_kernel(call, invoke));
    }
    END_HANDLE_TH_ERRORS
  }
};

#define AGDK_OP_CALL(name)                                                                   \
  constexpr char k_##name[] = "agd_kernels::" #name;                                         \
  const PyMethodDef def_##name = {                                                           \
      #name, reinterpret_cast<PyCFunction>(&OpCall<k_##name, decltype(cpu::name##cpu)>::run), \
      METH_FASTCALL, "agd_kernels::" #name " through the dispatcher's typed handle; NotImplemented when " \
      "the arguments need torch.ops"};

AGDK_OP_CALL(slice_sumsq_)
AGDK_OP_CALL(adam_step_)
AGDK_OP_CALL(sgd_step_)
AGDK_OP_CALL(rmsprop_step_)
AGDK_OP_CALL(adagrad_step_)
AGDK_OP_CALL(agd_step_)
AGDK_OP_CALL(lamb_moments_)
AGDK_OP_CALL(lamb_apply_)
AGDK_OP_CALL(yellowfin_stats_)
AGDK_OP_CALL(yellowfin_tune_)
AGDK_OP_CALL(yellowfin_apply_)
AGDK_OP_CALL(stochastic_round_)
#undef AGDK_OP_CALL

PyMethodDef methods[] = {def_slice_sumsq_,    def_adam_step_,       def_sgd_step_,
                         def_rmsprop_step_,   def_adagrad_step_,    def_agd_step_,
                         def_lamb_moments_,   def_lamb_apply_,      def_yellowfin_stats_,
                         def_yellowfin_tune_, def_yellowfin_apply_, def_stochastic_round_,
                         {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* op_call_methods() { return methods; }

}  // namespace agd_kernels
