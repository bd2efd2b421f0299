"""The Triton backend of the op table: each launcher becomes `torch.ops.agd_kernels_triton.<op>`.

Every op keeps the schema of agd_kernels.ops.SCHEMAS (mutations included) and is a
`torch.library.triton_op`, so torch.compile decomposes it into its `wrap_triton` launches instead of treating
it as opaque. The ops live in their own namespace: `agd_kernels::<op>` is the reference-backed public op, and
`_backends.register_kernel(op, "triton", ...)` is what makes these the triton backend.
"""

import torch

from agd_kernels import _backends
from agd_kernels.ops import SCHEMAS

from .adagrad import adagrad_step_triton
from .adam import adam_step_triton
from .agd import agd_step_triton
from .lamb import lamb_apply_triton, lamb_moments_triton
from .rmsprop import rmsprop_step_triton
from .sgd import sgd_step_triton
from .stochastic_round import stochastic_round_triton
from .sumsq import slice_sumsq_triton
from .yellowfin import yellowfin_apply_triton, yellowfin_stats_triton, yellowfin_tune_triton

NAMESPACE = "agd_kernels_triton"

#: op name -> launcher (the functions take the op's schema arguments positionally).
LAUNCHERS = {
    "slice_sumsq_": slice_sumsq_triton,
    "agd_step_": agd_step_triton,
    "adam_step_": adam_step_triton,
    "sgd_step_": sgd_step_triton,
    "rmsprop_step_": rmsprop_step_triton,
    "adagrad_step_": adagrad_step_triton,
    "lamb_moments_": lamb_moments_triton,
    "lamb_apply_": lamb_apply_triton,
    "yellowfin_stats_": yellowfin_stats_triton,
    "yellowfin_tune_": yellowfin_tune_triton,
    "yellowfin_apply_": yellowfin_apply_triton,
    "stochastic_round_": stochastic_round_triton,
}


def mutated_args(schema: str) -> list[str]:
    """Names of the arguments a schema marks as written, e.g. `Tensor(a!)[] params`."""
    parsed = torch._C.parse_schema("op" + schema)
    return [a.name for a in parsed.arguments if a.alias_info is not None and a.alias_info.is_write]


def register() -> None:
    for name, launcher in LAUNCHERS.items():
        schema = SCHEMAS[name][0]
        torch.library.triton_op(f"{NAMESPACE}::{name}", launcher, mutates_args=mutated_args(schema), schema=schema)
        _backends.register_kernel(name, "triton", getattr(getattr(torch.ops, NAMESPACE), name).default)
