"""LAMB: apex FusedLAMB semantics by default, the paper/TF-addons algorithm with variant="paper".

Follows docs/lamb.md §3. A step is the global gradient-norm pass (`slice_sumsq_` over every
group's gradients into one fp32 buffer, one launch per (device, dtype) bucket), then per (group,
device, dtype) bucket `lamb_moments_` (Σp², Σu² per tensor into one fp64 buffer for all buckets) and
`lamb_apply_`: <= 3 launches per bucket, no host sync. Sharded parameters: the two buffers are each
completed by one all-reduce (docs/distributed.md), the first only when the clip is on.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import ops
from ..reference.lamb import trust_ratio
from ..reference.sumsq import num_slices
from ._base import FusedOptimizer, check_betas, check_non_negative, is_number

VARIANTS = ("apex", "paper")
#: Group keys that exist in one variant only; the other variant rejects them instead of ignoring them.
_VARIANT_KEYS = {"apex": ("adam_w_mode", "use_nvlamb"),
                 "paper": ("exclude_from_weight_decay", "exclude_from_layer_adaptation", "phi_min", "phi_max")}


def _check_max_grad_norm(value: Any) -> None:
    if value is None:
        return
    if not (is_number(value) and value > 0):
        raise ValueError(f"Invalid max_grad_norm: {value!r}; expected a number > 0, or None to disable the "
                         "global gradient clip")


class LAMB(FusedOptimizer):
    """Layer-wise adaptive moments (arXiv 1904.00962) as apex FusedLAMB computes it.

    Args (apex names and defaults):
        lr, betas, eps (added outside √v̂), weight_decay, bias_correction, grad_averaging (β3 = 1 − β1,
            else 1): per group.
        adam_w_mode: True adds weight_decay·p to the update u; False adds it to the clipped gradient
            before the moments (L2). Per group, variant="apex" only.
        use_nvlamb: apply the trust ratio to weight_decay = 0 groups too (apex skips them). Per
            group, variant="apex" only.
        max_grad_norm: the global clip over all groups, k = max(1, N/max_grad_norm) with N the norm of
            every gradient. One value for the whole optimizer (a group with another value raises);
            None disables it. Default "auto": 1.0 for variant="apex", None for variant="paper".
        amsgrad: accepted for apex's signature; True raises.
        variant: "apex" (default) or "paper": no global clip by default, the trust ratio on every
            group except those with exclude_from_layer_adaptation=True, weight_decay·p in u except for
            groups with exclude_from_weight_decay=True, and φ(z) = clamp(z, phi_min, phi_max) on ‖p‖
            (default: identity). Exclusions are per-group flags, never name matching.
        backend: "auto" | "cuda" | "triton" | "cpu" | "torch".
        master_weights: per group; an fp32 copy of bf16/fp16 parameters in the state, which is fp32
            too (docs/mixed_precision.md).
        stochastic_rounding: per group, without master_weights; bf16 parameters are rounded
            stochastically from a transient fp32 copy, and their state is fp32 (docs/mixed_precision.md).
        telemetry: the kernels also sum per-layer statistics in their passes; `telemetry()` returns them
            with each layer's trust ratio (docs/telemetry.md).

    State per parameter: `step` (0-d fp32, advanced only when the parameter has a gradient; apex
    keeps one per group), `exp_avg`, `exp_avg_sq`. Gradients are not overwritten (apex writes u
    into them). All parameters must live on one device: the clip needs one global norm.
    """

    _STATE_SHAPES = {"exp_avg": True, "exp_avg_sq": True}
    _ONE_DEVICE_BECAUSE = "the clip uses one global gradient norm"

    def __init__(self, params, lr: float | Tensor = 1e-3, bias_correction: bool = True,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.01,
                 amsgrad: bool = False, adam_w_mode: bool = True, grad_averaging: bool = True, *,
                 max_grad_norm: float | None | str = "auto", use_nvlamb: bool = False, variant: str = "apex",
                 phi_min: float = 0.0, phi_max: float = math.inf, backend: str = "auto",
                 master_weights: bool = False, stochastic_rounding: bool = False, telemetry: bool = False):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
        if amsgrad:
            raise ValueError("amsgrad=True is not supported by LAMB (apex FusedLAMB rejects it too)")
        check_betas(betas)
        if max_grad_norm == "auto":
            max_grad_norm = 1.0 if variant == "apex" else None
        self.variant = variant
        defaults = dict(lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps,
                        weight_decay=weight_decay, bias_correction=bias_correction, grad_averaging=grad_averaging,
                        max_grad_norm=max_grad_norm, master_weights=master_weights,
                        stochastic_rounding=stochastic_rounding)
        if variant == "apex":
            if phi_min != 0.0 or phi_max != math.inf:
                raise ValueError("phi_min/phi_max (the trust-ratio clamp) are options of variant='paper'; "
                                 "apex applies no clamp")
            defaults.update(adam_w_mode=adam_w_mode, use_nvlamb=use_nvlamb)
        else:
            if not adam_w_mode or use_nvlamb:
                raise ValueError("adam_w_mode=False and use_nvlamb=True are options of variant='apex'; the paper "
                                 "variant adds weight decay to u and adapts every group not excluded per group")
            defaults.update(exclude_from_weight_decay=False, exclude_from_layer_adaptation=False,
                            phi_min=phi_min, phi_max=phi_max)
        self._grad_sumsq: Tensor | None = None  # this step's global-norm buffer (see _partials)
        self._clip_at = math.inf
        self._step_launches: list[tuple] = []  # this step's buckets and buffer, from phase 1 to phase 2
        self._step_norms: Tensor | None = None
        super().__init__(params, defaults, backend, telemetry)

    def _check_hparams(self, hparams):
        check_non_negative("learning rate", hparams["lr"])
        check_non_negative("epsilon value", hparams["eps"])
        check_betas(hparams["betas"])
        check_non_negative("weight_decay value", hparams["weight_decay"])
        if hparams.get("amsgrad"):
            raise ValueError("amsgrad=True is not supported by LAMB (apex FusedLAMB rejects it too)")
        _check_max_grad_norm(hparams.get("max_grad_norm"))
        other = VARIANTS[1 - VARIANTS.index(self.variant)]
        for key in _VARIANT_KEYS[other]:
            if key in hparams:
                raise ValueError(f"{key} is an option of LAMB variant={other!r}; this optimizer is "
                                 f"variant={self.variant!r}")
        if self.variant == "paper":
            lo, hi = hparams["phi_min"], hparams["phi_max"]
            if not 0.0 <= lo <= hi:
                raise ValueError(f"Invalid phi_min/phi_max: ({lo!r}, {hi!r}); expected 0 <= phi_min <= phi_max")

    def _check_group(self, group, index):
        mine, everyone = group["max_grad_norm"], self.defaults["max_grad_norm"]
        if mine != everyone:
            raise ValueError(f"param_groups[{index}] sets max_grad_norm={mine!r}, but max_grad_norm is global "
                             f"(one clip over all groups, as in apex): pass it to the constructor (now {everyone!r})")

    def _init_state(self, p, state, group):
        state["step"] = self._new_step(p)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _clip_norm(self, collected) -> None:
        """The global-norm pass over every group's gradients, completed across ranks when parameters
        are sharded (the clip's own all-reduce: the clip factor scales the moments, so it must be known
        before them): it must finish before the first lamb_moments_ of any group reads it."""
        values = {g["max_grad_norm"] for g in self.param_groups}
        if len(values) > 1:
            raise ValueError(f"max_grad_norm is global, but the param groups hold {sorted(values, key=str)}; "
                             "set one value in every group")
        params = [p for found in collected for p in found.params]
        grads = [g for found in collected for g in found.grads]
        self._clip_at = math.inf if None in values else values.pop()
        if self._clip_at == math.inf or not params:
            # No clip: nothing reads the norm, so the pass is skipped (an empty sum is 0).
            device = params[0].device if params else torch.device("cpu")
            self._grad_sumsq = torch.zeros(0, dtype=torch.float32, device=device)
            return
        # Each gradient has its parameter's device and dtype (checked when collected): the parameters'
        # (cached) buckets are the gradients' buckets.
        buckets = self._bucket_grads("all groups", params, grads)
        ordered, spans, ranges, start = [], [], [], 0
        for _, bucket, bucket_grads in buckets:
            first = start
            for p in bucket:
                ordered.append(p)
                spans.append((start, num_slices(p.shape)))
                start += spans[-1][1]
            ranges.append((bucket_grads, first, start - first))
        self._grad_sumsq = torch.empty(start, dtype=torch.float32, device=params[0].device)
        for bucket_grads, first, size in ranges:
            ops.slice_sumsq_(bucket_grads, self._grad_sumsq.narrow(0, first, size), backend=self.backend)
        self._partials_layout("clip", ordered, spans).reduce_(self._grad_sumsq)

    # step() is the base class's. Phase 1 (`_partials`): the clip's gradient norm (its own all-reduce
    # when sharded), then lamb_moments_ per (group, device, dtype) bucket, writing Σp² and Σu² of every
    # tensor into one fp64 buffer, which the base all-reduces when sharded. Phase 2 (`_apply`):
    # lamb_apply_ per bucket, the trust ratios from the completed sums. 3 launches per bucket.
    def _partials(self, collected):
        self._clip_norm(collected)
        launches, tensors, spans, start = [], [], [], 0
        for gi, (group, found) in enumerate(zip(self.param_groups, collected)):
            for device, params, grads in self._bucket_grads(gi, *found):
                # One telemetry buffer per bucket: lamb_moments_ adds the weight and gradient sums,
                # lamb_apply_ the update's.
                launches.append((gi, device, params, grads, self._states(group, params), start,
                                 self._telemetry_buffer(params)))
                tensors += params
                spans += [(start + 2 * i, 2) for i in range(len(params))]
                start += 2 * len(params)
        self._step_launches = launches
        if not launches:
            return None
        # Σp² and Σu² per tensor (docs/lamb.md §3 item 8), fp64 as the kernels accumulate them.
        norms = self._step_norms = torch.empty(start, dtype=torch.float64, device=tensors[0].device)
        for gi, device, params, grads, states, first, tel in launches:
            group = self.param_groups[gi]
            grad_scale, found_inf = self._amp_scalars(device)
            ops.lamb_moments_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                              [s["step"] for s in states], self._grad_sumsq, norms.narrow(0, first, 2 * len(params)),
                              **self._moment_args(group), grad_scale=grad_scale, found_inf=found_inf,
                              telemetry=tel, backend=self.backend)
        return norms, self._partials_layout("norms", tensors, spans)

    def _apply(self, collected):
        for gi, device, params, grads, states, first, tel in self._step_launches:
            group = self.param_groups[gi]
            grad_scale, found_inf = self._amp_scalars(device)
            use_trust_ratio, phi_min, phi_max = self._layer_adaptation(group)
            ops.lamb_apply_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                            [s["step"] for s in states], self._lr_tensor(gi, group, device, params[0].dtype),
                            self._grad_sumsq,
                            self._step_norms.narrow(0, first, 2 * len(params)), **self._moment_args(group),
                            use_trust_ratio=use_trust_ratio, phi_min=phi_min, phi_max=phi_max,
                            grad_scale=grad_scale, found_inf=found_inf, model_params=self._models(params),
                            telemetry=tel, backend=self.backend)
        return None

    def _layer_adaptation(self, group) -> tuple[bool, float, float]:
        """(use_trust_ratio, phi_min, phi_max) of one group."""
        if self.variant == "paper":
            return not group["exclude_from_layer_adaptation"], group["phi_min"], group["phi_max"]
        # apex: layer adaptation only where weight decay is on, unless NVLAMB
        return group["use_nvlamb"] or group["weight_decay"] != 0, 0.0, math.inf

    def _telemetry_extras(self, params, device):
        """Per layer, the trust ratio the last step applied (1 where the group does not adapt; NaN for a
        parameter without a gradient or a step skipped by found_inf), from the completed norms buffer."""
        ratio = torch.full((len(params),), math.nan, dtype=torch.float64, device=device)
        if self._step_launches:
            row_of = {id(p): i for i, p in enumerate(params)}
            rows, values = [], []
            # The step's telemetry calls are its launches, in order, with the parameters they stand for
            # (masters and stochastic rounding's working copies mapped back when the step ran).
            for (gi, _, bucket, _, _, first, _), (models, _) in zip(self._step_launches, self._step_telemetry.calls,
                                                                    strict=True):
                use_trust_ratio, phi_min, phi_max = self._layer_adaptation(self.param_groups[gi])
                pairs = self._step_norms.narrow(0, first, 2 * len(bucket)).view(-1, 2).double()
                r = trust_ratio(pairs[:, 0], pairs[:, 1], phi_min, phi_max) if use_trust_ratio else \
                    torch.ones(len(bucket), dtype=torch.float64, device=pairs.device)
                rows += [row_of[id(p)] for p in models]
                values.append(r.to(device))
            ratio.index_copy_(0, torch.tensor(rows, dtype=torch.long).to(device, non_blocking=True), torch.cat(values))
            _, found_inf = self._amp_scalars(device)
            if found_inf is not None:  # a skipped step wrote no norms
                ratio = torch.where(found_inf != 0, math.nan, ratio)
        return {"trust_ratio": ratio}, {}

    def _moment_args(self, group) -> dict[str, Any]:
        """The hyper-parameters lamb_moments_ and lamb_apply_ share, for one group."""
        weight_decay = group["weight_decay"]
        if self.variant == "paper":
            weight_decay = 0.0 if group["exclude_from_weight_decay"] else weight_decay
            adam_w_mode = True
        else:
            adam_w_mode = group["adam_w_mode"]
        beta1, beta2 = group["betas"]
        return dict(max_grad_norm=self._clip_at, beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=weight_decay,
                    bias_correction=group["bias_correction"], grad_averaging=group["grad_averaging"],
                    adam_w_mode=adam_w_mode)

    def _check_loadable(self, state_dict: dict[str, Any]) -> None:
        super()._check_loadable(state_dict)  # every group's hyper-parameters, max_grad_norm included
        default = self.defaults["max_grad_norm"]
        values = {g.get("max_grad_norm", default) for g in state_dict["param_groups"]}
        if len(values) > 1:
            raise ValueError(f"loaded param groups hold different max_grad_norm values "
                             f"{sorted(values, key=str)}; LAMB's clip is global")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's load (checked first, see FusedOptimizer; the saved groups must share one
        max_grad_norm), after which the saved max_grad_norm becomes the optimizer's."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self.defaults["max_grad_norm"] = self.param_groups[0]["max_grad_norm"]
