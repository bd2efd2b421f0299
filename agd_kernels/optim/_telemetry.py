"""`telemetry=True`: the update ops' telemetry buffers of one step, and `opt.telemetry()` built from them
(docs/telemetry.md).

step() hands each op call a fresh zeroed (tensors, 5) fp32 buffer (`buffer`), which the kernel fills in the
pass it makes anyway (agd_kernels/ops.py, "Telemetry"); nothing else happens in step(), and nothing syncs.
`sums` lays the buffers out in parameter order when the user asks, completing sharded parameters' sums
with one all-reduce (the only collective, and only then).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..reference.telemetry import NUM_SUMS


class StepTelemetry:
    """The telemetry buffers of the last step: (the parameters each op call updated, its buffer)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Tensor], Tensor]] = []
        self.steps = 0  # steps recorded, for the error of telemetry() before any step

    def start(self) -> None:
        """A new step: the previous step's buffers are dropped (telemetry() results already hold copies)."""
        self.calls = []
        self.steps += 1

    def buffer(self, tensors: list[Tensor], param_of: Callable[[Tensor], Tensor]) -> Tensor:
        """A zeroed buffer for one op call on `tensors` (masters and working copies stand for their
        parameters: `param_of` maps them back)."""
        buf = torch.zeros((len(tensors), NUM_SUMS), dtype=torch.float32, device=tensors[0].device)
        self.calls.append(([param_of(t) for t in tensors], buf))
        return buf

    def sums(self, params: list[Tensor], reduce: Callable[[Tensor], None]) -> Tensor:
        """The (len(params), 5) sums of the last step in `params` order, on params[0]'s device; NaN rows for
        parameters the step did not update (no gradient). `reduce` completes sharded sums across ranks."""
        device = params[0].device
        out = torch.full((len(params), NUM_SUMS), math.nan, dtype=torch.float32, device=device)
        if self.calls:
            row_of = {id(p): i for i, p in enumerate(params)}
            index = [row_of[id(p)] for keys, _ in self.calls for p in keys]
            rows = torch.cat([buf.to(device, non_blocking=True) for _, buf in self.calls])
            # non_blocking: a pageable host-to-device copy is staged without waiting for the device.
            out.index_copy_(0, torch.tensor(index, dtype=torch.long).to(device, non_blocking=True), rows)
        reduce(out)
        return out


def layer_names(param_groups: list[dict[str, Any]]) -> list[str | int]:
    """Each parameter's name (the groups' `param_names`, from named_parameters()), else its index in
    parameter order."""
    names: list[str | int] = []
    for group in param_groups:
        given = group.get("param_names")
        for pos in range(len(group["params"])):
            names.append(given[pos] if given and pos < len(given) else len(names))
    return names


def per_layer(param_groups: list[dict[str, Any]], value_of: Callable[[dict[str, Any]], float | Tensor],
              device: torch.device) -> Tensor:
    """One value per group (a float or a 0-d tensor: a tensor lr) spread over its parameters, as an fp64
    tensor on `device`, without a host sync."""
    values = []
    for group in param_groups:
        v = value_of(group)
        v = v.detach().to(device=device, dtype=torch.float64) if isinstance(v, Tensor) else \
            torch.tensor(v, dtype=torch.float64).to(device, non_blocking=True)
        values.append(v.reshape(()))
    counts = torch.tensor([len(g["params"]) for g in param_groups]).to(device, non_blocking=True)
    return torch.stack(values).repeat_interleave(counts, output_size=sum(len(g["params"]) for g in param_groups))
