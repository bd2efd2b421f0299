"""agd_kernels: fused optimizer kernels for PyTorch (AGD, Adam family, SGD, RMSprop, Adagrad, LAMB,
YellowFin) behind torch.optim-compatible classes.

Importing never fails: without the compiled extension, Triton or a GPU, ops fall back to the
pure-PyTorch reference with one warning (see `python -m agd_kernels.info`).
"""
from . import ops
from .optim import AGD, LAMB, SGD, Adagrad, Adam, AdamW, RMSprop, YellowFin

__version__ = "0.1.0"
__all__ = ["AGD", "Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "LAMB", "YellowFin", "ops"]
