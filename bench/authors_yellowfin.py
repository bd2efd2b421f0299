"""The authors' YellowFin step (JianGoForIt/YellowFin_Pytorch, docs/yellowfin.md §1-§4), written
from the spec as a baseline, with the reference's default options.

The tuner runs on the host, as in the reference: per step one `.item()` per parameter tensor (the
Σḡ² of each ḡ EMA), the global ‖g‖² copied into a CPU window, the clip and catastrophic-move tests
and the cubic in Python, then torch.optim.SGD with the tuned lr and momentum written into its group.
Not reproduced, because a timed steady state never reaches them: the state_dict copy every 1000
steps and the restore-and-perturb path taken when a NaN check raises (here the check raises), and
the non-default options (sparsity debias, force_non_inc_step, auto clip, unsmoothed-log curvature).
The cubic runs in float64 on the host (the reference: fp32 on the device; same formula and eps).
"""
from __future__ import annotations

import math

import torch
from torch.nn.utils import clip_grad_norm_

EPS = 1e-6


def single_step_momentum(D: float, C: float, h_min: float, h_max: float) -> float:
    """μ_t of §3: the real root x of p·x = (1 − x)³ (Vieta form, reference eps), squared, and at
    least the robust-region bound ((√dr − 1)/(√dr + 1))² with dr = h_max/h_min."""
    for name, value in (("D", D), ("C", C), ("h_min", h_min)):
        if not math.isfinite(value):
            raise FloatingPointError(f"YellowFin tuner: {name} is {value}")
    p = (D + EPS) ** 2 * (h_min + EPS) ** 2 / (2 * (C + EPS))
    w3 = (-math.sqrt(p * p + 4 / 27 * p ** 3) - p) / 2
    w = math.copysign(abs(w3) ** (1 / 3), w3)
    x = w - p / (3 * (w + EPS)) + 1
    if not math.isfinite(x):
        raise FloatingPointError(f"YellowFin tuner: the cubic gave x = {x} (p = {p})")
    dr = max((h_max + EPS) / (h_min + EPS), 1 + EPS)
    mu_lo = ((math.sqrt(dr) - 1) / (math.sqrt(dr) + 1)) ** 2
    return max(x * x, mu_lo)


class AuthorsYellowFin:
    """YellowFin over `params`; `step()` returns the (lr, momentum) it applied, as Python floats.

    Clips rescale the parameters' .grad in place, as the reference does.
    """

    def __init__(self, params, lr: float = 1e-4, mu: float = 0.0, clip_thresh: float | None = None,
                 weight_decay: float = 0.0, beta: float = 0.999, curv_win_width: int = 20,
                 zero_debias: bool = True, adapt_clip: bool = True, stat_protect_fac: float = 100.0,
                 catastrophic_move_thresh: float = 100.0):
        self.params = list(params)
        self.sgd = torch.optim.SGD(self.params, lr=lr, momentum=mu, weight_decay=weight_decay)
        self.lr, self.mu, self.lr_factor = lr, mu, 1.0
        self.clip_thresh, self.beta, self.width, self.zero_debias = clip_thresh, beta, curv_win_width, zero_debias
        self.adapt_clip, self.stat_protect_fac = adapt_clip, stat_protect_fac
        self.catastrophic_move_thresh = catastrophic_move_thresh
        self.t = 0
        self.window = torch.zeros(curv_win_width)  # raw ‖g‖², on the CPU as in the reference
        self.h_min_avg = self.h_max_avg = 0.0      # EMAs of log(window min / max)
        self.gn2_avg = self.gn_avg = self.dist_avg = 0.0
        self.h_max_prev = 0.0                      # previous step's debiased h_max (read from t = 1 on)
        self.grad_avg: dict[torch.Tensor, torch.Tensor] = {}

    @torch.no_grad()
    def step(self) -> tuple[float, float]:
        params = [p for p in self.params if p.grad is not None]
        grads = [p.grad for p in params]
        beta, t, W = self.beta, self.t, self.width
        debias = 1 - beta ** (t + 1) if self.zero_debias else 1.0
        if self.clip_thresh is not None:
            clip_grad_norm_(params, self.clip_thresh)
        if self.adapt_clip and t > 1:  # stat-protect clip
            clip_grad_norm_(params, math.sqrt(self.stat_protect_fac * self.h_max_prev) + EPS)
        G = float(sum(g.square().sum() for g in grads))  # into the CPU window: a host sync
        exploding = t >= 1 and G >= self.h_max_prev
        self.gn2_avg = beta * self.gn2_avg + (1 - beta) * G
        # curvature range: log-smoothed min and max of the last W values of ‖g‖²
        self.window[t % W] = G
        valid = self.window[:min(W, t + 1)]
        self.h_min_avg = beta * self.h_min_avg + (1 - beta) * math.log(float(valid.min()) + EPS)
        self.h_max_avg = beta * self.h_max_avg + (1 - beta) * math.log(float(valid.max()) + EPS)
        h_min, h_max = math.exp(self.h_min_avg / debias), math.exp(self.h_max_avg / debias)
        # variance C = E‖g‖² − ‖E g‖², from the ḡ EMAs: one .item() per parameter, as the reference
        sq_avg = 0.0
        for p, g in zip(params, grads):
            avg = self.grad_avg.get(p)
            if avg is None:
                avg = self.grad_avg[p] = torch.zeros_like(p)
            avg.mul_(beta).add_(g, alpha=1 - beta)
            sq_avg += avg.square().sum().item()
        C = max(self.gn2_avg / debias - sq_avg / debias ** 2, EPS)
        # distance to the optimum: EMA of ‖g‖ / ‖g‖²
        self.gn_avg = beta * self.gn_avg + (1 - beta) * math.sqrt(G)
        self.dist_avg = beta * self.dist_avg + (1 - beta) * self.gn_avg / (self.gn2_avg + EPS)
        D = self.dist_avg / debias
        if t > 0:
            mu_t = single_step_momentum(D, C, h_min, h_max)
            lr_t = (1 - math.sqrt(mu_t)) ** 2 / (h_min + EPS)
            lr_t = min(lr_t, lr_t * (t + 1) / (10 * W))  # slow start over the first 10·W steps
        else:
            lr_t, mu_t = self.lr, self.mu  # step 0 applies the constructor's values
        lr = lr_t * self.lr_factor
        if self.adapt_clip and lr * math.sqrt(G) >= self.catastrophic_move_thresh:
            lr = self.catastrophic_move_thresh / math.sqrt(G + EPS)
        for group in self.sgd.param_groups:
            group["lr"], group["momentum"] = lr, mu_t
        if self.adapt_clip and exploding:  # seen by the SGD step only; the statistics are done
            clip_grad_norm_(params, math.sqrt(self.h_max_prev) + EPS)
        self.sgd.step()
        self.h_max_prev = h_max
        self.t += 1
        return lr, mu_t
