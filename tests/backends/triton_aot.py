"""Ahead-of-time compilation of the real GPU path: every launch the Triton launchers make, compiled with
triton.compile for sm_80 and sm_90 (a GPUTarget needs no GPU), with exactly the argument types and tile
sizes the launcher passes on a GPU. Used by tests/backends/test_triton_aot.py (it compiles), by
tests/backends/test_sass_census.py (what the cubins contain) and by `python -m scripts.sass_census`.

The interpreter that runs the kernels in CI never lowers them, so GPU-only errors (types, layouts, PTX)
surface only here. Launches are recorded by running every launcher on small CPU inputs with
`wrap_triton` replaced by a recorder (both the multi-tensor table path and the per-tensor path torch.compile
takes, with the GPU tile config); a subprocess without TRITON_INTERPRET then compiles each distinct launch
and writes its cubin. Tensor arguments carry the specialization Triton's JIT gives them at launch (16-byte
divisibility of the data pointer, which lets the per-tensor kernels use vector loads); integer arguments
are compiled unspecialized (the general value).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import pytest
import torch

PACKAGE = "agd_kernels.triton_kernels"
MODULES = ("sumsq", "agd", "adam", "sgd", "rmsprop", "adagrad", "lamb", "yellowfin", "stochastic_round")
ARCHS = (80, 90)
DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
#: dtype ids of the master-weights launches (tests/op_cases.py `masters`): fp32 params and state, 16-bit grads
#: and model params
MIXED = {torch.bfloat16: "f32+bf16", torch.float16: "f32+f16"}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _kernels() -> list[str]:
    """'module.name' of every jit kernel (functions named *_kernel; the other jit functions are helpers
    compiled inside them)."""
    names = []
    for mod in MODULES:
        module = importlib.import_module(f"{PACKAGE}.{mod}")
        for name, obj in vars(module).items():
            if name.endswith("_kernel") and hasattr(obj, "fn") and getattr(obj.fn, "__module__", "") == module.__name__:
                names.append(f"{mod}.{name}")
    return sorted(names)


KERNELS = _kernels()


# ------------------------------------------------------------------------------------- recording
def _spec(value, constexpr: bool):
    """JSON description of one launch argument: its value for a constexpr, else just what fixes its type
    (so launches that differ only in runtime values compile once)."""
    if isinstance(value, torch.Tensor):  # aligned: what Triton's JIT specializes a pointer on
        return {"tensor": str(value.dtype).removeprefix("torch."), "aligned": value.data_ptr() % 16 == 0}
    if hasattr(value, "primitive_bitwidth"):  # a triton.language dtype passed as a constexpr
        return {"tl": value.name}
    if constexpr or isinstance(value, bool):
        return {"value": value}
    if isinstance(value, int):  # i32 or i64, as Triton types an int argument
        return {"value": 0 if -2**31 <= value < 2**31 else 2**40}
    if isinstance(value, float):
        return {"value": 0.0}
    raise TypeError(f"unexpected launch argument {value!r}")


class _Recorder:
    """Stands in for torch.library.wrap_triton: kernel[grid](*args, **meta) records instead of running."""

    def __init__(self):
        self.launches: list[dict] = []
        self.dtype: str | None = None  # the dtype id of the launches being recorded

    def __call__(self, kernel):
        recorder = self

        class _Grid:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    options = {k: kwargs.pop(k) for k in ("num_warps", "maxnreg") if k in kwargs}
                    bound = dict(zip(kernel.arg_names, args), **kwargs)
                    annotations = kernel.fn.__annotations__
                    recorder.launches.append({
                        "kernel": f"{kernel.fn.__module__.rsplit('.', 1)[1]}.{kernel.fn.__name__}",
                        "dtype": recorder.dtype,
                        "args": {k: _spec(v, "constexpr" in str(annotations.get(k, "")))
                                 for k, v in bound.items()},
                        "options": options,
                    })
                return launch
        return _Grid()


def _record_all() -> list[dict]:
    from agd_kernels.triton_kernels import multi_tensor, op_table
    from tests.op_cases import VARIANTS, is_mixed, make_args, shapes_for

    recorder = _Recorder()
    with contextlib.ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        for mod in (*MODULES, "multi_tensor"):  # multi_tensor launches the elementwise ops
            module = importlib.import_module(f"{PACKAGE}.{mod}")
            if hasattr(module, "wrap_triton"):
                mp.setattr(module, "wrap_triton", recorder)
        mp.setattr(multi_tensor, "config", lambda device: multi_tensor.GPU)
        # both table alignments (16-byte vector loads, or not) and the per-tensor path torch.compile takes
        for traced, align in ((False, 16), (False, 1), (True, None)):
            mp.setattr(multi_tensor, "traced", lambda tensor, traced=traced: traced)
            mp.setattr(multi_tensor, "alignment", lambda addresses, align=align: align)
            for op, launcher in op_table.LAUNCHERS.items():
                for dtype in DTYPES:
                    for variant in VARIANTS[op]:
                        if is_mixed(op, variant) and dtype not in MIXED:
                            continue
                        recorder.dtype = MIXED[dtype] if is_mixed(op, variant) else DTYPES[dtype]
                        # with kernel taps (conv shapes: tap width 16) and matrices only (tap width 1)
                        for shapes in (shapes_for(op, [1, 7, 4097]), [(1, 1), (7, 1), (4097, 1)]):
                            launcher(*make_args(op, shapes, dtype, variant))
    return recorder.launches


# ------------------------------------------------------------------------------------- compiling
def cubin_path(out_dir: str, job_id: str, arch: int) -> str:
    return os.path.join(out_dir, f"{job_id}.sm_{arch}.cubin")


def compile_main(arch: int, out_dir: str) -> None:
    """Subprocess entry (no TRITON_INTERPRET): compile the JSON jobs on stdin for sm_<arch>, write each
    cubin to cubin_path(out_dir, id, arch); print {job id: error or ''}."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import MockTensor, mangle_type

    target = GPUTarget("cuda", arch, 32)
    aligned_attr = make_backend(target).parse_attr("D")  # 16-byte divisibility, as the JIT marks it

    def value(spec):
        kind, v = next(iter(spec.items()))
        if kind == "tensor":
            return MockTensor(getattr(torch, v))
        return tl.dtype(v) if kind == "tl" else v  # kind "value"

    results = {}
    for job in json.load(sys.stdin):
        mod, name = job["kernel"].split(".")
        kernel = getattr(importlib.import_module(f"{PACKAGE}.{mod}"), name)
        signature, constexprs, attrs = {}, {}, {}
        for i, param in enumerate(kernel.params):
            spec = job["args"][param.name]
            v = value(spec)
            if param.is_constexpr:
                signature[param.name] = "constexpr"
                constexprs[param.name] = v
            else:
                signature[param.name] = param.annotation_type or mangle_type(v)
                if spec.get("aligned"):
                    attrs[(i,)] = aligned_attr
        try:
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                                      target=target, options=job["options"])
            if "cubin" in compiled.asm:
                with open(cubin_path(out_dir, job["id"], arch), "wb") as f:
                    f.write(compiled.asm["cubin"])
                results[job["id"]] = ""
            else:
                results[job["id"]] = "no cubin produced"
        except Exception as exc:  # every compile error is reported, none stops the others
            results[job["id"]] = f"{type(exc).__name__}: {exc}"[:2000]
    json.dump(results, sys.stdout)


@dataclass
class Compiled:
    """Every distinct recorded launch, compiled for every arch of ARCHS."""
    out_dir: str
    jobs: dict[str, dict]  # job id -> {"kernel", "dtype", "args", "options"} of its first launch
    owners: dict[tuple[str, str], set[str]]  # (kernel, dtype id) -> ids of the jobs launching it
    errors: dict[int, dict[str, str]]  # arch -> {job id: compile error, '' when it compiled}

    @staticmethod
    def describe(job: dict) -> str:
        return json.dumps({k: job[k] for k in ("kernel", "args", "options")}, sort_keys=True)

    def cubin(self, job_id: str, arch: int) -> str:
        return cubin_path(self.out_dir, job_id, arch)


def compile_all(out_dir: str) -> Compiled:
    """Record every launch, compile each distinct one for sm_80 and sm_90 into `out_dir` (two compiler
    processes side by side: the 2-core CI machine), and return what compiled. About 1 s per job and arch."""
    jobs, owners = {}, {}
    for launch in _record_all():
        desc = Compiled.describe(launch)
        jobs.setdefault(desc, dict(launch, id=str(len(jobs))))
        owners.setdefault((launch["kernel"], launch["dtype"]), set()).add(jobs[desc]["id"])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    errors = {}
    with tempfile.TemporaryDirectory(prefix="agdk-aot-") as cache:
        env["TRITON_CACHE_DIR"] = cache
        procs = {arch: subprocess.Popen(
            [sys.executable, "-c", f"from tests.backends.triton_aot import compile_main; compile_main({arch}, {out_dir!r})"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
            for arch in ARCHS}
        for arch, proc in procs.items():
            out, err = proc.communicate(json.dumps(list(jobs.values())), timeout=1200)
            if proc.returncode != 0:
                raise RuntimeError(f"the sm_{arch} compiler process failed:\n{err[-4000:]}")
            errors[arch] = json.loads(out)
    return Compiled(out_dir, {job["id"]: job for job in jobs.values()}, owners, errors)
