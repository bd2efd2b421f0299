"""Triton kernels of agd_kernels, installed as agd_kernels.triton_kernels (never as a top-level
`triton_kernels`, a name that belongs to Triton's own repository). Importing this package
registers its kernels with agd_kernels._backends (see op_table.py)."""
from .op_table import register as _register

_register()
