"""The op table: one in-place multi-tensor op per algorithm (LAMB and YellowFin: one per phase, around their
whole-tensor sums, which sharded parameters reduce across ranks in between), plus the per-slice sum of squares
and the stochastic rounding of fp32 working copies into bf16 parameters.

Each op is a `torch.ops.agd_kernels.<name>` operator whose schema is defined here, once, so the op
exists on every machine (the compiled extension may be absent). Implementations attach per backend:
  torch  : agd_kernels.reference.*, also registered as the op's CompositeExplicitAutograd kernel, so
           `torch.ops.agd_kernels.<name>` runs on any device even with nothing compiled;
  cpu    : C++ kernels from agd_kernels._C, registered on the CPU dispatch key (csrc/cpu);
  cuda   : C++/CUDA kernels from agd_kernels._C on the CUDA dispatch key (csrc/cuda);
  triton : agd_kernels.triton_kernels, registered with `_backends.register_kernel`.
The functions below (`adam_step_`, ...) pick the backend through `_backends.resolve` and call it;
optimizers call only these functions.

Conventions shared by every op (docs/design.md rules 3 and 5):
- Mutated lists carry `(x!)` annotations; ops return nothing unless stated.
- Per-step scalars are tensors the kernel reads (lr, state_steps, grad_scale, found_inf): no host sync.
- `grad_scale` (optional, 0-d): gradients are divided by it before any use; they are not written back.
- `found_inf` (optional, 0-d): when nonzero the op changes nothing at all, state_steps included.
- Math is fp32 for fp16/bf16 tensors (fp64 for fp64); state tensors have the parameter's dtype.
- All tensors of one call live on one device and share the parameters' dtype, except the scalar
  tensors, the fp32 buffers named in each schema, and the mixed-precision lists below.

Mixed precision (master weights, docs/mixed_precision.md): every op that writes parameters ends with
`model_params`, empty or one tensor per parameter. Given, `params` are fp32 masters, `grads` and
`model_params` share one 16-bit dtype (bf16 or fp16) and the masters' shapes and layouts, and the op also
writes each updated master, rounded to nearest even, into its model parameter, in the same pass: the
gradient is read in 16 bits and no transient fp32 copy or copy-back pass exists. lamb_moments_ and
yellowfin_stats_ (which read gradients but write no parameter) take 16-bit grads beside fp32
params/grad_avgs the same way. With found_inf set nothing is written, model_params included.

Telemetry (docs/telemetry.md): adam_step_, sgd_step_, rmsprop_step_, adagrad_step_, agd_step_, lamb_moments_,
lamb_apply_ and yellowfin_apply_ end with `telemetry`, None or a contiguous fp32 tensor of shape
(len(params), 5) on the params' device. Given, the op ADDS to row i, in the pass it makes anyway, the five
sums of agd_kernels.reference.telemetry over tensor i (its local shard): w_sq, g_sq, w_g, d_sq, w_d (LAMB
splits them: lamb_moments_, which writes no weight, adds w_sq, g_sq and w_g; lamb_apply_, whose fp32 path
reads no gradient, adds d_sq and w_d), with w = params[i] before the op (the fp32 master with
master weights), g = grads[i] / grad_scale (not negated by maximize, before weight decay, before LAMB's and
YellowFin's clips; yellowfin_apply_ reads 1/grad_scale from the tuner's grad_unscale slot), and
Δw = params[i] after - w as stored (in the math type: fp32, fp64 for fp64 tensors). Terms are formed
in the math type, partial sums at least in it (the backends add blocks of them in fp64) and the total is
added to the buffer in fp32; a backend may add partial sums in any fixed order, so values agree with the
fp64 reference to summation rounding, not bitwise, and repeat exactly from run to run.
Without telemetry (None) a kernel does none of this work (a compile-time flag). With found_inf set
nothing is added.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from torch import Tensor

from . import _backends, _ext, distributed
from .reference import adagrad as _ref_adagrad
from .reference import adam as _ref_adam
from .reference import agd as _ref_agd
from .reference import lamb as _ref_lamb
from .reference import rmsprop as _ref_rmsprop
from .reference import sgd as _ref_sgd
from .reference import stochastic_round as _ref_stochastic_round
from .reference import sumsq as _ref_sumsq
from .reference import yellowfin as _ref_yellowfin

NAMESPACE = "agd_kernels"

_AMP = "Tensor? grad_scale, Tensor? found_inf"
#: The trailing argument of every op that writes parameters (see "Mixed precision" above).
_MODEL = "Tensor(z!)[] model_params"
#: The last argument of the elementwise update ops (see "Telemetry" above).
_TELEMETRY = "Tensor(t!)? telemetry=None"

#: name -> (schema, reference implementation). The single source of every op's signature.
SCHEMAS: dict[str, tuple[str, object]] = {
    "slice_sumsq_": (
        "(Tensor[] tensors, Tensor(a!) out) -> ()",
        _ref_sumsq.slice_sumsq_),
    "adam_step_": (
        "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, Tensor lr, float beta1, float beta2, "
        f"float eps, float weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay, {_AMP}, {_MODEL}, {_TELEMETRY}) -> ()",
        _ref_adam.adam_step_),
    "sgd_step_": (
        "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, Tensor lr, float momentum, "
        f"float dampening, float weight_decay, bool nesterov, bool maximize, bool is_first_step, {_AMP}, {_MODEL}, {_TELEMETRY}) -> ()",
        _ref_sgd.sgd_step_),
    "rmsprop_step_": (
        "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avgs, Tensor(c!)[] grad_avgs, "
        "Tensor(d!)[] momentum_buffers, Tensor(e!)[] state_steps, Tensor lr, float alpha, float eps, "
        f"float weight_decay, float momentum, bool centered, bool maximize, {_AMP}, {_MODEL}, {_TELEMETRY}) -> ()",
        _ref_rmsprop.rmsprop_step_),
    "adagrad_step_": (
        "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] state_sums, Tensor(c!)[] state_steps, Tensor lr, "
        f"float lr_decay, float weight_decay, float eps, bool maximize, {_AMP}, {_MODEL}, {_TELEMETRY}) -> ()",
        _ref_adagrad.adagrad_step_),
    "agd_step_": (
        "(Tensor(a!)[] params, Tensor[] grads, Tensor sumsq, Tensor slice_sv, int[] slice_start, "
        f"int[] slice_count, int depth, float gain, {_AMP}, {_MODEL}, {_TELEMETRY}) -> (Tensor, Tensor)",
        _ref_agd.agd_step_),
    "lamb_moments_": (
        "(Tensor[] params, Tensor[] grads, Tensor(a!)[] exp_avgs, Tensor(b!)[] exp_avg_sqs, "
        "Tensor(c!)[] state_steps, Tensor grad_sumsq, Tensor(d!) norms, float max_grad_norm, float beta1, "
        "float beta2, float eps, float weight_decay, bool bias_correction, bool grad_averaging, "
        f"bool adam_w_mode, {_AMP}, {_TELEMETRY}) -> ()",
        _ref_lamb.lamb_moments_),
    "lamb_apply_": (
        "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor[] state_steps, Tensor lr, Tensor grad_sumsq, Tensor norms, float max_grad_norm, float beta1, "
        "float beta2, float eps, float weight_decay, bool bias_correction, bool grad_averaging, "
        f"bool adam_w_mode, bool use_trust_ratio, float phi_min, float phi_max, {_AMP}, {_MODEL}, {_TELEMETRY}) -> ()",
        _ref_lamb.lamb_apply_),
    "yellowfin_stats_": (
        "(Tensor[] grads, Tensor[] grad_avgs, Tensor(a!) out) -> ()",
        _ref_yellowfin.yellowfin_stats_),
    "yellowfin_tune_": (
        "(Tensor(a!) tuner, Tensor stats, float numel, float beta, int curv_win_width, bool zero_debias, "
        "bool sparsity_debias, float clip_thresh, float auto_clip_fac, bool adapt_clip, float stat_protect_fac, "
        "float catastrophic_move_thresh, bool force_non_inc_step, bool h_min_log_smooth, bool h_max_log_smooth, "
        f"{_AMP}) -> (Tensor, Tensor)",
        _ref_yellowfin.yellowfin_tune_),
    "yellowfin_apply_": (
        "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] grad_avgs, Tensor(c!)[] momentum_buffers, "
        f"Tensor tuner, Tensor stats, float beta, float weight_decay, Tensor? found_inf, {_MODEL}, {_TELEMETRY}) -> ()",
        _ref_yellowfin.yellowfin_apply_),
    "stochastic_round_": (
        "(Tensor(a!)[] dst, Tensor[] src, Tensor seed, Tensor[] steps, int[] offsets) -> ()",
        _ref_stochastic_round.stochastic_round_),
}

_LIB = torch.library.Library(NAMESPACE, "FRAGMENT")


def _fake_agd_step(params, grads, sumsq, *rest):
    return sumsq.new_empty(()), sumsq.new_empty(())


def _fake_yellowfin_tune(tuner, *rest):
    return tuner.new_empty(()), tuner.new_empty(())


#: Fake (meta) kernels of the ops that return tensors; the others return nothing.
_FAKES = {"agd_step_": _fake_agd_step, "yellowfin_tune_": _fake_yellowfin_tune}

#: Ops whose tensors are fp64 tuner state whatever the parameters' dtype: their backend is chosen
#: as for this dtype (the cuda and triton backends take no fp64 parameters, but do run these ops).
RESOLVE_DTYPE = {"yellowfin_tune_": torch.float32}


def schema_fingerprint(schemas: dict[str, tuple[str, object]] | None = None) -> str:
    """A hash of every op's name and schema (of SCHEMAS, or `schemas`): setup.py records the one a build of
    `_C` was made for, and _ext.load refuses a `_C` built for others (its registrars would abort the process)."""
    text = "\n".join(name + schema for name, (schema, _) in sorted((schemas or SCHEMAS).items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _define_all() -> None:
    for name, (schema, reference) in SCHEMAS.items():
        _LIB.define(name + schema)
        _LIB.impl(name, reference, "CompositeExplicitAutograd")
        fake = _FAKES.get(name, lambda *args, **kwargs: None)
        torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=_LIB)
        _backends.register_kernel(name, "torch", reference)


def _compiled_kernel(name: str):
    """The cpu/cuda backends' callable for op `name`: the dispatcher op, through `_C`'s function for it
    (csrc/op_call.cpp: no per-tensor refcount or GIL traffic) unless that returns NotImplemented
    (tensor subclasses, torch function/dispatch modes) or torch.compile is tracing, which needs the
    torch.ops call."""
    op = getattr(torch.ops.agd_kernels, name).default
    fast = getattr(_ext.MODULE, name, None)
    if fast is None:
        return op
    is_compiling = torch.compiler.is_compiling

    def call(*args):
        if not is_compiling():
            out = fast(*args)
            if out is not NotImplemented:
                return out
        return op(*args)

    call.__name__ = call.__qualname__ = name
    return call


def _register_compiled() -> None:
    for key, ops in _backends.COMPILED_OPS.items():
        ops.update(name for name in SCHEMAS
                   if torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{name}", key))
    for name in SCHEMAS:
        kernel = _compiled_kernel(name)
        _backends.register_kernel(name, "cpu", kernel)
        _backends.register_kernel(name, "cuda", kernel)


def _auto_choice(name: str):
    """The CUDA-key kernel of an op without a compiled CUDA kernel: whatever backend="auto" picks for
    the call's tensors (Triton where it runs, else the reference), so that torch.ops.agd_kernels.<op>
    on CUDA tensors runs what the optimizers run (without it, the reference registered for every key)."""
    dtype = RESOLVE_DTYPE.get(name)

    def kernel(*args):
        first = args[0][0] if isinstance(args[0], (list, tuple)) and args[0] else args[0]
        if not isinstance(first, Tensor):  # empty lists: nothing to update
            return _backends._KERNELS[(name, "torch")](*args)
        return _backends.resolve(name, first.device, dtype or first.dtype, "auto")[1](*args)

    kernel.__name__ = kernel.__qualname__ = f"{name}_auto"
    return kernel


def _register_auto_cuda() -> None:
    for name in SCHEMAS:
        if name not in _backends.COMPILED_OPS["CUDA"]:
            _LIB.impl(name, _auto_choice(name), "CUDA")


_define_all()
_ext.load(schema_fingerprint())  # after the schemas: the C++ registrars attach kernels to the ops defined above
_register_compiled()
_register_auto_cuda()


def _kernel(op: str, params: Sequence[Tensor], backend: str | None):
    """The backend's kernel for `op` on tensors like params[0]; DTensor (sharded) arguments reach it as
    their local shards (the ops are per element, or sum per slot for the caller to all-reduce)."""
    kernel = _backends.resolve(op, params[0].device, params[0].dtype, backend)[1]
    if distributed.is_dtensor(params[0]):
        return lambda *args: kernel(*distributed.unwrap(args))
    return kernel


def slice_sumsq_(tensors: Sequence[Tensor], out: Tensor, *, backend: str | None = "auto") -> None:
    """Per-slice sums of squares, accumulated in fp32, written into `out` (fp32, one slot per slice).

    A tensor of rank >= 2 and shape (o, i, *k) has prod(k) slices (one per kernel tap, row-major over
    k; 1 for a matrix), slice j being x[:, :, j]; a tensor of rank <= 1 is one slice. Slots follow the
    order of `tensors`. Deterministic: the same bits for any thread count and from run to run.
    """
    if tensors:
        _kernel("slice_sumsq_", tensors, backend)(list(tensors), out)


def adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr: Tensor, *,
               beta1: float, beta2: float, eps: float, weight_decay: float, amsgrad: bool, maximize: bool,
               decoupled_weight_decay: bool, grad_scale: Tensor | None = None, found_inf: Tensor | None = None,
               model_params: Sequence[Tensor] = (), telemetry: Tensor | None = None,
               backend: str | None = "auto") -> None:
    """Adam / AdamW / AMSGrad step with torch.optim semantics (docs/torch_optim_semantics.md §5).

    `max_exp_avg_sqs` is empty unless amsgrad. `state_steps` are 0-d fp32 tensors, incremented here.
    """
    if params:
        _kernel("adam_step_", params, backend)(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2, eps,
            weight_decay, amsgrad, maximize, decoupled_weight_decay, grad_scale, found_inf, list(model_params),
            telemetry)


def sgd_step_(params, grads, momentum_buffers, lr: Tensor, *, momentum: float, dampening: float,
              weight_decay: float, nesterov: bool, maximize: bool, is_first_step: bool,
              grad_scale: Tensor | None = None, found_inf: Tensor | None = None,
              model_params: Sequence[Tensor] = (), telemetry: Tensor | None = None,
              backend: str | None = "auto") -> None:
    """SGD step (momentum, dampening, Nesterov) with torch.optim semantics (§2).

    `momentum_buffers` is empty when momentum == 0. With `is_first_step` the buffers are set to the
    (decayed) gradient, as torch does when it creates them.
    """
    if params:
        _kernel("sgd_step_", params, backend)(
            params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov, maximize,
            is_first_step, grad_scale, found_inf, list(model_params), telemetry)


def rmsprop_step_(params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, lr: Tensor, *,
                  alpha: float, eps: float, weight_decay: float, momentum: float, centered: bool, maximize: bool,
                  grad_scale: Tensor | None = None, found_inf: Tensor | None = None,
                  model_params: Sequence[Tensor] = (), telemetry: Tensor | None = None,
                  backend: str | None = "auto") -> None:
    """RMSprop step with torch.optim semantics (§3). `grad_avgs` is empty unless centered,
    `momentum_buffers` empty unless momentum > 0."""
    if params:
        _kernel("rmsprop_step_", params, backend)(
            params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, lr, alpha, eps,
            weight_decay, momentum, centered, maximize, grad_scale, found_inf, list(model_params), telemetry)


def adagrad_step_(params, grads, state_sums, state_steps, lr: Tensor, *, lr_decay: float, weight_decay: float,
                  eps: float, maximize: bool, grad_scale: Tensor | None = None, found_inf: Tensor | None = None,
                  model_params: Sequence[Tensor] = (), telemetry: Tensor | None = None,
                  backend: str | None = "auto") -> None:
    """Adagrad step (dense gradients) with torch.optim semantics (§4)."""
    if params:
        _kernel("adagrad_step_", params, backend)(
            params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize,
            grad_scale, found_inf, list(model_params), telemetry)


def agd_step_(params, grads, sumsq: Tensor, slice_sv: Tensor, slice_start: Sequence[int],
              slice_count: Sequence[int], *, depth: int, gain: float, grad_scale: Tensor | None = None,
              found_inf: Tensor | None = None, model_params: Sequence[Tensor] = (),
              telemetry: Tensor | None = None, backend: str | None = "auto") -> tuple[Tensor, Tensor]:
    """AGD update of one (device, dtype) group; returns (eta, G) as 0-d fp32 tensors (docs/agd.md §5).

    `sumsq` holds the per-slice sums of squares of the matrix gradients of *all* groups (from
    `slice_sumsq_`) and `slice_sv` the target scale sv of each slot's tensor, so
    G = (1/depth)·Σ slice_sv·√sumsq (÷ grad_scale) and eta = log1p(G/(½ + √(¼ + G))) (the spec's
    log1p(2G/(1 + √(1 + 4G))) without its fp32 overflow of 4G above 8.5e37; reference.agd.eta_from_g).
    Tensor i uses slots [slice_start[i], slice_start[i] + slice_count[i]): a matrix its own taps, each
    tap j scaled by c_j = gain·(eta/depth)·sv/√sumsq_j; a follower (rank <= 1) its owner's taps, with
    one coefficient gain·(eta/depth)·sv_owner/√(Σ owner sumsq). A sum of exactly 0 gives a zero update;
    a NaN or inf sum is not guarded and propagates.
    With found_inf set nothing is written and (0, 0) is returned.
    """
    return _kernel("agd_step_", params, backend)(
        params, grads, sumsq, slice_sv, list(slice_start), list(slice_count), depth, gain, grad_scale, found_inf,
        list(model_params), telemetry)


def lamb_moments_(params, grads, exp_avgs, exp_avg_sqs, state_steps, grad_sumsq: Tensor, norms: Tensor, *,
                  max_grad_norm: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                  bias_correction: bool, grad_averaging: bool, adam_w_mode: bool, grad_scale: Tensor | None = None,
                  found_inf: Tensor | None = None, telemetry: Tensor | None = None,
                  backend: str | None = "auto") -> None:
    """LAMB phase 1 of one group (docs/lamb.md §3): the moments and the per-tensor sums of squares
    the trust ratio needs. `lamb_apply_` is phase 2; between them the caller may sum `norms` across ranks.

    `grad_sumsq` (fp32) holds sums of squares of the gradients of *all* groups, in any slicing (its
    sum is N², N ÷ grad_scale being the global norm); gradients are divided by k = N/max_grad_norm
    when N > max_grad_norm, else by 1 (as apex: a NaN N gives 1, an inf N gives inf; max_grad_norm =
    inf never clips). Then, per tensor, with gs the clipped gradient (+ weight_decay·p unless
    adam_w_mode) and t the advanced step:
      m' = β1·m + β3·gs (β3 = 1 − β1 with grad_averaging, else 1); v' = β2·v + (1 − β2)·gs²;
      u = (m'/bc1)/(√(v'/bc2) + eps) (+ weight_decay·p when adam_w_mode), bc = 1 − β^t or 1;
      norms[2i] = Σp², norms[2i + 1] = Σu² for tensor i of this call (p before the update).
    `state_steps` (0-d fp32) advance by 1. m' and v' are stored for fp32/fp64 parameters; bf16/fp16
    parameters keep m and v (deferred moments: lamb_apply_ stores them, u must come from the unrounded
    moments; agd_kernels.reference.lamb). `norms` is a 1-D float64 (or float32) tensor of exactly
    2·len(params) elements, e.g. a contiguous narrow() of a larger buffer; only those are written. The
    sums are partial when the tensors are local shards. With found_inf set nothing is written.
    """
    if params:
        _kernel("lamb_moments_", params, backend)(
            params, grads, exp_avgs, exp_avg_sqs, state_steps, grad_sumsq, norms, max_grad_norm, beta1, beta2, eps,
            weight_decay, bias_correction, grad_averaging, adam_w_mode, grad_scale, found_inf, telemetry)


def lamb_apply_(params, grads, exp_avgs, exp_avg_sqs, state_steps, lr: Tensor, grad_sumsq: Tensor, norms: Tensor,
                *, max_grad_norm: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                bias_correction: bool, grad_averaging: bool, adam_w_mode: bool, use_trust_ratio: bool,
                phi_min: float = 0.0, phi_max: float = float("inf"), grad_scale: Tensor | None = None,
                found_inf: Tensor | None = None, model_params: Sequence[Tensor] = (),
                telemetry: Tensor | None = None, backend: str | None = "auto") -> None:
    """LAMB phase 2 of one group, after `lamb_moments_` (same tensors and hyper-parameters) and any
    reduction of its `norms` across ranks: p ← p − lr·r·u with
      r = clamp(√norms[2i], phi_min, phi_max)/√norms[2i + 1], 1 when either is 0 (a NaN gives NaN)
          or use_trust_ratio is False.
    u is recomputed: for fp32/fp64 parameters from the stored m', v'; for bf16/fp16 ones m', v' are
    recomputed from the old m, v and the gradient with lamb_moments_'s arithmetic, stored, and used.
    `state_steps` are read (lamb_moments_ advanced them), never written. With found_inf set nothing
    is written.
    """
    if params:
        _kernel("lamb_apply_", params, backend)(
            params, grads, exp_avgs, exp_avg_sqs, state_steps, lr, grad_sumsq, norms, max_grad_norm, beta1, beta2,
            eps, weight_decay, bias_correction, grad_averaging, adam_w_mode, use_trust_ratio, phi_min, phi_max,
            grad_scale, found_inf, list(model_params), telemetry)


def yellowfin_stats_(grads, grad_avgs, out: Tensor, *, backend: str | None = "auto") -> None:
    """YellowFin pass A of one bucket: out (fp64, 4) = [Σg², Σḡ·g, Σḡ², nnz(g)] on the raw gradients
    and the ḡ of the previous step. Products are rounded in fp32 (fp64 for fp64 tensors), sums
    accumulate in fp64 (so the result does not depend on the reduction order beyond fp64 rounding)."""
    if grads:
        _kernel("yellowfin_stats_", grads, backend)(grads, grad_avgs, out)


def yellowfin_tune_(tuner: Tensor, stats: Tensor, *, numel: float, beta: float, curv_win_width: int,
                    zero_debias: bool, sparsity_debias: bool, clip_thresh: float, auto_clip_fac: float,
                    adapt_clip: bool, stat_protect_fac: float, catastrophic_move_thresh: float,
                    force_non_inc_step: bool, h_min_log_smooth: bool, h_max_log_smooth: bool,
                    grad_scale: Tensor | None = None, found_inf: Tensor | None = None,
                    backend: str | None = "auto") -> tuple[Tensor, Tensor]:
    """YellowFin scalar step (docs/yellowfin.md §2, §3, §8) in fp64 on the device.

    `stats` (fp64, (buckets, 4)) are the yellowfin_stats_ rows of every bucket; `numel` counts their
    elements. Updates `tuner` (fp64; layout in agd_kernels.reference.yellowfin.SLOTS, then the
    curv_win_width window) and returns the lr and μ the momentum step applies, as new 0-d fp64
    tensors. With found_inf set or a non-finite Σg² nothing changes. clip_thresh / auto_clip_fac <= 0
    mean off.
    """
    return _backends.resolve("yellowfin_tune_", tuner.device, RESOLVE_DTYPE["yellowfin_tune_"], backend)[1](
        tuner, stats, numel, beta, curv_win_width, zero_debias, sparsity_debias, clip_thresh, auto_clip_fac,
        adapt_clip, stat_protect_fac, catastrophic_move_thresh, force_non_inc_step, h_min_log_smooth,
        h_max_log_smooth, grad_scale, found_inf)


def yellowfin_apply_(params, grads, grad_avgs, momentum_buffers, tuner: Tensor, stats: Tensor, *, beta: float,
                     weight_decay: float, found_inf: Tensor | None = None, model_params: Sequence[Tensor] = (),
                     telemetry: Tensor | None = None, backend: str | None = "auto") -> None:
    """YellowFin pass B of one bucket, reading lr, μ and the clip factors from `tuner`:
    ḡ ← β·ḡ + (1 − β)·c1·g; d = c2·g + weight_decay·p; buf ← μ·buf + d and p ← p − lr·buf when μ ≠ 0,
    else p ← p − lr·d with buf untouched (c1, c2 fold the clips and 1/grad_scale in). Skips, like
    yellowfin_tune_, when found_inf is set or Σg² over `stats` is not finite."""
    if params:
        _kernel("yellowfin_apply_", params, backend)(
            params, grads, grad_avgs, momentum_buffers, tuner, stats, beta, weight_decay, found_inf,
            list(model_params), telemetry)


def stochastic_round_(dst, src, seed: Tensor, steps, offsets: Sequence[int], *,
                      backend: str | None = "auto") -> None:
    """dst[i] (bf16) <- src[i] (fp32, same shape and memory layout) rounded stochastically: down or up to a
    neighbouring bf16 value with probability proportional to the distance from the other one, so the
    rounding error has mean 0 (docs/mixed_precision.md, stochastic rounding).

    With x the fp32 bits and r 16 random bits the result is the upper half of x + r. ±inf stay, every NaN
    becomes the canonical quiet NaN 0x7FC0 (round-to-nearest conversions write other NaNs: torch's CPU one
    0xFFFF, CUDA's 0x7FFF), the sign of every other value is kept; a finite value above
    the largest bf16 (3.3895e38) becomes inf with probability proportional to its distance from it.
    Values a bf16 holds exactly are copied exactly (so a step that changed nothing changes nothing).
    r = the low 16 bits of the first word of Philox4x32-10 with key = `seed`'s (a one-element int64
    tensor) low and high 32-bit halves and counter = (e low, e high, steps[i], 0), e = offsets[i] + the
    element's index in memory order, steps[i] a one-element float32/float64 tensor read as an integer
    modulo 2^32. seed and steps are read by the kernel (no host sync). Elements that share (seed, step,
    e) share their bits: give every element of a call, and of the calls of one step, its own e.
    """
    if dst:
        kernel = _kernel("stochastic_round_", dst, backend)
        kernel(list(dst), list(src), seed, list(steps), list(offsets))
