"""`python -m agd_kernels.info`: versions, what was built, and which backends are live here and why not."""
from __future__ import annotations

import importlib.metadata
import os
import platform

import torch

from . import _backends, _ext


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> str:
    lines = [
        f"agd_kernels {_version('agd_kernels')}",
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"triton {_version('triton')}",
        f"GPU visible: {torch.cuda.is_available()}"
        + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""),
    ]
    if _ext.LOADED:
        info = _ext.BUILD_INFO
        lines.append(f"extension agd_kernels._C: loaded; built {'+'.join(info.get('parts', ['?']))} against torch "
                     f"{info.get('torch', '?')} ({info.get('cuda_reason', 'no build record')})")
        if _ext.has_cuda_part():
            lines.append(f"  CUDA part: arch list {info.get('cuda_arch_list')}, toolkit {info.get('cuda_home')}; "
                         f"{torch.ops.agd_kernels.cuda_runtime_info()}")
    else:
        lines.append(f"extension agd_kernels._C: not loaded: {_ext.LOAD_ERROR}")
    for device in ("cpu", "cuda"):
        lines.append(f"backends for {device} tensors (fp32, checked with adam_step_):")
        for backend, reason in _backends.available(device).items():
            lines.append(f"  {backend:7s} {'live' if reason is None else 'unavailable: ' + reason}")
    lines.append(f"{_backends.ENV_VAR}={os.environ.get(_backends.ENV_VAR, '(unset)')}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
