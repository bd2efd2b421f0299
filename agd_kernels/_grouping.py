"""Grouping of parameter tensors into buckets: the unit one multi-tensor launch covers."""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

import torch
from torch import Tensor

from .distributed import is_dtensor


Key = tuple[torch.device, torch.dtype, bool, "torch.dtype | None"]


def group_by_device_dtype(tensors: Sequence[Tensor], model_of: Mapping[int, Tensor] | None = None
                          ) -> dict[Key, list[int]]:
    """{(device, dtype, is DTensor, model dtype): indices into `tensors`}, keys in first-seen order, indices
    ascending.

    DTensors (sharded parameters) bucket apart from plain tensors: an op call unwraps a list to local
    shards by its first tensor (agd_kernels.distributed.unwrap). fp32 masters (`model_of`: id -> the 16-bit
    model parameter) bucket apart from fp32 parameters, by their model's dtype: an op takes one gradient
    dtype and model_params for all of its params or none (agd_kernels/ops.py, "Mixed precision")."""
    groups: dict[Key, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        model = model_of.get(id(t)) if model_of else None
        groups[(t.device, t.dtype, is_dtensor(t), None if model is None else model.dtype)].append(i)
    return dict(groups)
