"""Grouping of parameter tensors by (device, dtype): the unit one multi-tensor launch covers."""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
from torch import Tensor


def group_by_device_dtype(tensors: Sequence[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """{(device, dtype): indices into `tensors`}, keys in first-seen order, indices ascending."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    return dict(groups)
