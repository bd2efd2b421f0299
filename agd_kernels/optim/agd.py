"""AGD: automatic gradient descent (arXiv 2304.05187) without a learning rate, fused and sync-free.

Follows specs/agd.md §5. A step is two launches per (device, dtype) bucket: the per-tap gradient
norms (`slice_sumsq_`, into one fp32 buffer for all buckets) and the update (`agd_step_`, which
computes G and eta from that buffer on the device). `step()` returns eta as a 0-d device tensor.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ops
from .._grouping import group_by_device_dtype
from ..reference.agd import target_scale
from ..reference.sumsq import num_slices
from ._base import FusedOptimizer, describe_param, is_number

BIAS_MODES = ("reject", "follow")


def _valid_gain(gain) -> bool:
    return is_number(gain) and math.isfinite(gain) and gain > 0


@dataclass
class _Plan:
    """Everything about a step that depends only on which parameters have gradients."""
    depth: int
    norm_buckets: list[tuple[list[Tensor], int, int]]      # (matrices, first slot, slot count)
    update_buckets: list[tuple[int, list[Tensor], list[int], list[int]]]  # (group, params, starts, counts)
    slice_sv: Tensor


class AGD(FusedOptimizer):
    """Automatic gradient descent: no learning rate, no momentum, no state.

    Args:
        params: tensors, named parameters or param groups. Rank >= 2 tensors are the weights AGD
            normalises (per kernel tap for convolutions).
        gain: multiplies the update only (not G, not the returned eta); per group. Default 1.
        bias_mode: "reject" (default) raises for parameters of rank <= 1, naming them; "follow"
            updates each one with the rule of its nearest preceding weight (specs/agd.md §5.1).
        backend: "auto" | "cuda" | "triton" | "cpu" | "torch".

    After a step, `last_eta` and `last_G` hold that step's eta and G as 0-d device tensors.
    """

    _ONE_DEVICE_BECAUSE = "G spans every layer"

    def __init__(self, params, gain: float = 1.0, *, bias_mode: str = "reject", backend: str = "auto"):
        if bias_mode not in BIAS_MODES:
            raise ValueError(f"bias_mode must be one of {BIAS_MODES}; got {bias_mode!r}")
        if not _valid_gain(gain):
            raise ValueError(f"Invalid gain: {gain!r}; expected a finite number > 0")
        self.bias_mode = bias_mode
        self._plans: dict[tuple, _Plan] = {}
        self.last_eta: Tensor | None = None
        self.last_G: Tensor | None = None
        super().__init__(params, dict(gain=float(gain)), backend)

    def _check_group(self, group, index):
        gain = group["gain"]
        if not _valid_gain(gain):
            raise ValueError(f"Invalid gain in param_groups[{index}]: {gain!r}; expected a finite number > 0")
        seen_matrix = any(p.dim() >= 2 for g in self.param_groups[:-1] for p in g["params"])
        for pos, p in enumerate(group["params"]):
            if p.dim() >= 2:
                seen_matrix = True
                continue
            if self.bias_mode == "reject" or not seen_matrix:
                why = ("AGD normalises weights of rank >= 2 only; pass bias_mode='follow' to update it "
                       "with its preceding weight, or leave it out") if self.bias_mode == "reject" else \
                      "with bias_mode='follow' it needs a preceding weight of rank >= 2 to follow"
                raise ValueError(f"AGD cannot take {describe_param(group, index, pos, p)}: {why}")
        self._plans.clear()

    def _init_state(self, p, state, group):
        pass  # AGD keeps no per-parameter state

    def _plan(self, collected: list[list[Tensor]]) -> _Plan:
        # Shape, dtype and device are in the key because module.to()/.half() swap a parameter's data
        # in place: the same object, but new buckets and (for a new device) a new sv table.
        key = tuple(tuple((id(p), p.shape, p.dtype, p.device) for p in params) for params in collected)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        # A tensor listed twice (torch.optim only warns about duplicates inside a group) is one
        # weight: it counts once in L and G and is updated once (specs/agd.md §4 item 15).
        collected = _first_occurrences(collected)
        matrices = [p for params in collected for p in params if p.dim() >= 2]
        # Slot layout: matrices bucketed by (device, dtype) so each bucket's norms fill one contiguous range.
        start, norm_buckets, slot_of, sv = 0, [], {}, []
        for _, idx in group_by_device_dtype(matrices).items():
            bucket = [matrices[i] for i in idx]
            first = start
            for p in bucket:
                n = num_slices(p.shape)
                slot_of[id(p)] = (start, n)
                sv += [target_scale(p.shape)] * n
                start += n
            norm_buckets.append((bucket, first, start - first))
        # Each parameter follows the nearest weight at or before it in the order given (followers of a
        # weight without a gradient this step are not updated).
        owner_of, owner = {}, None
        for group in self.param_groups:
            for p in group["params"]:
                owner = p if p.dim() >= 2 else owner
                owner_of[id(p)] = owner
        update_buckets = []
        for gi, params in enumerate(collected):
            members = [p for p in params if id(owner_of[id(p)]) in slot_of]
            for _, idx in group_by_device_dtype(members).items():
                bucket = [members[i] for i in idx]
                slots = [slot_of[id(owner_of[id(p)])] for p in bucket]
                update_buckets.append((gi, bucket, [s for s, _ in slots], [n for _, n in slots]))
        device = matrices[0].device if matrices else torch.device("cpu")
        # non_blocking: a pageable host-to-device copy is staged without waiting for the device.
        plan = _Plan(len(matrices), norm_buckets, update_buckets,
                     torch.tensor(sv, dtype=torch.float32).to(device, non_blocking=True))
        if len(self._plans) >= 16:  # gradient patterns rarely vary; bound the cache anyway
            self._plans.clear()
        self._plans[key] = plan
        return plan

    @torch.no_grad()
    def step(self, closure=None) -> Tensor:
        """One AGD step. Returns eta (0-d fp32 tensor on the parameters' device, without the gain).

        A closure, if given, is evaluated with gradients enabled before the step; its loss is not
        returned (step() returns eta, specs/agd.md §5.6).
        """
        if closure is not None:
            with torch.enable_grad():
                closure()
        plan = self._plan(self._collect())
        if plan.depth == 0:
            device = next((p.device for g in self.param_groups for p in g["params"]), torch.device("cpu"))
            self.last_eta = self.last_G = torch.zeros((), device=device)
            return self.last_eta
        device = plan.slice_sv.device
        sumsq = torch.empty(plan.slice_sv.numel(), dtype=torch.float32, device=device)
        for bucket, first, count in plan.norm_buckets:
            ops.slice_sumsq_([p.grad for p in bucket], sumsq.narrow(0, first, count), backend=self.backend)
        grad_scale, found_inf = self._amp_scalars(device)
        eta = G = None
        for gi, params, starts, counts in plan.update_buckets:
            out = ops.agd_step_(params, [p.grad for p in params], sumsq, plan.slice_sv, starts, counts,
                                depth=plan.depth, gain=self.param_groups[gi]["gain"], grad_scale=grad_scale,
                                found_inf=found_inf, backend=self.backend)
            if eta is None:
                eta, G = out
        self.last_eta, self.last_G = eta, G
        return eta

    @torch.no_grad()
    def init_weights(self) -> None:
        """Orthogonal init at the target scale (specs/agd.md §5.9).

        Each weight of rank >= 2 gets an independent orthogonal draw per kernel tap (row-major over
        the trailing dims), then the whole tensor is multiplied by sv = √(out/(in·Π kernel)), so every
        tap has all singular values equal to sv. Parameters of rank <= 1 named '*bias' (when the
        optimizer was given named parameters) are zeroed; other ones keep their values.
        """
        for group in self.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            for p, name in zip(group["params"], names):
                if p.dim() >= 2:
                    # Drawn in fp32 (QR has no 16-bit kernels) and scaled before the one rounding
                    # to p's dtype; fp64 weights get an fp64 draw.
                    dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
                    tap = torch.empty(p.shape[0], p.shape[1], dtype=dtype, device=p.device)
                    sv = target_scale(p.shape)
                    for index in _taps(p.shape[2:]):
                        torch.nn.init.orthogonal_(tap)
                        p[(slice(None), slice(None), *index)] = tap.mul_(sv)
                elif name is not None and name.endswith("bias"):
                    p.zero_()


def _first_occurrences(collected: list[list[Tensor]]) -> list[list[Tensor]]:
    """`collected` with every tensor after its first appearance (in any group) removed."""
    seen: set[int] = set()
    out = []
    for params in collected:
        kept = []
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                kept.append(p)
        out.append(kept)
    return out


def _taps(kernel_shape) -> list[tuple[int, ...]]:
    """Every position of the trailing dims, row-major (for 4-D: kx outer, ky inner)."""
    return list(itertools.product(*map(range, kernel_shape)))
