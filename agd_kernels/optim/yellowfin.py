"""YellowFin: momentum SGD that re-tunes its lr and momentum every step (specs/yellowfin.md §8).

A step is three ops, everything on the device: `yellowfin_stats_` per (device, dtype) bucket (the
global sums, rows of one fp64 buffer), one `yellowfin_tune_` (all scalar tuning in fp64, on the
tuner vector) and `yellowfin_apply_` per (group, device, dtype) bucket (ḡ EMA + momentum step):
3 launches for one bucket, no host sync.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import ops
from ..reference.yellowfin import SCRATCH, SLOT, SLOTS, new_tuner
from ._base import FusedOptimizer, check_non_negative, is_number

#: Tuner options: global, because the statistics span every group.
OPTIONS = ("clip_thresh", "beta", "curv_win_width", "zero_debias", "sparsity_debias", "auto_clip_fac",
           "force_non_inc_step", "h_max_log_smooth", "h_min_log_smooth", "adapt_clip", "stat_protect_fac",
           "catastrophic_move_thresh")
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

    Tuner options are global (the statistics span every group); only weight_decay is per group. The
    tuned lr and μ apply to every group; `set_lr_factor` multiplies the lr. Not reproduced: the
    reference's in-memory/disk checkpoints and exception-and-restore path; a step whose gradients
    are not finite (or with GradScaler's found_inf) is skipped instead, statistics included.
    All parameters must live on one device. State: per parameter `grad_avg` (ḡ) and
    `momentum_buffer`; globally the fp64 tuner, saved under state_dict()["tuner"].
    """

    _STATE_SHAPES = {"grad_avg": True, "momentum_buffer": True}
    _ONE_DEVICE_BECAUSE = "its statistics span every group"

    def __init__(self, params, lr: float = 1e-4, mu: float = 0.0, clip_thresh: float | None = None,
                 weight_decay: float = 0.0, beta: float = 0.999, curv_win_width: int = 20, zero_debias: bool = True,
                 sparsity_debias: bool = False, delta_mu: float = 0.0, auto_clip_fac: float | None = None,
                 force_non_inc_step: bool = False, h_max_log_smooth: bool = True, h_min_log_smooth: bool = True,
                 adapt_clip: bool = True, stat_protect_fac: float = 100.0, catastrophic_move_thresh: float = 100.0,
                 *, backend: str = "auto"):
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
        super().__init__(params, dict(weight_decay=weight_decay), backend)
        self.tuner = new_tuner(float(lr), float(mu), curv_win_width, self.param_groups[0]["params"][0].device)
        self.last_lr: Tensor | None = None
        self.last_mu: Tensor | None = None

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

    @torch.no_grad()
    def step(self, closure=None):
        """One YellowFin step. Returns (lr, μ) the momentum step applied, 0-d fp64 tensors on the
        parameters' device (also kept as `last_lr`, `last_mu`); with a closure, returns its loss as
        torch.optim does. Without any gradient nothing changes."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        collected = self._collect()
        params = [p for group_params in collected for p in group_params]
        if not params:
            self.last_lr, self.last_mu = self.tuner[SLOT["applied_lr"]].clone(), self.tuner[SLOT["mu_t"]].clone()
            return (self.last_lr, self.last_mu) if closure is None else loss
        for group, group_params in zip(self.param_groups, collected):
            self._states(group, group_params)
        device = self.tuner.device
        # Pass A: one row of sums per (device, dtype) bucket, across groups.
        buckets = self._buckets("all groups", params)
        stats = torch.empty((len(buckets), 4), dtype=torch.float64, device=device)
        for row, (_, bucket) in enumerate(buckets):
            ops.yellowfin_stats_([p.grad for p in bucket], [self.state[p]["grad_avg"] for p in bucket],
                                 stats[row], backend=self.backend)
        grad_scale, found_inf = self._amp_scalars(device)
        self.last_lr, self.last_mu = ops.yellowfin_tune_(
            self.tuner, stats, numel=float(sum(p.numel() for p in params)), **self._tune_args(),
            grad_scale=grad_scale, found_inf=found_inf, backend=self.backend)
        # Pass B per group: weight decay is the one per-group hyper-parameter.
        for gi, (group, group_params) in enumerate(zip(self.param_groups, collected)):
            for _, bucket in self._buckets(gi, group_params):
                states = [self.state[p] for p in bucket]
                ops.yellowfin_apply_(bucket, [p.grad for p in bucket], [s["grad_avg"] for s in states],
                                     [s["momentum_buffer"] for s in states], self.tuner, stats,
                                     beta=self.options["beta"], weight_decay=group["weight_decay"],
                                     found_inf=found_inf, backend=self.backend)
        return (self.last_lr, self.last_mu) if closure is None else loss

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict plus "tuner": every tuner slot as a 0-d fp64 tensor (reference
        names), the window as "curv_win", and the tuner options; the window's write position is
        iter mod curv_win_width."""
        state = super().state_dict()
        n = len(SLOTS)
        tuner = {name: self.tuner[i].clone() for i, name in enumerate(SLOTS) if name not in SCRATCH}
        tuner["curv_win"] = self.tuner[n:].clone()
        tuner["options"] = dict(self.options)
        state["tuner"] = tuner
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads parameters' state (checked first, see FusedOptimizer), the tuner, and the tuner
        options saved with it. Nothing changes when a check fails."""
        saved = state_dict.get("tuner") if isinstance(state_dict, dict) else None
        if not isinstance(saved, dict):
            raise ValueError("state_dict has no 'tuner' entry: it was not saved by agd_kernels.YellowFin")
        options = saved.get("options")
        if not isinstance(options, dict):
            raise ValueError("state_dict['tuner'] has no 'options' dict")
        check_options(options)
        width = options["curv_win_width"]
        values = []
        for name in SLOTS:
            if name in SCRATCH:
                values.append(torch.zeros(1, dtype=torch.float64))
                continue
            value = saved.get(name)
            if not isinstance(value, Tensor) or value.numel() != 1:
                raise ValueError(f"state_dict['tuner'][{name!r}] must be a one-element tensor; got {value!r}")
            values.append(value.detach().reshape(1))
        window = saved.get("curv_win")
        if not isinstance(window, Tensor) or window.shape != (width,):
            got = tuple(window.shape) if isinstance(window, Tensor) else type(window).__name__
            raise ValueError(f"state_dict['tuner']['curv_win'] has shape {got}; expected ({width},) "
                             f"(curv_win_width={width})")
        # Tuner values keep float64 (never the parameters' dtype) and move to the parameters' device.
        tuner = torch.cat([v.to(self.tuner.device, torch.float64) for v in (*values, window.detach())])
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "tuner"})
        self.options = dict(options)
        self.tuner = tuner
