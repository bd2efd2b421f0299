"""An independent AGD oracle for the tests: the formulas of docs/agd.md §1 and §5, written per tensor.

It follows the authors' reference (jxbz/agd `agd.py`: a Python loop over weights, norms over dims (0, 1),
eta from Python doubles) and shares no code with agd_kernels. Run in float64 it is the truth the tests
compare against; run in float32 it is the "same-dtype reference" whose error sets the derived tolerance
(tests/tolerance.py): it then has the reference's own numerics (fp32 G, fp32(1 + 4G) rounded before
math.sqrt, coefficients in fp32), except that zero norms give a zero update (spec decision 4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def sv_of(shape) -> float:
    """√(out / (in · Π kernel)), 0 for a weight with no elements (it moves nothing and adds nothing to G)."""
    if math.prod(shape) == 0:
        return 0.0
    fan_in = shape[1] * math.prod(shape[2:])
    return math.sqrt(shape[0] / fan_in)


@dataclass
class Result:
    params: list[Tensor]   # new values in the math dtype
    eta: float
    G: float


def agd_oracle(params: list[Tensor], grads: list[Tensor], owners: list[int | None], gains: list[float],
               math_dtype: torch.dtype = torch.float64, grad_scale: float = 1.0) -> Result:
    """One AGD step. owners[i] is None for a weight (rank >= 2), else the index of the weight a rank <= 1
    follower moves with. Only tensors that have a gradient may be listed (spec decision 5)."""
    g = [x.to(math_dtype) / grad_scale for x in grads]
    weights = [i for i, p in enumerate(params) if owners[i] is None]
    depth = len(weights)
    G = torch.zeros((), dtype=math_dtype)
    for i in weights:
        G = G + sv_of(params[i].shape) * g[i].norm(dim=(0, 1)).sum()
    G = G / depth
    # As jxbz/agd: 1 + 4G in the tensor dtype, then sqrt and log in double.
    eta = math.log(0.5 * (1 + math.sqrt(float(1 + 4 * G))))
    new = []
    for i, p in enumerate(params):
        owner = owners[i]
        scale = gains[i] * eta / depth
        if owner is None:
            n = g[i].norm(dim=(0, 1), keepdim=True)
            factor = torch.where(n == 0, 0.0, sv_of(p.shape) / n)
        else:
            n = g[owner].norm()  # the owner's whole gradient, every tap
            factor = torch.where(n == 0, 0.0, sv_of(params[owner].shape) / n)
        new.append(p.to(math_dtype) - scale * factor * g[i])
    return Result(new, eta, float(G))


def rounded(result: Result, dtypes: list[torch.dtype]) -> list[Tensor]:
    """The oracle's new parameters rounded once to each parameter's dtype."""
    return [p.to(d) for p, d in zip(result.params, dtypes)]
