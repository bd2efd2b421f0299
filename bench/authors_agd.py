"""The authors' AGD step (jxbz/agd `agd.py`, docs/agd.md §1), written from the spec as a baseline.

This is what AGD users run today: a Python loop over the weights. Per weight it launches a norm,
sum, multiply and add for G, then ~7 kernels for the update, reads the gradient three times and
writes a full-size temporary; between the two loops `math.sqrt` of the fp32 tensor 1 + 4G forces
one host sync. agd_kernels.AGD does the same math in 2 launches per (device, dtype) group.
"""
from __future__ import annotations

import math

import torch


def target_scale(shape) -> float:
    """sv: √(out/in) for every rank >= 2, divided by √(kh·kw) for 4-D convs only (§1)."""
    sv = math.sqrt(shape[0] / shape[1])
    if len(shape) == 4:
        sv /= math.sqrt(shape[2] * shape[3])
    return sv


class AuthorsAGD:
    """One AGD step per `step()` over `params` (all of rank >= 2), returning eta as a Python float."""

    def __init__(self, params, gain: float = 1.0):
        self.params = list(dict.fromkeys(params))  # net.parameters() lists a tied weight once
        for i, p in enumerate(self.params):
            if p.dim() < 2:
                raise ValueError(f"params[{i}] has shape {tuple(p.shape)}: the authors' AGD supports "
                                 "no biases (parameters of rank <= 1)")
        self.gain = gain
        self.depth = len(self.params)
        self.scales = [target_scale(p.shape) for p in self.params]

    @torch.no_grad()
    def step(self) -> float:
        G = 0
        for p, sv in zip(self.params, self.scales):
            # norm over (out, in) keeps the kernel taps: an L1 sum of per-tap L2 norms for a conv
            G += sv * p.grad.norm(dim=(0, 1)).sum()
        G /= self.depth
        eta = math.log(0.5 * (1 + math.sqrt(1 + 4 * G)))  # math.sqrt of a tensor: the host sync
        for p, sv in zip(self.params, self.scales):
            # a zero tap gives sv/0 = inf -> FLT_MAX, times a zero gradient: no update
            factor = torch.nan_to_num(sv / p.grad.norm(dim=(0, 1)))
            p -= self.gain * eta / self.depth * factor * p.grad
        return eta
