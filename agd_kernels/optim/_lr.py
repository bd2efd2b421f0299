"""A param group's lr as the 0-d device tensors the kernels read (docs/design.md rule 3).

LR schedulers write a Python float into `group["lr"]` between steps. Eager step() compares it with
the value its tensor holds and refills the tensor only when it changed (a float comparison; one fill
kernel per change, no host sync). Under torch.compile that comparison made Dynamo guard on both
floats, so every lr change recompiled the step (LambdaLR, 6 steps of Adam, aot_eager: 6 frames, one per lr).
A compiled step instead writes the float into the tensor on every call and compares nothing: Dynamo
then treats lr as a graph input (a symbolic float) from its first change on: at most one recompile.
"""
from __future__ import annotations

import torch
from torch import Tensor


def lr_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """The lr tensor's dtype for parameters of `param_dtype`. A Python float is a double: fp64
    parameters get all of it (an fp32 lr put fp64 trajectories up to 5e-8 relative off torch.optim's);
    every other dtype computes in fp32, where a double lr would only mix precisions in the kernels."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


class LrTensors:
    """One param group's lr tensors, one per (device, dtype) its parameters use."""

    def __init__(self) -> None:
        #: (device, dtype) -> [the float the tensor holds (None: unknown), the tensor]
        self._entries: dict[tuple[torch.device, torch.dtype], list] = {}

    def get(self, lr: float | Tensor, device: torch.device, param_dtype: torch.dtype) -> Tensor:
        """lr on `device` for parameters of `param_dtype`: a tensor lr as given (moved to `device` when
        it lives elsewhere; fill_ it to change it, as under CUDA graphs), a float lr as a cached tensor."""
        if isinstance(lr, Tensor):
            return lr if lr.device == device else lr.to(device, non_blocking=True)
        key = (device, lr_dtype(param_dtype))
        entry = self._entries.get(key)
        compiling = torch.compiler.is_compiling()
        if entry is None:
            entry = self._entries[key] = [None if compiling else lr, torch.full((), lr, dtype=key[1], device=device)]
        elif compiling:
            # zero_().add_(lr), not fill_(lr): AOTAutograd turns a symbolic float that feeds add into a
            # 0-d tensor input, but specializes (recompiles) on one that feeds fill (measured, aot_eager
            # and inductor, torch 2.14). 0 + lr rounds once, as fill does.
            entry[1].zero_().add_(lr)
            entry[0] = None  # the next eager step refills rather than trust a value set while tracing
        elif entry[0] != lr:
            entry[1].fill_(lr)  # a fill kernel on the device: no host sync
            entry[0] = lr
        return entry[1]
