"""AGD: automatic gradient descent (arXiv 2304.05187) without a learning rate, fused and sync-free.

Follows docs/agd.md §5. A step is two launches per (device, dtype) bucket: the per-tap gradient
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
from ..distributed import Partials, distribute_tensor, is_dtensor
from ._base import FusedOptimizer, describe_param, is_number

BIAS_MODES = ("reject", "follow")


def _valid_gain(gain) -> bool:
    return is_number(gain) and math.isfinite(gain) and gain > 0


@dataclass
class _Plan:
    """Everything about a step that depends only on which parameters have gradients. Tensors are named
    by (group, position in that group's collected lists), so a step reads each gradient once (collect)."""
    depth: int
    norm_buckets: list[tuple[list[tuple[int, int]], int, int]]  # (matrices, first slot, slot count)
    update_buckets: list[tuple[int, list[int], list[int], list[int]]]  # (group, positions, starts, counts)
    slice_sv: Tensor
    partials: Partials  # how the per-tap sums are completed across ranks (sharded parameters)


def _check_sharding(p: Tensor, group: dict, group_index: int) -> None:
    """AGD's per-tap sums add up over shards of dims 0 and 1 (a tap spans both); a shard of a tap dim
    (>= 2) would hold only some taps of the slot layout, which is built from the global shape.
    `p` is the model's parameter (its master has the same placements)."""
    if not is_dtensor(p):
        return
    for placement in p.placements:
        if placement.is_shard() and placement.dim >= 2:
            where = describe_param(group, group_index, next(k for k, q in enumerate(group["params"]) if q is p), p)
            raise ValueError(f"AGD cannot take {where}: it is sharded on dim {placement.dim}, a kernel-tap dim; "
                             "AGD normalises each tap as a whole, so shard weights on dim 0 or 1 only")


class AGD(FusedOptimizer):
    """Automatic gradient descent: no learning rate, no momentum, no state.

    Args:
        params: tensors, named parameters or param groups. Rank >= 2 tensors are the weights AGD
            normalises (per kernel tap for convolutions).
        gain: multiplies the update only (not G, not the returned eta); per group. Default 1.
        lr: a second factor of the update, per group, default 1.0, so that an LR scheduler (which
            multiplies each group's "lr") scales AGD's step: under Hugging Face Trainer's default
            linear warmup and decay the update is gain·lr·(eta/depth)·..., ramping 0 -> 1 -> 0. A
            finite number >= 0 (0 freezes the group); saved and loaded with the param groups (a
            checkpoint without it loads as 1.0). Not a learning rate AGD needs: leave it at 1.
        bias_mode: "reject" (default) raises for parameters of rank <= 1, naming them; "follow"
            updates each one with the rule of its nearest preceding weight (docs/agd.md §5.1).
        backend: "auto" | "cuda" | "triton" | "cpu" | "torch".
        master_weights: per group; bf16/fp16 weights are updated through an fp32 copy kept in the
            state (their only state), rounded once to the weight (docs/mixed_precision.md).
        stochastic_rounding: per group, without master_weights; bf16 weights are updated through a
            transient fp32 copy rounded stochastically to the weight (docs/mixed_precision.md).
        telemetry: the update kernel also sums per-layer statistics in its pass; `telemetry()` returns
            them with the step's eta and G as scalars (docs/telemetry.md).

    After a step, `last_eta` and `last_G` hold that step's eta and G as 0-d device tensors.
    """

    _ONE_DEVICE_BECAUSE = "G spans every layer"

    def __init__(self, params, gain: float = 1.0, *, lr: float = 1.0, bias_mode: str = "reject",
                 backend: str = "auto", master_weights: bool = False, stochastic_rounding: bool = False,
                 telemetry: bool = False):
        if bias_mode not in BIAS_MODES:
            raise ValueError(f"bias_mode must be one of {BIAS_MODES}; got {bias_mode!r}")
        if not _valid_gain(gain):
            raise ValueError(f"Invalid gain: {gain!r}; expected a finite number > 0")
        self.bias_mode = bias_mode
        self._plans: dict[tuple, _Plan] = {}
        self._step_plan: _Plan | None = None  # this step's plan and sums, from phase 1 to phase 2
        self._step_sumsq: Tensor | None = None
        self.last_eta: Tensor | None = None
        self.last_G: Tensor | None = None
        super().__init__(params, dict(gain=float(gain), lr=lr, master_weights=master_weights,
                                      stochastic_rounding=stochastic_rounding), backend, telemetry)

    def _check_hparams(self, hparams):
        lr = hparams.get("lr", 1.0)
        if not (is_number(lr) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"Invalid learning rate: {lr!r}; AGD's lr multiplies its gain (default 1.0) and "
                             "must be a finite Python number >= 0 (a tensor lr is not supported)")

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
        # in place: the same object, but new buckets and (for a new device) a new sv table. A parameter is
        # named by its own id, not its stand-in's: stochastic rounding's working copies are new every step.
        key = tuple(tuple((id(self._param_of(p)), p.shape, p.dtype, p.device) for p in params)
                    for params in collected)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        # A tensor listed twice (torch.optim only warns about duplicates inside a group) is one
        # weight: it counts once in L and G and is updated once (docs/agd.md §4 item 15).
        first = _first_occurrences(collected)
        matrices = [(gi, i) for gi, params in enumerate(collected) for i in first[gi] if params[i].dim() >= 2]
        # Which weight a parameter follows is a relation between the model's parameters; with master
        # weights `collected` holds their masters.
        model = [[self._param_of(t) for t in params] for params in collected]
        for gi, i in matrices:
            _check_sharding(model[gi][i], self.param_groups[gi], gi)
        # Slot layout: matrices bucketed by (device, dtype) so each bucket's norms fill one contiguous
        # range. Shapes are global (DTensor.shape), so every rank builds the same layout.
        start, norm_buckets, slot_of, sv, spans = 0, [], {}, [], []
        for _, idx in group_by_device_dtype([collected[gi][i] for gi, i in matrices], self._masters).items():
            bucket = [matrices[k] for k in idx]
            bucket_first = start
            for gi, i in bucket:
                p = collected[gi][i]
                n = num_slices(p.shape)
                slot_of[id(model[gi][i])] = (start, n)
                spans.append((start, n))
                sv += [target_scale(p.shape)] * n
                start += n
            norm_buckets.append((bucket, bucket_first, start - bucket_first))
        # Each parameter follows the nearest weight at or before it in the order given (followers of a
        # weight without a gradient this step are not updated).
        owner_of, owner = {}, None
        for group in self.param_groups:
            for p in group["params"]:
                owner = p if p.dim() >= 2 else owner
                owner_of[id(p)] = owner
        update_buckets = []
        for gi, params in enumerate(collected):
            members = [i for i in first[gi] if id(owner_of[id(model[gi][i])]) in slot_of]
            for _, idx in group_by_device_dtype([params[i] for i in members], self._masters).items():
                positions = [members[k] for k in idx]
                slots = [slot_of[id(owner_of[id(model[gi][i])])] for i in positions]
                update_buckets.append((gi, positions, [s for s, _ in slots], [n for _, n in slots]))
        ordered = [collected[gi][i] for bucket, _, _ in norm_buckets for gi, i in bucket]
        device = ordered[0].device if ordered else torch.device("cpu")
        # non_blocking: a pageable host-to-device copy is staged without waiting for the device.
        plan = _Plan(len(matrices), norm_buckets, update_buckets,
                     torch.tensor(sv, dtype=torch.float32).to(device, non_blocking=True),
                     self._partials_layout("taps", ordered, spans))
        if len(self._plans) >= 16:  # gradient patterns rarely vary; bound the cache anyway
            self._plans.clear()
        self._plans[key] = plan
        return plan

    # step() is the base class's. Phase 1 (`_partials`): the per-tap sums of squares of every weight
    # gradient into one fp32 buffer, all-reduced by the base when weights are sharded. Phase 2
    # (`_apply`): agd_step_, which computes G and eta from that buffer on the device. With a closure,
    # the closure runs first and step() still returns eta (docs/agd.md §5.6).
    _RESULT_OVER_LOSS = True

    def _partials(self, collected):
        plan = self._step_plan = self._plan([found.params for found in collected])
        if plan.depth == 0:
            return None
        grads = [found.grads for found in collected]
        sumsq = self._step_sumsq = torch.empty(plan.slice_sv.numel(), dtype=torch.float32,
                                               device=plan.slice_sv.device)
        for bucket, first, count in plan.norm_buckets:
            ops.slice_sumsq_([grads[gi][i] for gi, i in bucket], sumsq.narrow(0, first, count), backend=self.backend)
        return sumsq, plan.partials

    def _apply(self, collected) -> Tensor:
        """agd_step_ per (group, device, dtype) bucket; returns eta (0-d fp32 tensor on the parameters'
        device, without the gain)."""
        plan = self._step_plan
        if plan.depth == 0:
            device = next((p.device for g in self.param_groups for p in g["params"]), torch.device("cpu"))
            self.last_eta = self.last_G = torch.zeros((), device=device)
            return self.last_eta
        grad_scale, found_inf = self._amp_scalars(plan.slice_sv.device)
        eta = G = None
        for gi, positions, starts, counts in plan.update_buckets:
            params, grads = collected[gi].params, collected[gi].grads
            bucket = [params[i] for i in positions]
            out = ops.agd_step_(bucket, [grads[i] for i in positions], self._step_sumsq,
                                plan.slice_sv, starts, counts, depth=plan.depth,
                                gain=self.param_groups[gi]["gain"] * self.param_groups[gi]["lr"],
                                grad_scale=grad_scale, found_inf=found_inf, model_params=self._models(bucket),
                                telemetry=self._telemetry_buffer(bucket), backend=self.backend)
            if eta is None:
                eta, G = out
        self.last_eta, self.last_G = eta, G
        return eta

    def _telemetry_extras(self, params, device):
        """eta and G of the last step (0 for a step skipped by found_inf, as step() returns)."""
        return {}, {"eta": self.last_eta.to(device), "G": self.last_G.to(device)}

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group.setdefault("lr", 1.0)  # saved before AGD groups had an lr

    @torch.no_grad()
    def init_weights(self) -> None:
        """Orthogonal init at the target scale (docs/agd.md §5.9).

        Each weight of rank >= 2 gets an independent orthogonal draw per kernel tap (row-major over
        the trailing dims), then the whole tensor is multiplied by sv = √(out/(in·Π kernel)), so every
        tap has all singular values equal to sv. Parameters of rank <= 1 named '*bias' (when the
        optimizer was given named parameters) are zeroed; other ones keep their values. Masters that
        steps made (master_weights) take the new values.

        A sharded weight (DTensor) gets the same draw as the whole tensor would in one process: each
        rank draws the full tensor and keeps the shard of rank 0's draw (distribute_tensor), so the
        result does not depend on the ranks' RNG states agreeing.
        """
        for group in self.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            for p, name in zip(group["params"], names):
                if p.dim() >= 2:
                    full = _orthogonal(p.shape, p.dtype, p.device)
                    if is_dtensor(p):
                        full = distribute_tensor(full, p.device_mesh, p.placements)
                    p.copy_(full)
                elif name is not None and name.endswith("bias"):
                    p.zero_()
        self.refresh_master_weights()


def _orthogonal(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A tensor of `shape` whose every tap is an independent orthogonal draw times the target scale."""
    # Drawn in fp32 (QR has no 16-bit kernels) and scaled before the one rounding to the parameter's
    # dtype (by the caller's copy); fp64 weights get an fp64 draw.
    draw_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    full = torch.empty(shape, dtype=draw_dtype, device=device)
    tap = torch.empty(shape[0], shape[1], dtype=draw_dtype, device=device)
    sv = target_scale(shape)
    for index in _taps(shape[2:]):
        torch.nn.init.orthogonal_(tap)
        full[(slice(None), slice(None), *index)] = tap.mul_(sv)
    return full


def _first_occurrences(collected: list[list[Tensor]]) -> list[list[int]]:
    """Per group, the positions in `collected` of the tensors at their first appearance (in any group)."""
    seen: set[int] = set()
    out = []
    for params in collected:
        kept = []
        for i, p in enumerate(params):
            if id(p) not in seen:
                seen.add(id(p))
                kept.append(i)
        out.append(kept)
    return out


def _taps(kernel_shape) -> list[tuple[int, ...]]:
    """Every position of the trailing dims, row-major (for 4-D: kx outer, ky inner)."""
    return list(itertools.product(*map(range, kernel_shape)))
