"""YellowFin: momentum SGD that re-tunes its lr and momentum every step (docs/yellowfin.md §8).

A step is three ops, everything on the device: `yellowfin_stats_` per (device, dtype) bucket (the
global sums, rows of one fp64 buffer), one `yellowfin_tune_` (all scalar tuning in fp64, on the
tuner vector) and `yellowfin_apply_` per (group, device, dtype) bucket (ḡ EMA + momentum step):
3 launches for one bucket, no host sync.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .. import ops
from ..reference.yellowfin import SCRATCH, SLOT, SLOTS, new_tuner
from ..distributed import Partials, is_dtensor, shard_layout
from ._base import FusedOptimizer, check_non_negative, is_number

#: Tuner options: global, because the statistics span every group.
OPTIONS = ("clip_thresh", "beta", "curv_win_width", "zero_debias", "sparsity_debias", "auto_clip_fac",
           "force_non_inc_step", "h_max_log_smooth", "h_min_log_smooth", "adapt_clip", "stat_protect_fac",
           "catastrophic_move_thresh")
#: Where state_dict() keeps the tuner: in the per-parameter state of the first parameter.
TUNER_KEY = "yellowfin_tuner"
_FLAGS = ("zero_debias", "sparsity_debias", "force_non_inc_step", "h_max_log_smooth", "h_min_log_smooth",
          "adapt_clip")


def _positive(value: Any) -> bool:
    return is_number(value) and value > 0 and math.isfinite(value)


def check_options(options: dict[str, Any]) -> None:
    """ValueError naming the first bad tuner option."""
    if options.keys() != set(OPTIONS):
        raise ValueError(f"YellowFin options must be exactly {sorted(OPTIONS)}; got {sorted(options)}")
    beta = options["beta"]
    if not (is_number(beta) and 0.0 <= beta < 1.0):
        raise ValueError(f"Invalid beta: {beta!r}; expected 0 <= beta < 1")
    width = options["curv_win_width"]
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"Invalid curv_win_width: {width!r}; expected an int >= 1")
    for name in ("clip_thresh", "auto_clip_fac"):
        if options[name] is not None and not _positive(options[name]):
            raise ValueError(f"Invalid {name}: {options[name]!r}; expected a finite number > 0, or None (off)")
    for name in ("stat_protect_fac", "catastrophic_move_thresh"):
        if not _positive(options[name]):
            raise ValueError(f"Invalid {name}: {options[name]!r}; expected a finite number > 0")
    for name in _FLAGS:
        if not isinstance(options[name], bool):
            raise ValueError(f"Invalid {name}: {options[name]!r}; expected True or False")


class _StatsPlan(NamedTuple):
    """The statistics rows of a parameter set (which parameters have gradients), cached across steps."""
    key: tuple[int, ...]
    params: list[Tensor]  # held so the ids in `key` stay unique
    rows: list[list[int]]  # per stats row: positions in the flattened parameters with gradients
    partials: Partials
    numel: float  # elements of those parameters (global shapes)


class YellowFin(FusedOptimizer):
    """YellowFin (arXiv 1706.03471) as the PyTorch reference runs it, without host syncs.

    Args (the reference's names and defaults):
        lr, mu: the lr and momentum of step 0 (tuning starts at step 1). Default 1e-4 and 0.
        weight_decay: coupled L2 inside the momentum step (not in the statistics); per group.
        clip_thresh, auto_clip_fac: manual global-norm clip, or √h_max·auto_clip_fac from step 1.
        beta, curv_win_width, zero_debias, h_min_log_smooth, h_max_log_smooth: the statistics.
        sparsity_debias: scale h, C and D by the EMA of the gradient density (adds an nnz count).
        adapt_clip, stat_protect_fac, catastrophic_move_thresh: the three adaptive clips.
        force_non_inc_step: from step curv_win_width + 1, cap lr·‖g‖ at 2x its smallest smoothed value.
        delta_mu: accepted for the reference's signature and ignored, as there.
        backend: "auto" | "cuda" | "triton" | "cpu" | "torch".
        master_weights: per group; an fp32 copy of bf16/fp16 parameters in the state, which is fp32
            too (docs/mixed_precision.md).
        stochastic_rounding: per group, without master_weights; bf16 parameters are rounded
            stochastically from a transient fp32 copy, and their state is fp32 (docs/mixed_precision.md).
        telemetry: the apply kernels also sum per-layer statistics in their pass; `telemetry()` returns
            them with the tuner's lr, momentum, h_min, h_max, C and D (docs/telemetry.md).

    Tuner options are global (the statistics span every group); only weight_decay is per group. The
    tuned lr and μ apply to every group; `set_lr_factor` multiplies the lr. Not reproduced: the
    reference's in-memory/disk checkpoints and exception-and-restore path; a step whose gradients
    are not finite (or with GradScaler's found_inf) is skipped instead, statistics included.
    All parameters must live on one device. State: per parameter `grad_avg` (ḡ) and
    `momentum_buffer`; the fp64 tuner in the first parameter's state under "yellowfin_tuner", where
    torch.distributed.checkpoint keeps it (checkpoints with the older top-level "tuner" still load).
    """

    _STATE_SHAPES = {"grad_avg": True, "momentum_buffer": True}
    _ONE_DEVICE_BECAUSE = "its statistics span every group"

    def __init__(self, params, lr: float = 1e-4, mu: float = 0.0, clip_thresh: float | None = None,
                 weight_decay: float = 0.0, beta: float = 0.999, curv_win_width: int = 20, zero_debias: bool = True,
                 sparsity_debias: bool = False, delta_mu: float = 0.0, auto_clip_fac: float | None = None,
                 force_non_inc_step: bool = False, h_max_log_smooth: bool = True, h_min_log_smooth: bool = True,
                 adapt_clip: bool = True, stat_protect_fac: float = 100.0, catastrophic_move_thresh: float = 100.0,
                 *, backend: str = "auto", master_weights: bool = False, stochastic_rounding: bool = False,
                 telemetry: bool = False):
        if not (is_number(lr) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"Invalid learning rate: {lr!r}; expected a finite number >= 0 (the lr of step 0)")
        if not (is_number(mu) and 0.0 <= mu < 1.0):
            raise ValueError(f"Invalid mu: {mu!r}; expected 0 <= mu < 1 (the momentum of step 0)")
        self.options = dict(clip_thresh=clip_thresh, beta=beta, curv_win_width=curv_win_width, zero_debias=zero_debias,
                            sparsity_debias=sparsity_debias, auto_clip_fac=auto_clip_fac,
                            force_non_inc_step=force_non_inc_step, h_max_log_smooth=h_max_log_smooth,
                            h_min_log_smooth=h_min_log_smooth, adapt_clip=adapt_clip,
                            stat_protect_fac=stat_protect_fac, catastrophic_move_thresh=catastrophic_move_thresh)
        check_options(self.options)
        super().__init__(params, dict(weight_decay=weight_decay, master_weights=master_weights,
                                      stochastic_rounding=stochastic_rounding), backend, telemetry)
        self.tuner = new_tuner(float(lr), float(mu), curv_win_width, self.param_groups[0]["params"][0].device)
        self.last_lr: Tensor | None = None
        self.last_mu: Tensor | None = None
        self._plan: _StatsPlan | None = None
        self._stats: Tensor | None = None  # this step's sums, from phase 1 to phase 2

    def _check_hparams(self, hparams):
        check_non_negative("weight_decay value", hparams["weight_decay"])

    def _init_state(self, p, state, group):
        state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def set_lr_factor(self, factor: float) -> None:
        """Multiply the tuned lr by `factor` from the next step on (the reference's hand-tuning hook)."""
        if not (is_number(factor) and 0 <= factor < math.inf):
            raise ValueError(f"Invalid lr factor: {factor!r}; expected a finite number >= 0")
        self.tuner[SLOT["lr_factor"]].fill_(factor)  # a device fill, no host sync

    def get_lr_factor(self) -> Tensor:
        """The lr factor, a 0-d fp64 device tensor (a copy)."""
        return self.tuner[SLOT["lr_factor"]].clone()

    def _tune_args(self) -> dict[str, Any]:
        o = self.options
        args = {k: o[k] for k in ("beta", "curv_win_width", "stat_protect_fac", "catastrophic_move_thresh", *_FLAGS)}
        # The op takes <= 0 for "off" (its schema has no optional floats).
        args.update(clip_thresh=o["clip_thresh"] or 0.0, auto_clip_fac=o["auto_clip_fac"] or 0.0)
        return args

    # step() is the base class's. Phase 1 (`_partials`): yellowfin_stats_ per bucket, one row of global
    # sums each in one fp64 buffer, all-reduced by the base when parameters are sharded. Phase 2
    # (`_apply`): yellowfin_tune_ (all scalar tuning, on the tuner vector) and yellowfin_apply_ per
    # (group, device, dtype) bucket. With a closure, step() returns its loss as torch.optim does.
    def _stats_plan(self, collected) -> _StatsPlan:
        params = [p for found in collected for p in found.params]
        key = tuple(map(id, params))
        if self._plan is not None and self._plan.key == key:
            return self._plan
        # A row's sums must all count on this rank or all not (distributed.Partials), so a bucket of
        # sharded and replicated tensors splits in two rows.
        _, keep = shard_layout(params, self._describer(params))
        rows: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            model = self._masters.get(id(p))  # masters' 16-bit gradients make rows of their own
            rows.setdefault((p.device, p.dtype, is_dtensor(p), keep[i], None if model is None else model.dtype), []).append(i)
        row_list = list(rows.values())
        first = [params[idx[0]] for idx in row_list]
        layout = self._partials_layout("stats", first, [(4 * r, 4) for r in range(len(row_list))])
        self._plan = _StatsPlan(key, params, row_list, layout, float(sum(p.numel() for p in params)))
        return self._plan

    def _forget_working_copies(self, copies):
        super()._forget_working_copies(copies)
        self._plan = None  # it holds this step's parameter list

    def _partials(self, collected):
        params = [p for found in collected for p in found.params]
        if not params:
            return None
        states = [s for group, found in zip(self.param_groups, collected) for s in self._states(group, found.params)]
        plan = self._stats_plan(collected)
        grads = [g for found in collected for g in found.grads]
        stats = self._stats = torch.empty((len(plan.rows), 4), dtype=torch.float64, device=self.tuner.device)
        for row, idx in enumerate(plan.rows):
            ops.yellowfin_stats_([grads[i] for i in idx], [states[i]["grad_avg"] for i in idx],
                                 stats[row], backend=self.backend)
        return stats, plan.partials

    def _apply(self, collected):
        """yellowfin_tune_, then yellowfin_apply_ per bucket; returns (lr, μ) the momentum step applied,
        0-d fp64 tensors on the parameters' device (also kept as `last_lr`, `last_mu`). Without any
        gradient nothing changes."""
        if not any(found.params for found in collected):
            self.last_lr, self.last_mu = self.tuner[SLOT["applied_lr"]].clone(), self.tuner[SLOT["mu_t"]].clone()
            return self.last_lr, self.last_mu
        grad_scale, found_inf = self._amp_scalars(self.tuner.device)
        self.last_lr, self.last_mu = ops.yellowfin_tune_(
            self.tuner, self._stats, numel=self._plan.numel, **self._tune_args(),
            grad_scale=grad_scale, found_inf=found_inf, backend=self.backend)
        # Weight decay is the one per-group hyper-parameter.
        for gi, (group, found) in enumerate(zip(self.param_groups, collected)):
            for _, bucket, bucket_grads in self._bucket_grads(gi, *found):
                states = self._states(group, bucket)  # by the parameter, also where `bucket` holds masters
                ops.yellowfin_apply_(bucket, bucket_grads, [s["grad_avg"] for s in states],
                                     [s["momentum_buffer"] for s in states], self.tuner, self._stats,
                                     beta=self.options["beta"], weight_decay=group["weight_decay"],
                                     found_inf=found_inf, model_params=self._models(bucket),
                                     telemetry=self._telemetry_buffer(bucket), backend=self.backend)
        return self.last_lr, self.last_mu

    #: Telemetry's scalars: the tuner slots they read (docs/yellowfin.md §2: C the gradient variance, D the
    #: distance to the optimum; lr and momentum are what the step applied).
    TELEMETRY_SLOTS = {"lr": "applied_lr", "momentum": "mu_t", "h_min": "h_min", "h_max": "h_max",
                       "C": "grad_var", "D": "dist_to_opt"}

    def _telemetry_extras(self, params, device):
        # Stacked views of the slots: one device copy, no index list to upload.
        values = torch.stack([self.tuner[SLOT[slot]] for slot in self.TELEMETRY_SLOTS.values()]).to(device)
        return {}, dict(zip(self.TELEMETRY_SLOTS, values.unbind()))

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict, with the tuner in the per-parameter state of the first parameter
        (param_groups[0]['params'][0]) under "yellowfin_tuner": every tuner slot as a 0-d fp64 tensor
        (reference names), the window as "curv_win", and the tuner options; the window's write position
        is iter mod curv_win_width. Per-parameter state is what torch.distributed.checkpoint keeps
        (it drops top-level entries)."""
        state = super().state_dict()
        n = len(SLOTS)
        tuner = {name: self.tuner[i].clone() for i, name in enumerate(SLOTS) if name not in SCRATCH}
        tuner["curv_win"] = self.tuner[n:].clone()
        tuner["options"] = dict(self.options)
        first = state["param_groups"][0]["params"][0]
        # A new dict: torch's state_dict shares the per-parameter dicts with self.state.
        state["state"][first] = {**state["state"].get(first, {}), TUNER_KEY: tuner}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads parameters' state (checked first, see FusedOptimizer), the tuner, and the tuner
        options saved with it; also checkpoints of agd_kernels < 0.2, which kept the tuner at the top
        level under "tuner". Nothing changes when a check fails."""
        if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict):
            raise ValueError("state_dict must have a 'state' dict and a 'param_groups' list")
        state_dict, saved = _pop_tuner(state_dict)
        if not isinstance(saved, dict):
            raise ValueError(f"state_dict has no {TUNER_KEY!r} entry in the state of its first parameter (nor a "
                             "top-level 'tuner'): it was not saved by agd_kernels.YellowFin")
        options = saved.get("options")
        if not isinstance(options, dict):
            raise ValueError("the saved tuner has no 'options' dict")
        check_options(options)
        width = options["curv_win_width"]
        values = []
        for name in SLOTS:
            if name in SCRATCH:
                values.append(torch.zeros(1, dtype=torch.float64))
                continue
            value = saved.get(name)
            if not isinstance(value, Tensor) or value.numel() != 1:
                raise ValueError(f"the saved tuner's {name!r} must be a one-element tensor; got {value!r}")
            values.append(value.detach().reshape(1))
        window = saved.get("curv_win")
        if not isinstance(window, Tensor) or window.shape != (width,):
            got = tuple(window.shape) if isinstance(window, Tensor) else type(window).__name__
            raise ValueError(f"the saved tuner's 'curv_win' has shape {got}; expected ({width},) "
                             f"(curv_win_width={width})")
        # Tuner values keep float64 (never the parameters' dtype) and move to the parameters' device.
        tuner = torch.cat([v.to(self.tuner.device, torch.float64) for v in (*values, window.detach())])
        super().load_state_dict(state_dict)
        self.options = dict(options)
        self.tuner = tuner


def _pop_tuner(state_dict: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(`state_dict` without the tuner, the tuner's dict or None); the caller's dicts are not changed."""
    if "tuner" in state_dict:  # the layout before the tuner moved into per-parameter state
        return {k: v for k, v in state_dict.items() if k != "tuner"}, state_dict["tuner"]
    groups = state_dict.get("param_groups")
    first = groups[0]["params"][0] if isinstance(groups, list) and groups and groups[0].get("params") else None
    entry = state_dict["state"].get(first)
    if not isinstance(entry, dict) or TUNER_KEY not in entry:
        return state_dict, None
    rest = {k: v for k, v in entry.items() if k != TUNER_KEY}
    state = {k: v for k, v in state_dict["state"].items() if k != first}
    if rest:
        state[first] = rest
    return {**state_dict, "state": state}, entry[TUNER_KEY]
