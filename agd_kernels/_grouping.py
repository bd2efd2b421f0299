"""Grouping of parameter tensors into buckets: the unit one multi-tensor launch covers."""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
from torch import Tensor

from .distributed import is_dtensor


def group_by_device_dtype(tensors: Sequence[Tensor]) -> dict[tuple[torch.device, torch.dtype, bool], list[int]]:
    """{(device, dtype, is DTensor): indices into `tensors`}, keys in first-seen order, indices ascending.

    DTensors (sharded parameters) bucket apart from plain tensors: an op call unwraps a list to local
    shards by its first tensor (agd_kernels.distributed.unwrap)."""
    groups: dict[tuple[torch.device, torch.dtype, bool], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype, is_dtensor(t))].append(i)
    return dict(groups)
