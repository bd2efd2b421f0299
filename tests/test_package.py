"""The package imports, exposes its public names, and every op of the table exists with its schema."""
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
