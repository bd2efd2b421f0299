"""Inputs for every op of the table, and the backend-vs-reference comparison all backend tests use.

`make_args(op, shapes, dtype, variant)` builds positional arguments in schema order for tensors of the
given shapes; `check_backend(op, backend, ...)` runs the op three times (backend in the dtype and
reference in the dtype, on clones; reference in float64 as the oracle, on make_args(..., oracle=True))
and checks every mutated tensor and every returned tensor with the derived rule of tests/tolerance.py.
Mutated arguments are read from the schema's (x!) annotations, so a kernel that writes what it should
not is caught too.
"""
from __future__ import annotations

import math
import re

import torch

from agd_kernels import _backends, ops
from agd_kernels.reference import lamb as ref_lamb
from agd_kernels.reference import yellowfin as ref_yellowfin
from agd_kernels.reference.agd import target_scale
from agd_kernels.reference.sumsq import num_slices
from agd_kernels.reference.telemetry import ALL_SUMS, NUM_SUMS, READ_SUMS, SUMS, UPDATE_SUMS, telemetry_sums
from tests.tolerance import assert_within_2x_reference

EPS32 = 2.0 ** -23

# Sizes (elements) every backend is checked on: empty, one element, sizes that divide no block or
# chunk size, and (CPU) one tensor larger than a million. MANY_SMALL: 300 tensors of mixed sizes.
SIZES = [0, 1, 7, 4097, 1_000_003]
MANY_SMALL = [((i * 37) % 2053) + 1 for i in range(300)]

# Flag variants per op, as keyword overrides of the defaults in _DEFAULTS; ids are pytest ids.
VARIANTS: dict[str, dict[str, dict]] = {
    "slice_sumsq_": {"plain": {}},
    "adam_step_": {
        "adam": {},
        "adamw-amsgrad": dict(decoupled_weight_decay=True, weight_decay=0.1, amsgrad=True),
        "l2-maximize": dict(weight_decay=0.1, maximize=True),
        "amp": dict(grad_scale=1024.0),
        "found-inf": dict(found_inf=1.0),
        "master-weights": dict(decoupled_weight_decay=True, weight_decay=0.1, masters=True),
        "telemetry": dict(weight_decay=0.1, maximize=True, grad_scale=64.0, telemetry=True),
        "telemetry-found-inf": dict(found_inf=1.0, telemetry=True),
        "telemetry-master-weights": dict(decoupled_weight_decay=True, weight_decay=0.1, masters=True, telemetry=True),
    },
    "sgd_step_": {
        "plain": dict(momentum=0.0),
        "momentum-dampening": dict(momentum=0.9, dampening=0.1, weight_decay=0.01),
        "nesterov-maximize": dict(momentum=0.9, nesterov=True, maximize=True),
        "first-step": dict(momentum=0.9, is_first_step=True),
        "amp": dict(momentum=0.9, grad_scale=512.0),
        "found-inf": dict(momentum=0.9, found_inf=1.0),
        "master-weights": dict(momentum=0.9, weight_decay=0.01, masters=True),
        "telemetry": dict(momentum=0.9, weight_decay=0.01, maximize=True, grad_scale=64.0, telemetry=True),
        "telemetry-found-inf": dict(momentum=0.9, found_inf=1.0, telemetry=True),
        "telemetry-master-weights": dict(momentum=0.9, weight_decay=0.01, masters=True, telemetry=True),
    },
    "rmsprop_step_": {
        "plain": {},
        "centered-momentum": dict(centered=True, momentum=0.9, weight_decay=0.01),
        "maximize": dict(maximize=True),
        "amp": dict(centered=True, grad_scale=256.0),
        "found-inf": dict(momentum=0.5, found_inf=1.0),
        "master-weights": dict(centered=True, momentum=0.9, masters=True),
        "telemetry": dict(centered=True, momentum=0.9, weight_decay=0.01, maximize=True, grad_scale=64.0,
                          telemetry=True),
        "telemetry-found-inf": dict(momentum=0.5, found_inf=1.0, telemetry=True),
        "telemetry-master-weights": dict(centered=True, momentum=0.9, masters=True, telemetry=True),
    },
    "adagrad_step_": {
        "plain": {},
        "decay-wd-maximize": dict(lr_decay=0.01, weight_decay=0.1, maximize=True),
        "amp": dict(grad_scale=128.0),
        "found-inf": dict(found_inf=1.0),
        "master-weights": dict(masters=True),
        "telemetry": dict(lr_decay=0.01, weight_decay=0.1, maximize=True, grad_scale=64.0, telemetry=True),
        "telemetry-found-inf": dict(found_inf=1.0, telemetry=True),
        "telemetry-master-weights": dict(masters=True, telemetry=True),
    },
    "agd_step_": {
        "plain": {},
        "gain": dict(gain=3.0),
        "amp": dict(grad_scale=2048.0),
        "found-inf": dict(found_inf=1.0),
        "master-weights": dict(masters=True),
        "telemetry": dict(gain=2.0, grad_scale=64.0, telemetry=True),
        "telemetry-found-inf": dict(found_inf=1.0, telemetry=True),
        "telemetry-master-weights": dict(masters=True, telemetry=True),
    },
    "lamb_moments_": {
        "apex-clipped": {},
        "l2-no-bias-correction": dict(adam_w_mode=False, bias_correction=False),
        "no-decay-no-averaging": dict(weight_decay=0.0, grad_averaging=False),
        "unclipped": dict(max_grad_norm=math.inf),
        "amp": dict(grad_scale=1024.0),
        "found-inf": dict(found_inf=1.0),
        # Gradients ~1e-4 on zeroed moments: v = 1e-3·g² ~ 1e-11 underflows fp16 (smallest subnormal 6e-8) and
        # m = 0.1·g ~ 1e-5 is subnormal, so u taken from the stored fp16 moments is m/bc1/eps ~ 30 where the
        # reference's, from the fp32 moments, is ~0.6: such a kernel moved fp16 parameters by up to 2 here.
        "underflowing-moments": dict(grad_std=1e-4, zero_moments=True),
        "norms-fp32": dict(norms_dtype=torch.float32),
        "master-weights": dict(masters=True),
        "telemetry": dict(adam_w_mode=False, grad_scale=64.0, telemetry=True),
        "telemetry-found-inf": dict(found_inf=1.0, telemetry=True),
        "telemetry-master-weights": dict(masters=True, telemetry=True),
    },
    # Samples are the state lamb_moments_ leaves (_lamb_after_moments), so the two ops are checked one by one.
    "lamb_apply_": {
        "apex-clipped": {},
        "l2-no-bias-correction": dict(adam_w_mode=False, bias_correction=False),
        "nvlamb-no-averaging": dict(weight_decay=0.0, grad_averaging=False),
        "no-trust-ratio": dict(weight_decay=0.0, use_trust_ratio=False),
        "paper-phi-unclipped": dict(max_grad_norm=math.inf, phi_min=0.5, phi_max=2.0),
        "amp": dict(grad_scale=1024.0),
        "found-inf": dict(found_inf=1.0),
        "underflowing-moments": dict(grad_std=1e-4, zero_moments=True),
        "norms-fp32": dict(norms_dtype=torch.float32),
        "master-weights": dict(masters=True),
        "telemetry": dict(adam_w_mode=False, grad_scale=64.0, telemetry=True),
        "telemetry-found-inf": dict(found_inf=1.0, telemetry=True),
        "telemetry-master-weights": dict(masters=True, telemetry=True),
    },
    "yellowfin_stats_": {
        "plain": {},
        "sparse": dict(zero_fraction=0.5),
        "master-weights": dict(masters=True),
    },
    # Tuner samples replay `history` reference steps on synthetic sums first (curv_win_width 5, so
    # the window has wrapped and force_non_inc_step is past its start at the default 12).
    "yellowfin_tune_": {
        "default": {},
        "first-step": dict(history=0),
        "second-step": dict(history=1),
        "manual-clip": dict(clip_thresh=0.5),
        "auto-clip-spike": dict(auto_clip_fac=1.5, spike=1e4),
        "raw-smoothing-no-adapt": dict(zero_debias=False, h_min_log_smooth=False, h_max_log_smooth=False,
                                       adapt_clip=False),
        "sparsity-force": dict(sparsity_debias=True, force_non_inc_step=True),
        "amp": dict(grad_scale=1024.0),
        "non-finite": dict(spike=math.inf),
        "found-inf": dict(found_inf=1.0),
    },
    "yellowfin_apply_": {
        "momentum": {},
        "first-step-plain": dict(history=0, mu=0.0),
        "weight-decay": dict(weight_decay=0.01),
        "non-finite": dict(spike=math.inf),
        "found-inf": dict(found_inf=1.0),
        "master-weights": dict(weight_decay=0.01, masters=True),
        "telemetry": dict(weight_decay=0.01, grad_scale=64.0, telemetry=True),
        "telemetry-found-inf": dict(found_inf=1.0, telemetry=True),
        "telemetry-master-weights": dict(weight_decay=0.01, masters=True, telemetry=True),
    },
    # Values over fp32's whole range with NaNs, infinities, the largest floats, subnormals and exact bf16
    # values among them; global indices across 2^32 (the counter's high word); a negative seed (its high
    # half has the sign bit); fp64 step counters.
    "stochastic_round_": {
        "plain": {},
        "offsets-across-2**32": dict(offset_base=2**32 - 3000),
        "negative-seed-fp64-steps": dict(seed=-0x123456789ABCDEF, step_dtype=torch.float64),
    },
}

#: Ops whose sample tensors have one dtype whatever the matrix asks for (stochastic_round_ writes bf16 from
#: fp32): the backend matrices run them once, in that dtype (op_dtypes).
FIXED_DTYPE = {"stochastic_round_": torch.bfloat16}

#: Ops without floating-point math: every backend must give the reference's bits (no oracle, no tolerance).
EXACT = {"stochastic_round_"}


#: Variants with `masters=True` run in mixed precision (agd_kernels/ops.py, "Mixed precision"): the matrix's
#: dtype (bf16 or fp16) is the gradients' and model_params', params and state are fp32 masters.
HALF_DTYPES = (torch.bfloat16, torch.float16)


def is_mixed(op: str, variant: str) -> bool:
    return VARIANTS[op][variant].get("masters", False)


#: Variants with `telemetry=True` pass the op a telemetry buffer (agd_kernels/ops.py, "Telemetry") as its
#: last argument, filled with TELEMETRY_FILL so that a kernel that overwrites instead of adding shows.
TELEMETRY_FILL = 0.25


#: The columns of the sums an op adds, where not all five (LAMB splits them over its two phases).
TELEMETRY_COLUMNS = {"lamb_moments_": READ_SUMS, "lamb_apply_": UPDATE_SUMS}
#: The ops whose schema ends with `telemetry`.
TELEMETRY_OPS = {op for op, (schema, _) in ops.SCHEMAS.items() if "telemetry" in schema}


def has_telemetry(op: str, variant: str) -> bool:
    return VARIANTS[op][variant].get("telemetry", False)


def op_dtypes(op: str, dtypes, variant: str | None = None) -> list[torch.dtype]:
    """The dtypes a backend matrix over `dtypes` runs `op` (in `variant`) in."""
    if op in FIXED_DTYPE:
        return [FIXED_DTYPE[op]]
    if variant is not None and is_mixed(op, variant):
        return [d for d in dtypes if d in HALF_DTYPES]
    return list(dtypes)

_LAMB_DEFAULTS = dict(lr=1e-2, max_grad_norm=1.0, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01,
                      bias_correction=True, grad_averaging=True, adam_w_mode=True, use_trust_ratio=True, phi_min=0.0,
                      phi_max=math.inf)

_DEFAULTS = {
    "adam_step_": dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                       decoupled_weight_decay=False),
    "sgd_step_": dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False,
                      is_first_step=False),
    "rmsprop_step_": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                          maximize=False),
    "adagrad_step_": dict(lr=0.1, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False),
    "agd_step_": dict(gain=1.0),
    "lamb_moments_": _LAMB_DEFAULTS,
    "lamb_apply_": _LAMB_DEFAULTS,
    "yellowfin_stats_": dict(zero_fraction=0.0),
    "yellowfin_tune_": dict(history=12, spike=1.0, beta=0.9, curv_win_width=5, zero_debias=True,
                            sparsity_debias=False, clip_thresh=0.0, auto_clip_fac=0.0, adapt_clip=True,
                            stat_protect_fac=100.0, catastrophic_move_thresh=100.0, force_non_inc_step=False,
                            h_min_log_smooth=True, h_max_log_smooth=True),
    "yellowfin_apply_": dict(history=12, mu=0.5, spike=1.0, beta=0.9, weight_decay=0.0),
    "stochastic_round_": dict(offset_base=0, seed=0x5EED_0F_5EED, step_dtype=torch.float32),
}


def shapes_for(op: str, sizes: list[int]) -> list[tuple[int, ...]]:
    """Tensor shapes for `sizes` elements. AGD normalises weights, so sizes become (n, 1) matrices
    and a few convolution shapes (3x3, 1x1, non-square, Conv1d) are appended. (n, 1), not (1, n):
    an empty (0, 1) weight has sv = 0 where (1, 0) would divide by zero."""
    if op in ("agd_step_", "slice_sumsq_"):
        return [(n, 1) for n in sizes] + [(4, 3, 3, 3), (6, 2, 1, 1), (3, 5, 2, 3), (5, 4, 3)]
    return [(n,) for n in sizes]


#: op -> (dtype -> positions of (x!) arguments the op must leave bit-identical for that dtype). lamb_moments_
#: defers 16-bit moments to lamb_apply_: storing them would still pass the tolerance check (the float64 oracle
#: stores its own), yet lamb_apply_, which computes m' and v' from m and v, would then update them twice.
UNWRITTEN = {"lamb_moments_": lambda dtype: [2, 3] if ref_lamb.defers_moments(dtype) else []}


#: op -> {position of an (x!) tensor stored wider than computed: floor ulps of the math dtype}. lamb_moments_'s
#: float64 norms are sums of squares of values rounded in fp32 (for 16-bit parameters too), so the 2x rule's
#: floor counts fp32 ulps: a sum of squares of terms each within k ulps is within 2k, and u = (m/bc1)/(√(v/bc2)
#: + eps) is within about 8 in the worst case (m, v: 1.5 each; three divisions, 2 ulps each in Triton's
#: div.full.f32 on sm_90, and its sqrt.approx.f32; the add): 16.
COMPUTED_NARROWER = {"lamb_moments_": {6: 16}}


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _schema_args(op: str) -> list[str]:
    return re.match(r"\((.*)\) ->", ops.SCHEMAS[op][0]).group(1).split(", ")


def mutated_positions(op: str) -> list[int]:
    """Indices of the schema arguments annotated (x!)."""
    return [i for i, a in enumerate(_schema_args(op)) if "!" in a]


def schema_arg_names(op: str) -> list[str]:
    """The schema's argument names, in order."""
    return [a.split()[-1].split("=")[0] for a in _schema_args(op)]


def _scalar(value: float, device) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=device)


def make_args(op: str, shapes, dtype: torch.dtype, variant: str, seed: int = 0, device="cpu", *,
              oracle: bool = False) -> tuple:
    """Positional arguments for `op` in schema order (fresh tensors; deterministic in `seed`). With `oracle`,
    the same values cast to float64: the float64 run check_backend compares against. lamb_apply_'s state is
    prepared by the reference lamb_moments_ after that cast, so the oracle's moments are float64 ones (its
    16-bit runs leave them to lamb_apply_, its float64 run stores them: the rule follows the dtype)."""
    args = _make_args(op, shapes, dtype, variant, seed, device)
    if oracle and has_telemetry(op, variant):  # the buffer is fp32 by contract: check_telemetry checks it
        args = (args[0], (*args[1][:-1], None)) if op == "lamb_apply_" else (*args[:-1], None)
    if op == "lamb_apply_":
        return _lamb_after_moments(*(_clone_args(a, torch.float64) if oracle else a for a in args))
    return _clone_args(args, torch.float64) if oracle else args


def _lamb_after_moments(moments: tuple, apply_only: tuple) -> tuple:
    """lamb_apply_'s arguments: the reference lamb_moments_ has run on `moments` (without found_inf: a
    skipped apply must skip real norms), then lr, the trust-ratio flags, found_inf, model_params and the
    telemetry buffer join them."""
    ref_lamb.lamb_moments_(*moments[:-1], None)
    lr, use_trust_ratio, phi_min, phi_max, model_params, telemetry = apply_only
    return (*moments[:5], lr, *moments[5:15], use_trust_ratio, phi_min, phi_max, *moments[15:], model_params,
            telemetry)


def _make_args(op: str, shapes, dtype: torch.dtype, variant: str, seed: int, device) -> tuple:
    """make_args without the oracle cast; lamb_apply_ gives (lamb_moments_'s arguments, its own)."""
    args = _with_model_params(op, _make_fp_args(op, shapes, dtype, variant, seed, device), dtype, variant)
    if op in TELEMETRY_OPS:  # the buffer, or None: every call passes the whole schema
        buffer = None
        if has_telemetry(op, variant):
            rows = len(args[0][0] if op == "lamb_apply_" else args[0])
            buffer = torch.full((rows, NUM_SUMS), TELEMETRY_FILL, dtype=torch.float32, device=device)
        if op == "lamb_apply_":
            return args[0], (*args[1], buffer)
        args = (*args, buffer)
    return args


def _with_model_params(op: str, args: tuple, dtype: torch.dtype, variant: str) -> tuple:
    if not is_mixed(op, variant):
        return args
    # Mixed precision: the gradients in the 16-bit dtype, and NaN-filled model_params (so an element the
    # op does not write shows) as the last argument of the ops that write parameters.
    moments, apply_only = (args, None) if op != "lamb_apply_" else args
    moments = list(moments)
    g = 0 if op == "yellowfin_stats_" else 1
    moments[g] = [t.to(dtype) for t in moments[g]]
    if op in ("lamb_moments_", "yellowfin_stats_"):
        return tuple(moments)
    model = [torch.full_like(p, math.nan, dtype=dtype) for p in moments[0]]
    if op == "lamb_apply_":
        return tuple(moments), (*apply_only[:-1], model)
    return (*moments[:-1], model)


def _make_fp_args(op: str, shapes, dtype: torch.dtype, variant: str, seed: int, device) -> tuple:
    """_make_args with every tensor in `dtype` (fp32 for a mixed-precision variant); lamb_apply_'s
    model_params are the last of its own arguments."""
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, scale=1.0, positive=False):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
        return (x.abs() if positive else x).to(dtype=dtype, device=device)

    hp = dict(_DEFAULTS.get(op, {}), **VARIANTS[op][variant])
    hp.pop("telemetry", None)  # the buffer is appended by _make_args
    half = None
    if hp.pop("masters", False):  # fp32 masters and state; gradients and model_params in the 16-bit `dtype`
        if dtype not in HALF_DTYPES:
            raise ValueError(f"{op}[{variant}] is a mixed-precision variant: dtype must be bf16 or fp16, got {dtype}")
        half, dtype = dtype, torch.float32
    scale = hp.pop("grad_scale", None)
    grad_scale = None if scale is None else _scalar(scale, device)
    found = hp.pop("found_inf", None)
    found_inf = None if found is None else _scalar(found, device)
    gmul = (scale or 1.0) * hp.pop("grad_std", 1.0)  # gradients arrive multiplied by the loss scale
    params = [rand(s) for s in shapes]
    grads = [rand(s, gmul) for s in shapes]
    if half is not None:  # values the 16-bit gradients hold exactly, so sums taken below are theirs
        grads = [g.to(half).float() for g in grads]
    steps = [_scalar(3.0, device) for _ in shapes]  # not the first step: bias corrections matter

    if op == "stochastic_round_":
        return _rounding_args(shapes, hp, gen, device)
    if op == "slice_sumsq_":
        out = torch.full((sum(num_slices(s) for s in shapes),), float("nan"), dtype=torch.float32, device=device)
        return (grads, out)
    if op == "adam_step_":
        lr = _scalar(hp.pop("lr"), device)
        m = [rand(s, 0.1) for s in shapes]
        v = [rand(s, 0.01, positive=True) for s in shapes]
        vmax = [x * 1.5 for x in v] if hp["amsgrad"] else []
        return (params, grads, m, v, vmax, steps, lr, hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"],
                hp["amsgrad"], hp["maximize"], hp["decoupled_weight_decay"], grad_scale, found_inf, [])
    if op == "sgd_step_":
        lr = _scalar(hp.pop("lr"), device)
        bufs = [rand(s, 0.1) for s in shapes] if hp["momentum"] != 0 else []
        return (params, grads, bufs, lr, hp["momentum"], hp["dampening"], hp["weight_decay"], hp["nesterov"],
                hp["maximize"], hp["is_first_step"], grad_scale, found_inf, [])
    if op == "rmsprop_step_":
        lr = _scalar(hp.pop("lr"), device)
        gavg = [rand(s, 0.01) for s in shapes] if hp["centered"] else []
        # square_avg above grad_avg² keeps the centered variance positive, as training guarantees
        sq = [rand(s, 0.01, positive=True) + 0.01 for s in shapes]
        bufs = [rand(s, 0.1) for s in shapes] if hp["momentum"] > 0 else []
        return (params, grads, sq, gavg, bufs, steps, lr, hp["alpha"], hp["eps"], hp["weight_decay"],
                hp["momentum"], hp["centered"], hp["maximize"], grad_scale, found_inf, [])
    if op == "adagrad_step_":
        lr = _scalar(hp.pop("lr"), device)
        sums = [rand(s, 0.1, positive=True) for s in shapes]
        return (params, grads, sums, steps, lr, hp["lr_decay"], hp["weight_decay"], hp["eps"], hp["maximize"],
                grad_scale, found_inf, [])
    if op == "agd_step_":
        start, starts, counts, sv = 0, [], [], []
        for s in shapes:
            n = num_slices(s)
            starts.append(start)
            counts.append(n)
            sv += [target_scale(s)] * n
            start += n
        sumsq = torch.empty(start, dtype=torch.float32, device=device)
        ops.slice_sumsq_(grads, sumsq, backend="torch")
        slice_sv = torch.tensor(sv, dtype=torch.float32, device=device)
        return (params, grads, sumsq, slice_sv, starts, counts, len(shapes), hp["gain"], grad_scale, found_inf, [])
    if op in ("lamb_moments_", "lamb_apply_"):
        moment_scale = 0.0 if hp.pop("zero_moments", False) else 1.0
        m = [rand(s, 0.1 * moment_scale) for s in shapes]
        v = [rand(s, 0.01 * moment_scale, positive=True) for s in shapes]
        sumsq = torch.empty(sum(num_slices(s) for s in shapes), dtype=torch.float32, device=device)
        ops.slice_sumsq_(grads, sumsq, backend="torch")
        norms = torch.full((2 * len(shapes),), math.nan, dtype=hp.pop("norms_dtype", torch.float64), device=device)
        moments = (params, grads, m, v, steps, sumsq, norms, hp["max_grad_norm"], hp["beta1"], hp["beta2"], hp["eps"],
                   hp["weight_decay"], hp["bias_correction"], hp["grad_averaging"], hp["adam_w_mode"], grad_scale,
                   found_inf)
        if op == "lamb_moments_":
            return moments
        return moments, (_scalar(hp["lr"], device), hp["use_trust_ratio"], hp["phi_min"], hp["phi_max"], [])
    if op == "yellowfin_stats_":
        keep = [torch.rand(s, generator=gen) >= hp["zero_fraction"] for s in shapes]
        grads = [g * k.to(device) for g, k in zip(grads, keep)]
        avgs = [rand(s, 0.1) for s in shapes]
        return (grads, avgs, torch.full((4,), math.nan, dtype=torch.float64, device=device))
    if op == "yellowfin_tune_":
        tuner, stats, tune_hp = _yellowfin_tuner(hp, len(shapes), numel(shapes), gen, device, scale or 1.0)
        return (tuner, stats, *tune_hp, grad_scale, found_inf)
    if op == "yellowfin_apply_":
        # The tuner has run this step's tune (on synthetic sums: apply reads only its lr, μ and clip
        # factors, and the sums' finiteness).
        tuner, stats, _ = _yellowfin_tuner(dict(_DEFAULTS["yellowfin_tune_"], **hp), len(shapes), numel(shapes),
                                           gen, device, scale or 1.0, current_step=True)
        avgs = [rand(s, 0.1) for s in shapes]
        bufs = [rand(s, 0.1) for s in shapes]
        return (params, grads, avgs, bufs, tuner, stats, hp["beta"], hp["weight_decay"], found_inf, [])
    raise KeyError(f"no sample builder for {op}")


def _rounding_args(shapes, hp: dict, gen: torch.Generator, device) -> tuple:
    """stochastic_round_'s (dst, src, seed, steps, offsets): fp32 sources with magnitudes 1e-45 to 3e38 and
    the special values laced in; NaN-filled bf16 destinations, so an element left unwritten shows."""
    specials = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 3.4e38, -3.4e38, 1e-40, -1e-42, 1.5, -2.0,
                             float.fromhex("0x1.fffffep127"), float.fromhex("0x1.fefffep127")])
    src, offsets, offset = [], [], hp["offset_base"]
    for i, shape in enumerate(shapes):
        n = math.prod(shape)
        x = torch.randn(n, generator=gen) * 10.0 ** torch.randint(-45, 38, (n,), generator=gen).float()
        k = min(n, len(specials))
        x[:k] = specials.roll(i)[:k]
        src.append(x.reshape(shape).to(device))
        offsets.append(offset)
        offset += n
    dst = [torch.full(shape, math.nan, dtype=torch.bfloat16, device=device) for shape in shapes]
    seed = torch.tensor(hp["seed"], dtype=torch.int64, device=device)
    steps = [torch.tensor(7.0 + i, dtype=hp["step_dtype"], device=device) for i in range(len(shapes))]
    return dst, src, seed, steps, offsets


def _yellowfin_tuner(hp: dict, rows: int, elements: int, gen: torch.Generator, device, scale: float,
                     current_step: bool = False) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """(tuner after hp["history"] reference steps, this step's sums (rows x 4, times the loss scale),
    the tune op's scalar arguments). Sums are synthetic, of order 1 so the tuned lr is too (an apply
    sample then moves parameters visibly): Σg² in [0.5, 1.5], Σḡ·g and Σḡ² fractions of it, 80%
    nonzeros; hp["spike"] multiplies this step's Σg² (inf: a non-finite step). With `current_step`
    the tune of this step has run too."""
    names = ("beta", "curv_win_width", "zero_debias", "sparsity_debias", "clip_thresh", "auto_clip_fac",
             "adapt_clip", "stat_protect_fac", "catastrophic_move_thresh", "force_non_inc_step",
             "h_min_log_smooth", "h_max_log_smooth")
    size = float(max(elements, 1))
    tune_hp = (size, *(hp[k] for k in names))

    def sums(spike: float) -> torch.Tensor:
        u = torch.rand(rows, 3, generator=gen, dtype=torch.float64)
        gg = (0.5 + u[:, 0]) / rows * spike
        cols = [gg, (u[:, 1] - 0.3) * (0.3 * gg / rows).sqrt(), 0.3 * u[:, 2] / rows,
                torch.full((rows,), 0.8 * size / rows, dtype=torch.float64)]
        return torch.stack(cols, 1)

    tuner = ref_yellowfin.new_tuner(0.01, hp.get("mu", 0.5), hp["curv_win_width"], "cpu")
    for _ in range(hp["history"]):
        ref_yellowfin.yellowfin_tune_(tuner, sums(1.0), *tune_hp, None, None)
    stats = sums(hp["spike"])
    stats[:, 0] *= scale * scale
    stats[:, 1] *= scale
    if current_step:  # the tune of this step, with its loss scale (the tuner's 1/grad_scale is telemetry's)
        loss_scale = None if scale == 1.0 else torch.tensor(scale, dtype=torch.float32)
        ref_yellowfin.yellowfin_tune_(tuner, stats, *tune_hp, loss_scale, None)
    return tuner.to(device), stats.to(device), tune_hp


def _clone_args(args, dtype=None):
    """Deep-copies tensors (lists included); with `dtype`, floating tensors of the param dtype are cast
    (fp32 buffers such as lr, step, sumsq keep their dtype unless dtype is float64)."""
    def conv(x):
        if isinstance(x, torch.Tensor):
            y = x.clone()
            return y.to(dtype) if dtype is not None and y.is_floating_point() else y
        if isinstance(x, list):
            return [conv(e) for e in x]
        return x
    return tuple(conv(a) for a in args)


def run(op: str, backend: str, args) -> object:
    """Run `op` on `args` with `backend` exactly as agd_kernels.ops would dispatch it."""
    device, dtype = _first_tensor(args).device, _first_tensor(args).dtype
    return _backends.resolve(op, device, ops.RESOLVE_DTYPE.get(op, dtype), backend)[1](*args)


def _first_tensor(args) -> torch.Tensor:
    first = args[0]
    return first[0] if isinstance(first, list) else first


def _flat(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for e in x for t in _flat(e)]
    return []


def check_backend(op: str, backend: str, shapes, dtype: torch.dtype, variant: str, seed: int = 0,
                  device="cpu", kernel=None) -> None:
    """Backend vs reference vs float64 oracle on every mutated and returned tensor (all on `device`).
    `kernel`, when given, is called instead of the backend's (e.g. the grid emulator's; `backend` then
    only names it in messages). EXACT ops must give the reference's bits."""
    args = make_args(op, shapes, dtype, variant, seed, device)
    if op in EXACT:
        _check_exact(op, backend, args, variant, kernel)
        return
    got_args, ref_args = _clone_args(args), _clone_args(args)
    oracle_args = make_args(op, shapes, dtype, variant, seed, device, oracle=True)
    got = kernel(*got_args) if kernel is not None else run(op, backend, got_args)
    ref = run(op, "torch", ref_args)
    oracle = run(op, "torch", oracle_args)
    narrower = COMPUTED_NARROWER.get(op, {})
    for pos in mutated_positions(op):
        floor = dict(floor_dtype=math_dtype(dtype), floor_ulps=narrower[pos]) if pos in narrower else {}
        for i, (g, r, o) in enumerate(zip(_flat(got_args[pos]), _flat(ref_args[pos]), _flat(oracle_args[pos]))):
            assert g.dtype == r.dtype and g.shape == r.shape
            assert_within_2x_reference(g, r, o, name=f"{op}[{variant}] arg {pos} tensor {i} ({backend}, {dtype})",
                                       **floor)
    for i, (g, r, o) in enumerate(zip(_flat(got), _flat(ref), _flat(oracle))):
        assert_within_2x_reference(g, r, o, name=f"{op}[{variant}] output {i} ({backend}, {dtype})")
    if has_telemetry(op, variant):
        for who, done in ((backend, got_args), ("torch", ref_args)):
            check_telemetry(op, f"{op}[{variant}] ({who}, {dtype})", args, done)
    # found_inf set: nothing may change, to the bit; nor may what the spec leaves alone for this dtype.
    found_inf = VARIANTS[op][variant].get("found_inf")
    for pos in mutated_positions(op) if found_inf else UNWRITTEN.get(op, lambda dtype: [])(_first_tensor(args).dtype):
        for g, a in zip(_flat(got_args[pos]), _flat(args[pos])):
            assert torch.equal(g, a) or (g.isnan() == a.isnan()).all() and torch.equal(g.nan_to_num(), a.nan_to_num())


def check_telemetry(op: str, name: str, before: tuple, after: tuple) -> None:
    """The telemetry buffer an op filled (after[-1]) against the fp64 sums of the tensors it read
    (before: params, grads, grad_scale) and the params it wrote (after[0]), added to the fill; nothing added
    when found_inf is set. Taking Δw from the op's own output keeps its rounding of the update out of this
    check (check_backend's rule covers that), leaving the summation: fp32 accumulation in any fixed order,
    so within 1e-5 of each sum's scale (Σ of the squares; Cauchy-Schwarz's √(w_sq·g_sq), √(w_sq·d_sq) for
    the cross sums) plus an fp32 ulp of the result (the add to the fill)."""
    grad_scale, found_inf = _amp_of(op, before)
    got = after[-1].double().cpu()
    # All five sums, also where the op adds only some (LAMB): lamb_apply_'s w_d is scaled by w_sq, which
    # lamb_moments_ adds.
    sums = torch.zeros_like(got)
    if not (found_inf is not None and found_inf.item() != 0):
        for i, (w, g, w_new) in enumerate(zip(before[0], before[1], after[0])):
            sums[i] = telemetry_sums(w, g, w_new, grad_scale).cpu()
    expected = torch.full_like(got, TELEMETRY_FILL)
    cols = list(TELEMETRY_COLUMNS.get(op, ALL_SUMS))  # the columns this op adds; the others keep the fill
    expected[:, cols] += sums[:, cols]
    w_sq, g_sq, _, d_sq, _ = sums.clamp_min(0).unbind(1)
    scale = torch.stack([w_sq, g_sq, (w_sq * g_sq).sqrt(), d_sq, (w_sq * d_sq).sqrt()], dim=1)
    bad = (got - expected).abs() > 1e-5 * scale + 2 * EPS32 * expected.abs()  # + the fp32 add to the fill
    assert not bad.any(), (
        f"{name}: telemetry rows {bad.any(1).nonzero().reshape(-1).tolist()[:8]} differ from the fp64 sums; "
        f"got {got[bad.any(1)][:3].tolist()}, expected {expected[bad.any(1)][:3].tolist()} (columns {SUMS})")


def _amp_of(op: str, args: tuple) -> tuple:
    """(grad_scale, found_inf) of an update op's arguments, at their schema positions. yellowfin_apply_ has no
    grad_scale: its tuner's grad_unscale slot holds 1/grad_scale."""
    names = schema_arg_names(op)
    found_inf = args[names.index("found_inf")]
    if op == "yellowfin_apply_":
        return 1.0 / args[names.index("tuner")][ref_yellowfin.SLOT["grad_unscale"]], found_inf
    return args[names.index("grad_scale")], found_inf


def _check_exact(op: str, backend: str, args, variant: str, kernel) -> None:
    got_args, ref_args = _clone_args(args), _clone_args(args)
    kernel(*got_args) if kernel is not None else run(op, backend, got_args)
    run(op, "torch", ref_args)
    for pos in mutated_positions(op):
        for i, (g, r) in enumerate(zip(_flat(got_args[pos]), _flat(ref_args[pos]))):
            assert g.dtype == r.dtype and g.shape == r.shape
            gb, rb = (t.detach().reshape(-1).cpu().view(torch.int16) for t in (g, r))
            differ = (gb != rb).nonzero()
            assert differ.numel() == 0, (
                f"{op}[{variant}] arg {pos} tensor {i} ({backend}): {differ.numel()} of {gb.numel()} elements differ "
                f"from the reference, first at {int(differ[0])}: {g.reshape(-1)[differ[0]].item()} vs "
                f"{r.reshape(-1)[differ[0]].item()}")


def numel(shapes) -> int:
    return sum(math.prod(s) for s in shapes)
