"""An independent float64 transcription of LAMB, the oracle of the LAMB tests.

Written from docs/lamb.md, not from agd_kernels.reference.lamb: §2 (apex FusedLAMB: global
clip, the two weight-decay modes, trust ratio only where wd != 0 unless NVLAMB) for
variant="apex", and §1/§3 (no clip, per-group exclusions, φ clamp) for variant="paper". Plain
per-tensor float64 arithmetic in the spec's order; per-parameter step counters (decision 5).
"""
from __future__ import annotations

import math

import torch

APEX_GROUP = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, bias_correction=True,
                  grad_averaging=True, adam_w_mode=True, use_nvlamb=False)
PAPER_GROUP = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, bias_correction=True,
                   grad_averaging=True, exclude_from_weight_decay=False, exclude_from_layer_adaptation=False,
                   phi_min=0.0, phi_max=math.inf)


class LambOracle:
    """groups: [{"params": [float64 tensors], **hyper-parameters}]; the tensors are updated in place."""

    def __init__(self, groups: list[dict], variant: str = "apex", max_grad_norm: float | None = 1.0):
        base = APEX_GROUP if variant == "apex" else PAPER_GROUP
        self.groups = [{**base, **g} for g in groups]
        self.variant = variant
        self.max_grad_norm = max_grad_norm
        self.state: dict[int, dict] = {}

    def step(self, grads: list[list[torch.Tensor | None]]) -> None:
        """grads[i][j]: gradient of groups[i]["params"][j] (None: no gradient this step)."""
        # Global norm over every gradient of every group, then the clip divisor (§2.1).
        total = sum(float((g.double() ** 2).sum()) for gs in grads for g in gs if g is not None)
        norm = math.sqrt(total)
        k = norm / self.max_grad_norm if self.max_grad_norm is not None and norm > self.max_grad_norm else 1.0
        for group, gs in zip(self.groups, grads):
            beta1, beta2 = group["betas"]
            beta3 = 1.0 - beta1 if group["grad_averaging"] else 1.0
            wd = group["weight_decay"]
            paper = self.variant == "paper"
            if paper and group["exclude_from_weight_decay"]:
                wd = 0.0
            l2 = not paper and not group["adam_w_mode"]
            for p, g in zip(group["params"], gs):
                if g is None:
                    continue
                st = self.state.setdefault(id(p), dict(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p)))
                st["step"] += 1
                gs_ = g.double() / k
                if l2:
                    gs_ = gs_ + wd * p
                st["m"] = beta1 * st["m"] + beta3 * gs_
                st["v"] = beta2 * st["v"] + (1.0 - beta2) * gs_ * gs_
                bc1 = 1.0 - beta1 ** st["step"] if group["bias_correction"] else 1.0
                bc2 = 1.0 - beta2 ** st["step"] if group["bias_correction"] else 1.0
                u = (st["m"] / bc1) / (torch.sqrt(st["v"] / bc2) + group["eps"])
                if not l2:
                    u = u + wd * p
                p_norm = math.sqrt(float((p * p).sum()))
                u_norm = math.sqrt(float((u * u).sum()))
                if paper:
                    adapt = not group["exclude_from_layer_adaptation"]
                    phi = min(max(p_norm, group["phi_min"]), group["phi_max"])
                else:
                    adapt = group["use_nvlamb"] or wd != 0
                    phi = p_norm
                ratio = phi / u_norm if adapt and p_norm != 0 and u_norm != 0 else 1.0
                p.sub_(group["lr"] * ratio * u)
