"""Loads the compiled extension agd_kernels._C without ever failing the import.

Loading `_C` runs its static registrars (TORCH_LIBRARY_IMPL blocks): the C++ kernels attach
themselves to the ops that agd_kernels.ops defined. As a module it also has one function per op
(csrc/op_call.cpp), the cheap way to call those ops from Python. When the library is missing or was
built for another torch, the reason is kept here and reported once by the backend selection.
"""
from __future__ import annotations

import importlib.util
import json
import os

import torch

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))

#: What setup.py recorded at build time (torch, CUDA, arch list, parts), or {} when unknown.
BUILD_INFO: dict = {}
#: The exception that stopped `_C` from loading, or None when it loaded.
LOAD_ERROR: Exception | None = None
#: True once `_C` is loaded.
LOADED = False
#: The `_C` module once loaded (its per-op functions), else None.
MODULE = None


def _read_build_info() -> dict:
    try:
        with open(os.path.join(_PKG_DIR, "_build_info.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def stale_reason(build_info: dict, schemas: str) -> str | None:
    """Why a `_C` built with `build_info` must not be loaded under the op schemas fingerprinted `schemas`
    (agd_kernels.ops.schema_fingerprint), or None. Its C++ registrars check each kernel against the
    schema while the library loads, and a mismatch throws from a static initialiser: the process aborts,
    past any except clause. So a library built for other schemas (ops.py changed since the build) is
    not loaded at all. A build that recorded no fingerprint is loaded as before."""
    built = build_info.get("schemas")
    if built is None or built == schemas:
        return None
    return ("agd_kernels._C was built for other op schemas (agd_kernels/ops.py changed since the build); "
            "rebuild it with `pip install --no-build-isolation -e .`")


def load(schemas: str) -> None:
    """Load `_C` once. Must run after agd_kernels.ops has defined the schemas, fingerprinted `schemas`."""
    global LOADED, LOAD_ERROR, BUILD_INFO, MODULE
    if LOADED or LOAD_ERROR is not None:
        return
    BUILD_INFO = _read_build_info()
    if os.environ.get("AGD_KERNELS_NO_EXT", "0") == "1":
        LOAD_ERROR = RuntimeError("loading skipped: AGD_KERNELS_NO_EXT=1")
        return
    stale = stale_reason(BUILD_INFO, schemas)
    if stale is not None:
        LOAD_ERROR = ImportError(stale)
        return
    spec = importlib.util.find_spec("agd_kernels._C")
    if spec is None or spec.origin is None:
        LOAD_ERROR = ImportError("agd_kernels._C is not built (install with "
                                 "`pip install --no-build-isolation -e .`)")
        return
    built_for = BUILD_INFO.get("torch")
    try:
        torch.ops.load_library(spec.origin)
        module = importlib.import_module("agd_kernels._C")  # the library just loaded, now as a module
    except (OSError, RuntimeError, ImportError) as exc:
        hint = f" (built for torch {built_for}, running torch {torch.__version__})" if built_for else ""
        LOAD_ERROR = ImportError(f"agd_kernels._C failed to load{hint}: {exc}")
        return
    MODULE = module
    LOADED = True


def has_cuda_part() -> bool:
    """True when `_C` is loaded and was built with the CUDA sources."""
    return LOADED and "cuda" in BUILD_INFO.get("parts", [])
