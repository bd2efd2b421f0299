"""An independent float64 transcription of the PyTorch YellowFin reference, the YellowFin tests' oracle.

Written from docs/yellowfin.md §2 (one step, in the reference's order) and §3 (the cubic), not from
agd_kernels.reference.yellowfin: Python floats for every scalar, float64 tensors for the per-element
work, and the *three-pass* order the reference runs (clip the gradients, reduce ‖g‖², update ḡ,
reduce Σḡ² after the update, then the momentum step), so it also checks the two-pass expansion of
Σḡ² the ops use. Differences from the reference, all from docs/yellowfin.md §8: the cubic's root is
clamped into [0, 1) and a step whose ‖g‖² is not finite is skipped.
"""
from __future__ import annotations

import math

import torch

EPS = 1e-6


def _clip_factor(max_norm: float, norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_: scale by max_norm/(norm + 1e-6) when that is below 1."""
    return min(1.0, max_norm / (norm + 1e-6))


class YellowFinOracle:
    """params: float64 tensors, updated in place; weight_decays: one per parameter."""

    def __init__(self, params: list[torch.Tensor], weight_decays: list[float] | None = None, lr: float = 1e-4,
                 mu: float = 0.0, clip_thresh: float | None = None, beta: float = 0.999, curv_win_width: int = 20,
                 zero_debias: bool = True, sparsity_debias: bool = False, auto_clip_fac: float | None = None,
                 force_non_inc_step: bool = False, h_max_log_smooth: bool = True, h_min_log_smooth: bool = True,
                 adapt_clip: bool = True, stat_protect_fac: float = 100.0, catastrophic_move_thresh: float = 100.0):
        self.params = params
        self.weight_decays = weight_decays or [0.0] * len(params)
        self.o = dict(clip_thresh=clip_thresh, beta=beta, W=curv_win_width, zero_debias=zero_debias,
                      sparsity_debias=sparsity_debias, auto_clip_fac=auto_clip_fac, force=force_non_inc_step,
                      h_max_log=h_max_log_smooth, h_min_log=h_min_log_smooth, adapt_clip=adapt_clip,
                      stat_protect_fac=stat_protect_fac, cmt=catastrophic_move_thresh)
        self.iter = 0
        self.lr_factor = 1.0
        self.lr_t, self.mu_t, self.lr, self.mu = lr, mu, lr, mu
        self.group_lr = lr  # what torch SGD's param group holds
        self.h_min = self.h_max = 0.0
        self.curv_win = [0.0] * curv_win_width
        self.h_min_avg = self.h_max_avg = 0.0
        self.gn2_avg = self.gn_avg = self.dist_avg = self.sparsity_avg = 0.0
        self.lr_gn_avg = self.lr_gn_min = self.gn2_log_avg = None  # created on first use, as the reference
        self.G = self.C = self.D = 0.0
        self.grad_avg = [torch.zeros_like(p) for p in params]
        self.buf: list[torch.Tensor | None] = [None] * len(params)

    def _debias(self) -> float:
        return 1.0 - self.o["beta"] ** (self.iter + 1)

    def step(self, grads: list[torch.Tensor]) -> None:
        o, beta, t = self.o, self.o["beta"], self.iter
        g = [x.double().clone() for x in grads]

        def norm() -> float:
            return math.sqrt(sum(float((x * x).sum()) for x in g))

        if not math.isfinite(norm()):
            return  # decision 6: skipped, statistics included
        # §2.1 manual / auto clip, §2.2 stat-protect clip (in place on the gradients, as the reference).
        if o["clip_thresh"] is not None:
            g = [x * _clip_factor(o["clip_thresh"], norm()) for x in g]
        elif t != 0 and o["auto_clip_fac"] is not None:
            g = [x * _clip_factor(math.sqrt(self.h_max) * o["auto_clip_fac"], norm()) for x in g]
        if o["adapt_clip"] and t > 1:
            g = [x * _clip_factor(math.sqrt(o["stat_protect_fac"] * self.h_max) + EPS, norm()) for x in g]
        # §2.3 global reduction #1.
        G = sum(float((x * x).sum()) for x in g)
        exploding = t >= 1 and G >= self.h_max
        explode_target = math.sqrt(self.h_max)
        self.gn2_avg = beta * self.gn2_avg + (1 - beta) * G
        true_debias = self._debias()
        debias = true_debias if o["zero_debias"] else 1.0
        # §2.4 sparsity.
        if o["sparsity_debias"]:
            nnz = sum(int((x != 0).sum()) for x in g)
            self.sparsity_avg = beta * self.sparsity_avg + (1 - beta) * nnz / sum(x.numel() for x in g)
            sparsity = self.sparsity_avg / true_debias
        # §2.5 curvature range.
        self.curv_win[t % o["W"]] = G
        valid = self.curv_win[:min(o["W"], t + 1)]
        lo, hi = min(valid), max(valid)
        self.h_min_avg = beta * self.h_min_avg + (1 - beta) * (math.log(lo + EPS) if o["h_min_log"] else lo)
        self.h_max_avg = beta * self.h_max_avg + (1 - beta) * (math.log(hi + EPS) if o["h_max_log"] else hi)
        self.h_min = math.exp(self.h_min_avg / debias) if o["h_min_log"] else self.h_min_avg / debias
        self.h_max = math.exp(self.h_max_avg / debias) if o["h_max_log"] else self.h_max_avg / debias
        if o["sparsity_debias"]:
            self.h_min *= sparsity
            self.h_max *= sparsity
        # §2.6 variance: update ḡ, then global reduction #2 over the updated ḡ.
        for a, x in zip(self.grad_avg, g):
            a.mul_(beta).add_((1 - beta) * x)
        A = sum(float((a * a).sum()) for a in self.grad_avg)
        self.C = max(self.gn2_avg / debias - A / debias ** 2, EPS)
        if o["sparsity_debias"]:
            self.C *= sparsity
        # §2.7 distance.
        self.gn_avg = beta * self.gn_avg + (1 - beta) * math.sqrt(G)
        self.dist_avg = beta * self.dist_avg + (1 - beta) * self.gn_avg / (self.gn2_avg + EPS)
        self.D = self.dist_avg / debias
        if o["sparsity_debias"]:
            self.D /= math.sqrt(sparsity) + EPS
        # §2.8 tuning.
        if t > 0:
            self.mu_t = max(self.cubic_root() ** 2, self.mu_lo())
            self.lr_t = (1 - math.sqrt(self.mu_t)) ** 2 / (self.h_min + EPS)
            self.lr_t = min(self.lr_t, self.lr_t * (t + 1) / (10.0 * o["W"]))
            self.lr = beta * self.lr + (1 - beta) * self.lr_t
            self.mu = beta * self.mu + (1 - beta) * self.mu_t
        # §2.9 hyper-parameter write.
        if not o["force"]:
            self.group_lr = self.lr_t * self.lr_factor
            if o["adapt_clip"] and self.group_lr * math.sqrt(G) >= o["cmt"]:
                self.group_lr = o["cmt"] / math.sqrt(G + EPS)
        elif t > o["W"]:
            log_g = math.log(G + EPS)
            lr_g = math.log(self.lr * math.sqrt(G) + EPS)
            if self.lr_gn_avg is None:
                self.gn2_log_avg = (1 - beta) * log_g
                self.lr_gn_avg = (1 - beta) * lr_g
                self.lr_gn_min = math.exp(self.lr_gn_avg / true_debias)
            else:
                self.gn2_log_avg = beta * self.gn2_log_avg + (1 - beta) * log_g
                self.lr_gn_avg = beta * self.lr_gn_avg + (1 - beta) * lr_g
                self.lr_gn_min = min(self.lr_gn_min, math.exp(self.lr_gn_avg / true_debias))
            self.group_lr = min(self.lr * self.lr_factor,
                                2.0 * self.lr_gn_min / (math.sqrt(math.exp(self.gn2_log_avg / true_debias)) + EPS))
        self.G = G
        # §2.11 exploding-gradient clip, seen by the SGD step only.
        if o["adapt_clip"] and exploding:
            g = [x * _clip_factor(explode_target + EPS, norm()) for x in g]
        # §2.12 torch.optim.SGD(momentum=μ_t, dampening=0, weight_decay=wd).
        for i, (p, x) in enumerate(zip(self.params, g)):
            d = x + self.weight_decays[i] * p
            if self.mu_t != 0:
                self.buf[i] = d.clone() if self.buf[i] is None else self.buf[i] * self.mu_t + d
                d = self.buf[i]
            p.sub_(self.group_lr * d)
        self.iter += 1

    def cubic_root(self) -> float:
        """§3, with the root clamped into [0, 1) (docs/yellowfin.md decision 2)."""
        p = (self.D + EPS) ** 2 * (self.h_min + EPS) ** 2 / 2 / (self.C + EPS)
        w3 = (-math.sqrt(p ** 2 + 4.0 / 27.0 * p ** 3) - p) / 2.0
        w = math.copysign(1.0, w3) * math.pow(math.fabs(w3), 1.0 / 3.0)
        x = w - p / 3.0 / (w + EPS) + 1
        return min(max(x, 0.0), math.nextafter(1.0, 0.0))

    def mu_lo(self) -> float:
        dr = max((self.h_max + EPS) / (self.h_min + EPS), 1.0 + EPS)
        return ((math.sqrt(dr) - 1) / (math.sqrt(dr) + 1)) ** 2
