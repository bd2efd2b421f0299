"""Build agd_kernels: the C++ CPU ops always, the CUDA sources when a toolkit and a CUDA torch exist.

Environment switches (read once, here):
  FORCE_CUDA=1            build csrc/cuda even if detection says no (still needs nvcc).
  AGD_KERNELS_NO_CUDA=1   never build csrc/cuda.
  TORCH_CUDA_ARCH_LIST    arch list; defaults to "8.0;9.0" when unset and no GPU is visible.
  DEBUG=1                 -O0 -g instead of -O3.
  MAX_JOBS                ninja parallelism (defaults to the core count).
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0"  # A100 and H100: the two targets the Triton AOT check also compiles for.


def _env_flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _toolkit_root_from_nvcc():
    """The real CUDA toolkit root, from what nvcc itself reports.

    The nvcc on PATH can be a wrapper script (/usr/local/bin/nvcc -> exec /usr/local/cuda-13.0/bin/nvcc);
    torch's guess (dirname(dirname(which nvcc))) then points at /usr/local and linking fails with
    'cannot find -lcudart'. `nvcc --dryrun -v` prints the toolkit's `TOP=` line.
    """
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cu")
        with open(src, "w") as f:
            f.write("int main() { return 0; }\n")
        try:
            out = subprocess.run([nvcc, "--dryrun", "-v", src], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    if not match:
        return None
    top = os.path.realpath(match.group(1).strip())
    return top if os.path.isfile(os.path.join(top, "bin", "nvcc")) else None


def _nvidia_wheel_include_dirs():
    """Include folders of the pip-installed nvidia wheels torch depends on (nvidia/cu13/include, ...).

    ATen/cuda/CUDAContext.h includes cusparse.h and cublas_v2.h, which a minimal toolkit lacks but the
    wheels ship. Found through the `nvidia` namespace package, so no path is hard-coded.
    """
    try:
        import nvidia  # namespace package installed with the CUDA build of torch
    except ImportError:
        return []
    dirs = []
    for base in nvidia.__path__:
        dirs += sorted(d for d in glob.glob(os.path.join(base, "*", "include")) if os.path.isdir(d))
    return dirs


def _decide_cuda(torch_cuda_version):
    """(build_cuda, reason) from the switches, torch's CUDA version and the toolkit."""
    if _env_flag("AGD_KERNELS_NO_CUDA"):
        return False, "AGD_KERNELS_NO_CUDA=1"
    if torch_cuda_version is None:
        if _env_flag("FORCE_CUDA"):
            raise RuntimeError("FORCE_CUDA=1 but the installed torch is a CPU-only build (torch.version.cuda is None)")
        return False, "torch is a CPU-only build"
    if not os.environ.get("CUDA_HOME"):
        if _env_flag("FORCE_CUDA"):
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found (no nvcc on PATH, CUDA_HOME unset)")
        return False, "no CUDA toolkit found (nvcc not on PATH)"
    return True, "FORCE_CUDA=1" if _env_flag("FORCE_CUDA") else "CUDA toolkit and CUDA torch found"


# CUDA_HOME must be right before torch.utils.cpp_extension is imported: it reads it at import time.
if not os.environ.get("CUDA_HOME") and not _env_flag("AGD_KERNELS_NO_CUDA"):
    _root = _toolkit_root_from_nvcc()
    if _root:
        os.environ["CUDA_HOME"] = _root

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def get_extensions():
    build_cuda, cuda_reason = _decide_cuda(torch.version.cuda)
    debug = _env_flag("DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # -fno-math-errno: without it gcc does not vectorise loops containing sqrt (fused AdamW on 124M
    # params: 60 ms with it, 180 ms without, docs/build.md#compile-flags). -fno-trapping-math: without it gcc keeps the
    # selects of the fp16/bf16 conversions and of the element math as branches and vectorises none of
    # them (torch itself builds with both). No -march: the wheel must be portable; csrc/cpu/isa.h adds an
    # AVX2 build of the element loops chosen at run time instead.
    cxx = opt + ["-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    # csrc/testing is the grid emulator, a test-only library that tests/backends/emulated.py builds.
    sources = sorted(f for f in glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True)
                     if not f.startswith(os.path.join("csrc", "testing", "")))
    info = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "parts": ["cpu"],
        "cuda_reason": cuda_reason,
    }
    if not build_cuda:
        ext = CppExtension("agd_kernels._C", sources, include_dirs=include_dirs,
                           extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
        return [ext], info

    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "**", "*.cu"), recursive=True))
    # -fmad=false: no contraction of a*b + c into one fused multiply-add, so the kernels round operation by
    # operation as the grid emulator (g++ -ffp-contract=off) and the CPU reference do, and the emulated
    # kernels are bit-equal to the real ones. The kernels are memory-bound (fp32 Adam: ~10 flops per 28 B),
    # so the extra FMUL/FADD issue slots cost no time.
    nvcc = opt + ["-lineinfo", "-fmad=false", "-DAGDK_WITH_CUDA"]
    # -idirafter: the wheels' headers only fill gaps, they never shadow the toolkit's own.
    for d in _nvidia_wheel_include_dirs():
        cxx += ["-idirafter", d]
        nvcc += ["-Xcompiler", "-idirafter", "-Xcompiler", d]
    ext = CUDAExtension("agd_kernels._C", sources, include_dirs=include_dirs,
                        extra_compile_args={"cxx": cxx + ["-DAGDK_WITH_CUDA"], "nvcc": nvcc},
                        extra_link_args=["-fopenmp"])
    info.update(parts=["cpu", "cuda"], cuda_home=os.environ["CUDA_HOME"],
                cuda_arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST"))
    return [ext], info


def _schema_fingerprint():
    """agd_kernels.ops.schema_fingerprint() of this source tree, from a child interpreter that imports the
    package without loading `_C` (a stale one in the tree would abort it: agd_kernels/_ext.py)."""
    env = dict(os.environ, AGD_KERNELS_NO_EXT="1", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", "import agd_kernels.ops as o; print(o.schema_fingerprint())"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


class BuildWithInfo(BuildExtension):
    """Writes agd_kernels/_build_info.json (what was built, against what) and says it at the end."""

    def run(self):
        super().run()
        BUILD_INFO["schemas"] = _schema_fingerprint()
        path = os.path.join(ROOT, "agd_kernels", "_build_info.json")
        with open(path, "w") as f:
            json.dump(BUILD_INFO, f, indent=2, sort_keys=True)
        if not self.inplace:  # a wheel build: ship the file inside the package too
            target = os.path.join(self.build_lib, "agd_kernels", "_build_info.json")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(path, target)
        print(f"agd_kernels: built {'+'.join(BUILD_INFO['parts'])} ({BUILD_INFO['cuda_reason']}); "
              f"arch list {BUILD_INFO.get('cuda_arch_list')}; torch {BUILD_INFO['torch']}")


if "MAX_JOBS" not in os.environ:
    os.environ["MAX_JOBS"] = str(os.cpu_count() or 1)

EXTENSIONS, BUILD_INFO = get_extensions()

setup(
    # triton_kernels/ keeps its folder name in the repo but installs only as agd_kernels.triton_kernels:
    # the top-level name belongs to Triton's own repository and to the triton-kernels PyPI package.
    packages=["agd_kernels", "agd_kernels.reference", "agd_kernels.optim", "agd_kernels.triton_kernels"],
    package_dir={"agd_kernels.triton_kernels": "triton_kernels"},
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": BuildWithInfo},
    zip_safe=False,
)
