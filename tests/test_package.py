"""The package imports, exposes its public names, and every op of the table exists with its schema."""
import os
import pathlib
import re
import shutil
import subprocess
import sys

import torch

import agd_kernels
from agd_kernels import ops


def test_public_names():
    for name in ("AGD", "Adam", "AdamW", "SGD", "RMSprop", "Adagrad"):
        assert issubclass(getattr(agd_kernels, name), torch.optim.Optimizer)


def test_every_op_defined_with_its_schema():
    for name, (schema, _) in ops.SCHEMAS.items():
        op = getattr(torch.ops.agd_kernels, name).default
        assert str(op._schema) == f"agd_kernels::{name}{schema}"


def test_import_without_extension_falls_back_to_reference():
    code = ("import warnings, torch, agd_kernels as ak\n"
            "from agd_kernels import _ext, _backends\n"
            "assert not _ext.LOADED and 'AGD_KERNELS_NO_EXT' in str(_ext.LOAD_ERROR)\n"
            "p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    ak.SGD([p], lr=0.5).step()\n"
            "assert torch.equal(p.detach(), torch.full((3,), 0.5)), p\n"
            "assert any('pure-PyTorch reference' in str(x.message) for x in w), [str(x.message) for x in w]\n")
    env = {"AGD_KERNELS_NO_EXT": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_triton_sources_install_only_inside_the_package(tmp_path):
    # From outside the repo the top-level name must not resolve to our folder (it belongs to Triton's
    # own repository and to the triton-kernels PyPI package); ours is agd_kernels.triton_kernels.
    code = ("import importlib.util, agd_kernels.triton_kernels as t\n"
            "spec = importlib.util.find_spec('triton_kernels')\n"
            "assert spec is None or 'agd_kernels' not in (spec.origin or ''), spec\n"
            "print(t.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "agd_kernels.triton_kernels", out.stderr


def test_no_code_imports_top_level_triton_kernels():
    root = pathlib.Path(__file__).resolve().parents[1]
    offenders = [str(p) for folder in ("agd_kernels", "triton_kernels", "bench", "tests")
                 for p in (root / folder).rglob("*.py")
                 if re.search(r"^\s*(import triton_kernels|from triton_kernels)", p.read_text(), re.MULTILINE)]
    assert not offenders, offenders


def test_build_is_recorded():
    from agd_kernels import _ext
    info = _ext.BUILD_INFO
    assert _ext.LOADED, _ext.LOAD_ERROR
    assert info["torch"] == torch.__version__ and "cpu" in info["parts"], info
    assert info["schemas"] == ops.schema_fingerprint(), "a build records the op schemas it was made for"
    if shutil.which("nvcc") and torch.version.cuda and "cuda" not in info["parts"] \
            and info.get("cuda_reason") != "AGD_KERNELS_NO_CUDA=1":
        raise AssertionError(f"nvcc is on PATH and torch has CUDA, but the CUDA part was not built: {info}")
    if "cuda" in info["parts"] and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        assert info["cuda_arch_list"] == "8.0;9.0", info
        # The .cu probe was compiled, linked and loads here even without a GPU.
        assert torch.ops.agd_kernels.cuda_runtime_info().startswith("runtime ")


def test_a_build_for_other_schemas_is_not_loaded():
    """Its registrars would abort the process while loading (agd_kernels/_ext.py stale_reason)."""
    from agd_kernels import _ext
    now = ops.schema_fingerprint()
    assert _ext.stale_reason({"schemas": now}, now) is None
    assert _ext.stale_reason({}, now) is None  # a build that recorded none: loaded as before
    reason = _ext.stale_reason({"schemas": "0" * 16}, now)
    assert reason is not None and "built for other op schemas" in reason and "pip install" in reason
    changed = dict(ops.SCHEMAS, adam_step_=(ops.SCHEMAS["adam_step_"][0].replace("-> ()", "-> Tensor"), None))
    assert ops.schema_fingerprint(changed) != now
