"""LAMB (`lamb_moments_` and `lamb_apply_`, docs/lamb.md §3): one launch each, after the grad-norm pass.

  lamb_moments_  clip the gradient by the global norm, update m and v, and reduce per tensor ‖p‖² and ‖u‖²
                 (u the Adam direction, + weight_decay·p in adam_w_mode): each program stores fp64 partial
                 sums, the last program of a tensor adds them in chunk order into norms[2i], norms[2i + 1]
                 and advances the tensor's step;
  lamb_apply_    trust ratio from those two sums (reduced across ranks by the caller, if sharded), u
                 recomputed from the stored m, v and the not yet updated p (the gradient is never
                 overwritten), p ← p − lr·ratio·u.
With the grad-norm pass (`slice_sumsq_`, run by the optimizer over every group) that is 3 launches per step.
Bytes per fp32 element: 16 read + 8 written, then 12 read + 4 written (apex: 6 reads + 4 writes + the
‖p‖ and ‖u‖ passes). Both launches walk one cached pointer table (lamb_apply_ uses its counters and scratch
for telemetry only), so a step whose tensors did not move uploads nothing. Telemetry (_common.py): lamb_moments_
adds w_sq (the Σp² of `norms`), g_sq and w_g, lamb_apply_ d_sq and w_d, in their own launches.

16-bit parameters (DEFER) leave m and v alone in lamb_moments_ and recompute them in lamb_apply_ from the old
m, v and the gradient, then store them, as the reference's deferred-moments rule says: u must come from the
fp32 moments, and a stored fp16 moment rounds or underflows (gradients ~1e-4 on zeroed moments give
v ~ 1e-11, which is 0 in fp16; u from the stored moments moved parameters of magnitude ~3 by up to 6.2). Bytes
per 16-bit element: 8 read, then 8 read + 6 written (one more read of g than storing in lamb_moments_).
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from agd_kernels.reference import telemetry as _telemetry

from . import multi_tensor as mt
from ._common import (add_read_sums, add_tensor_sums, add_update_sums, last_to_arrive, load, no_sums, pow_f64,
                      program_chunk, row_pointer, scalar, store_param, store_sums)

# rows payload columns
_P = tl.constexpr(mt.HEAD + 0)
_M = tl.constexpr(mt.HEAD + 1)
_V = tl.constexpr(mt.HEAD + 2)
_STEP = tl.constexpr(mt.HEAD + 3)
_NCOL = tl.constexpr(mt.HEAD + 4)

# Slots of grad_sumsq summed per iteration of the global-norm loop.
_SLOTS = 1024


@triton.jit
def _lamb_direction(mv, vv, pv, bc1, bc2, eps, weight_decay, adam_w_mode):
    """u = (m/bc1)/(√(v/bc2) + eps) (+ weight_decay·p in adam_w_mode): the same arithmetic in both ops."""
    # tl.div_rn/tl.sqrt_rn: on the GPU `/` and tl.sqrt compile to div.full.f32/sqrt.approx.f32, up to 2 ulps
    # off the correctly rounded results torch computes (docs/gpu_runs.md)
    u = tl.div_rn(tl.div_rn(mv, bc1), tl.sqrt_rn(tl.div_rn(vv, bc2)) + eps)
    if adam_w_mode & (weight_decay != 0):
        u = u + weight_decay * pv
    return u


@triton.jit
def _bias_corrections(t, beta1, beta2, bias_correction):
    """(bc1, bc2) at step t (fp64), as fp32."""
    beta1 = scalar(beta1, tl.float64)
    beta2 = scalar(beta2, tl.float64)
    bc1 = tl.where(bias_correction != 0, 1.0 - pow_f64(beta1, t), 1.0).to(tl.float32)
    bc2 = tl.where(bias_correction != 0, 1.0 - pow_f64(beta2, t), 1.0).to(tl.float32)
    return bc1, bc2


@triton.jit
def _moment_scalars(grad_sumsq, n_slots, scale_ptr, max_grad_norm, beta1, beta2, grad_averaging,
                    SLOTS: tl.constexpr):
    """(clip, grad_scale, beta1, beta3, beta2, 1 − beta2) as fp32: what the moment update needs besides the
    tensors, computed the same way in both ops (16-bit parameters update the moments in lamb_apply_)."""
    beta1 = scalar(beta1, tl.float64)
    beta2 = scalar(beta2, tl.float64)
    scale = tl.load(scale_ptr).to(tl.float32)
    # Global clip k = N/max_grad_norm when N > max_grad_norm else 1, N = √Σ grad_sumsq ÷ grad_scale (fp64).
    acc = tl.zeros([SLOTS], dtype=tl.float64)
    for s in range(0, n_slots, SLOTS):
        k = s + tl.arange(0, SLOTS)
        acc += tl.load(grad_sumsq + k, mask=k < n_slots, other=0.0).to(tl.float64)
    norm = tl.sqrt(tl.sum(acc, axis=0)) / scale.to(tl.float64)
    max_grad_norm = scalar(max_grad_norm, tl.float64)
    clip = tl.where(norm > max_grad_norm, norm / max_grad_norm, 1.0).to(tl.float32)
    return (clip, scale, beta1.to(tl.float32), tl.where(grad_averaging != 0, (1.0 - beta1).to(tl.float32), 1.0),
            beta2.to(tl.float32), (1.0 - beta2).to(tl.float32))


@triton.jit
def _lamb_moments(p, g, m, v, offs, mask, clip, scale, beta1, beta3, beta2, one_minus_beta2, weight_decay,
                  adam_w_mode):
    """(p, g/grad_scale, m, v) of one tile in fp32, m and v updated with the clipped gradient; nothing stored."""
    g_loss = tl.div_rn(load(g + offs, mask), scale)
    gv = tl.div_rn(g_loss, clip)
    pv = load(p + offs, mask)
    if (adam_w_mode == 0) & (weight_decay != 0):
        gv = gv + weight_decay * pv  # L2 mode: the decay enters the moments, after the clip
    mv = load(m + offs, mask) * beta1 + beta3 * gv
    vv = load(v + offs, mask) * beta2 + one_minus_beta2 * gv * gv
    return pv, g_loss, mv, vv


@triton.jit
def _store_moments(m, v, offs, mask, mv, vv):
    tl.store(m + offs, mv.to(m.dtype.element_ty), mask=mask)
    tl.store(v + offs, vv.to(v.dtype.element_ty), mask=mask)


@triton.jit
def _lamb_moments_tile(p, g, m, v, offs, mask, sums, moments, bc1, bc2, eps, weight_decay, adam_w_mode,
                       DEFER: tl.constexpr, TELEMETRY: tl.constexpr):
    pv, g_loss, mv, vv = _lamb_moments(p, g, m, v, offs, mask, *moments, weight_decay, adam_w_mode)
    u = _lamb_direction(mv, vv, pv, bc1, bc2, eps, weight_decay, adam_w_mode)
    if not DEFER:
        _store_moments(m, v, offs, mask, mv, vv)
    return (tl.sum(pv * pv, axis=0).to(tl.float64), tl.sum(u * u, axis=0).to(tl.float64),
            add_read_sums(sums, pv, g_loss, TELEMETRY))


@triton.jit
def _lamb_moments_chunk(p, g, m, v, step_ptr, counter, numel, start, n_blocks, block, first_block, partials, scratch,
                        tel_row, norms, grad_sumsq, n_slots, scale_ptr, inf_ptr, max_grad_norm, beta1, beta2, eps,
                        weight_decay, bias_correction, grad_averaging, adam_w_mode, DEFER: tl.constexpr,
                        TELEMETRY: tl.constexpr, SLOTS: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    live = tl.load(inf_ptr) == 0
    moments = _moment_scalars(grad_sumsq, n_slots, scale_ptr, max_grad_norm, beta1, beta2, grad_averaging, SLOTS)
    # every program reads the step before it arrives; the last to arrive writes it back advanced
    t = tl.load(step_ptr).to(tl.float64) + 1.0
    bc1, bc2 = _bias_corrections(t, beta1, beta2, bias_correction)
    scalars = (moments, bc1, bc2, scalar(eps, tl.float32), scalar(weight_decay, tl.float32))
    p_sq = tl.zeros([], dtype=tl.float64)
    u_sq = tl.zeros([], dtype=tl.float64)
    limit = tl.where(live, numel, 0)  # found_inf set: every element masked
    sums = no_sums()
    for off in range(0, CHUNK, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        if start + off + BLOCK <= limit:
            dp, du, sums = _lamb_moments_tile(p, g, m, v, offs, None, sums, *scalars, adam_w_mode, DEFER, TELEMETRY)
        else:
            dp, du, sums = _lamb_moments_tile(p, g, m, v, offs, offs < limit, sums, *scalars, adam_w_mode, DEFER,
                                              TELEMETRY)
        p_sq += dp
        u_sq += du
    tl.store(partials + 2 * block, p_sq)
    tl.store(partials + 2 * block + 1, u_sq)
    if TELEMETRY:  # g_sq and w_g; w_sq is the tensor's Σp², added below
        store_sums(sums, scratch, block, 1, 3)
    if last_to_arrive(counter, n_blocks, live):
        p_total = tl.zeros([], dtype=tl.float64)
        u_total = tl.zeros([], dtype=tl.float64)
        for b in range(first_block, first_block + n_blocks):
            p_total += tl.load(partials + 2 * b, cache_modifier=".cg")
            u_total += tl.load(partials + 2 * b + 1, cache_modifier=".cg")
        tl.store(norms, p_total.to(norms.dtype.element_ty))
        tl.store(norms + 1, u_total.to(norms.dtype.element_ty))
        tl.store(step_ptr, t.to(tl.float32))
        if TELEMETRY:
            tl.store(tel_row, tl.load(tel_row) + p_total.to(tl.float32))
            add_tensor_sums(scratch, first_block, n_blocks, tel_row, 1, 3)


@triton.jit
def _lamb_apply_tile(p, g, model, m, v, offs, mask, sums, moments, step_size, bc1, bc2, eps, weight_decay,
                     adam_w_mode, DEFER: tl.constexpr, COPY: tl.constexpr, TELEMETRY: tl.constexpr):
    if DEFER:
        # the moments lamb_moments_ computed for the norms: same inputs (m, v, p not yet written), same code
        pv, _, mv, vv = _lamb_moments(p, g, m, v, offs, mask, *moments, weight_decay, adam_w_mode)
        _store_moments(m, v, offs, mask, mv, vv)
    else:
        pv = load(p + offs, mask)
        mv = load(m + offs, mask)
        vv = load(v + offs, mask)
    u = _lamb_direction(mv, vv, pv, bc1, bc2, eps, weight_decay, adam_w_mode)
    new = pv - step_size * u
    store_param(p, model, offs, mask, new, COPY)
    return add_update_sums(sums, pv, new, p, mask, TELEMETRY)


@triton.jit
def _lamb_apply_chunk(p, g, model, m, v, step_ptr, counter, numel, start, block, first_block, n_blocks, scratch,
                      tel_row, norms, lr_ptr, grad_sumsq, n_slots, scale_ptr, inf_ptr, max_grad_norm, beta1, beta2,
                      eps, weight_decay, bias_correction, grad_averaging, adam_w_mode, use_trust_ratio, phi_min,
                      phi_max, DEFER: tl.constexpr, COPY: tl.constexpr, TELEMETRY: tl.constexpr, SLOTS: tl.constexpr,
                      BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    live = tl.load(inf_ptr) == 0
    if DEFER:
        moments = _moment_scalars(grad_sumsq, n_slots, scale_ptr, max_grad_norm, beta1, beta2, grad_averaging,
                                  SLOTS)
    else:
        moments = ()  # fp32 reads the moments lamb_moments_ stored: no clip to recompute
    t = tl.load(step_ptr).to(tl.float64)  # advanced by lamb_moments_
    bc1, bc2 = _bias_corrections(t, beta1, beta2, bias_correction)
    # ratio = clamp(‖p‖, phi_min, phi_max)/‖u‖, 1 when either norm is 0 (a NaN norm gives a NaN ratio)
    p_norm = tl.sqrt(tl.load(norms).to(tl.float64)).to(tl.float32)
    u_norm = tl.sqrt(tl.load(norms + 1).to(tl.float64)).to(tl.float32)
    phi = tl.minimum(tl.maximum(p_norm, scalar(phi_min, tl.float32), propagate_nan=tl.PropagateNan.ALL),
                     scalar(phi_max, tl.float32), propagate_nan=tl.PropagateNan.ALL)
    ratio = tl.where((p_norm != 0) & (u_norm != 0), tl.div_rn(phi, tl.where(u_norm == 0, 1.0, u_norm)), 1.0)
    ratio = tl.where(use_trust_ratio != 0, ratio, 1.0)
    step_size = (tl.load(lr_ptr).to(tl.float64) * ratio.to(tl.float64)).to(tl.float32)
    scalars = (moments, step_size, bc1, bc2, scalar(eps, tl.float32), scalar(weight_decay, tl.float32))
    limit = tl.where(live, numel, 0)  # found_inf set: every element masked
    sums = no_sums()
    for off in range(0, CHUNK, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        if start + off + BLOCK <= limit:
            sums = _lamb_apply_tile(p, g, model, m, v, offs, None, sums, *scalars, adam_w_mode, DEFER, COPY,
                                    TELEMETRY)
        else:
            sums = _lamb_apply_tile(p, g, model, m, v, offs, offs < limit, sums, *scalars, adam_w_mode, DEFER, COPY,
                                    TELEMETRY)
    if TELEMETRY:  # d_sq and w_d; the step was advanced by lamb_moments_: the counters serve telemetry only
        store_sums(sums, scratch, block, 3, 5)
        if last_to_arrive(counter, n_blocks, live):
            add_tensor_sums(scratch, first_block, n_blocks, tel_row, 3, 5)


@triton.jit
def _lamb_moments_kernel(rows, grads, blocks, counters, partials, scratch, telemetry, norms, grad_sumsq, n_slots,
                         scale_ptr, inf_ptr, max_grad_norm: "fp64", beta1: "fp64", beta2: "fp64", eps, weight_decay,
                         bias_correction, grad_averaging, adam_w_mode, DTYPE: tl.constexpr, GDTYPE: tl.constexpr,
                         ALIGN: tl.constexpr, DEFER: tl.constexpr, TELEMETRY: tl.constexpr, SLOTS: tl.constexpr,
                         BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    t, start = program_chunk(blocks, CHUNK)
    row = rows + t * _NCOL
    _lamb_moments_chunk(row_pointer(row, _P, DTYPE, ALIGN), row_pointer(grads, t, GDTYPE, ALIGN),
                        row_pointer(row, _M, DTYPE, ALIGN), row_pointer(row, _V, DTYPE, ALIGN),
                        row_pointer(row, _STEP, tl.float32, 4), counters + t, tl.load(row + mt.NUMEL), start,
                        tl.load(row + mt.NBLOCKS), tl.program_id(0), tl.load(row + mt.FIRST), partials, scratch,
                        telemetry + t * 5, norms + 2 * t, grad_sumsq, n_slots, scale_ptr, inf_ptr, max_grad_norm,
                        beta1, beta2, eps, weight_decay, bias_correction, grad_averaging, adam_w_mode, DEFER,
                        TELEMETRY, SLOTS, BLOCK, CHUNK)


@triton.jit
def _lamb_apply_kernel(rows, grads, models, blocks, counters, scratch, telemetry, norms, lr_ptr, grad_sumsq, n_slots,
                       scale_ptr, inf_ptr, max_grad_norm: "fp64", beta1: "fp64", beta2: "fp64", eps, weight_decay,
                       bias_correction, grad_averaging, adam_w_mode, use_trust_ratio, phi_min, phi_max,
                       DTYPE: tl.constexpr, GDTYPE: tl.constexpr, ALIGN: tl.constexpr, DEFER: tl.constexpr,
                       COPY: tl.constexpr, TELEMETRY: tl.constexpr, SLOTS: tl.constexpr, BLOCK: tl.constexpr,
                       CHUNK: tl.constexpr):
    t, start = program_chunk(blocks, CHUNK)
    row = rows + t * _NCOL
    _lamb_apply_chunk(row_pointer(row, _P, DTYPE, ALIGN), row_pointer(grads, t, GDTYPE, ALIGN),
                      row_pointer(models, t, GDTYPE, ALIGN), row_pointer(row, _M, DTYPE, ALIGN),
                      row_pointer(row, _V, DTYPE, ALIGN),
                      row_pointer(row, _STEP, tl.float32, 4), counters + t, tl.load(row + mt.NUMEL), start,
                      tl.program_id(0), tl.load(row + mt.FIRST), tl.load(row + mt.NBLOCKS), scratch,
                      telemetry + t * 5, norms + 2 * t, lr_ptr, grad_sumsq, n_slots, scale_ptr, inf_ptr,
                      max_grad_norm, beta1, beta2, eps, weight_decay, bias_correction, grad_averaging, adam_w_mode,
                      use_trust_ratio, phi_min, phi_max, DEFER, COPY, TELEMETRY, SLOTS, BLOCK, CHUNK)


@triton.jit
def _lamb_moments_tensor_kernel(p, g, m, v, step_ptr, counter, numel, partials, scratch, telemetry, tensor, norms,
                                slot, grad_sumsq, n_slots, scale_ptr, inf_ptr, max_grad_norm: "fp64", beta1: "fp64",
                                beta2: "fp64", eps, weight_decay, bias_correction, grad_averaging, adam_w_mode,
                                DEFER: tl.constexpr, TELEMETRY: tl.constexpr, SLOTS: tl.constexpr,
                                BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    block = tl.program_id(0)
    _lamb_moments_chunk(p, g, m, v, step_ptr, counter, numel, block.to(tl.int64) * CHUNK, tl.num_programs(0),
                        block, 0, partials, scratch, telemetry + tensor * 5, norms + slot, grad_sumsq, n_slots,
                        scale_ptr, inf_ptr, max_grad_norm, beta1, beta2, eps, weight_decay, bias_correction,
                        grad_averaging, adam_w_mode, DEFER, TELEMETRY, SLOTS, BLOCK, CHUNK)


@triton.jit
def _lamb_apply_tensor_kernel(p, g, model, m, v, step_ptr, counter, numel, scratch, telemetry, tensor, norms, slot,
                              lr_ptr, grad_sumsq, n_slots, scale_ptr, inf_ptr, max_grad_norm: "fp64", beta1: "fp64",
                              beta2: "fp64", eps, weight_decay, bias_correction, grad_averaging, adam_w_mode,
                              use_trust_ratio, phi_min, phi_max, DEFER: tl.constexpr, COPY: tl.constexpr,
                              TELEMETRY: tl.constexpr, SLOTS: tl.constexpr, BLOCK: tl.constexpr,
                              CHUNK: tl.constexpr):
    block = tl.program_id(0)
    _lamb_apply_chunk(p, g, model, m, v, step_ptr, counter, numel, block.to(tl.int64) * CHUNK, block, 0,
                      tl.num_programs(0), scratch, telemetry + tensor * 5, norms + slot, lr_ptr, grad_sumsq, n_slots,
                      scale_ptr, inf_ptr, max_grad_norm, beta1, beta2, eps, weight_decay, bias_correction,
                      grad_averaging, adam_w_mode, use_trust_ratio, phi_min, phi_max, DEFER, COPY, TELEMETRY, SLOTS,
                      BLOCK, CHUNK)


def _prepare(op: str, params, grads, exp_avgs, exp_avg_sqs, state_steps, grad_sumsq: Tensor, norms: Tensor,
             grad_scale: Tensor | None, found_inf: Tensor | None, model_params: list[Tensor] | None,
             telemetry: Tensor | None) -> tuple[Tensor, Tensor, dict]:
    """Checks both ops share (raising ValueError before anything is written); returns (grad_scale, found_inf,
    launch meta-parameters). model_params is None for lamb_moments_, which writes no parameter."""
    mt.check_lists(op, params, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}, grads=grads,
                   model_params=model_params, steps=state_steps)
    device = params[0].device
    if grad_sumsq.dtype != torch.float32 or grad_sumsq.device != device or not grad_sumsq.is_contiguous():
        raise ValueError(f"{op}: grad_sumsq must be a contiguous float32 tensor on {device}; got "
                         f"{grad_sumsq.dtype} on {grad_sumsq.device}")
    if (norms.dtype not in (torch.float64, torch.float32) or norms.device != device or norms.dim() != 1
            or norms.numel() != 2 * len(params) or not norms.is_contiguous()):
        raise ValueError(f"{op}: norms must be a contiguous 1-D float64 (or float32) tensor of 2 slots per tensor "
                         f"of params ({2 * len(params)}) on {device}; got {norms.dtype}{list(norms.shape)} with "
                         f"strides {norms.stride()} on {norms.device}")
    scale, inf = mt.amp_scalars(grad_scale, found_inf, device, op)
    cfg = mt.config(device)
    # 16-bit moments would round (or underflow) when stored: lamb_apply_ recomputes them (module docstring); with
    # master weights (16-bit grads beside them) params and moments are fp32 and stored in lamb_moments_
    meta = dict(DEFER=params[0].element_size() == 2, SLOTS=_SLOTS, BLOCK=cfg.block, CHUNK=cfg.chunk,
                num_warps=cfg.num_warps, **mt.telemetry_meta(cfg, telemetry is not None))
    return scale, inf, meta


def _table(params, grads, exp_avgs, exp_avg_sqs, state_steps, chunk: int, telemetry: Tensor | None):
    """(table, gradient pointers, alignment, telemetry scratch) of the pointer table both ops launch over: one
    cached entry (keyed "lamb_", not by op). Its scratch holds the moments' 2 per-program partials and, with
    telemetry, then a row of 5 sums per program (the scratch returned; both ops use it, in turn, as they share
    the arrival counters: each op's last programs reset them). Without telemetry the gradient pointers stand in
    for the telemetry scratch, never read."""
    on = telemetry is not None
    tab, grad_ptrs, align = mt.elementwise_table("lamb_", params, grads, [exp_avgs, exp_avg_sqs], state_steps, chunk,
                                                 scratch_per_block=2 + 5 * on)
    return tab, grad_ptrs, align, tab.scratch[2 * tab.n_blocks:] if on else grad_ptrs


def _tensor_telemetry(telemetry: Tensor | None, programs: int, stand_in: Tensor) -> tuple[Tensor, Tensor]:
    """(scratch, buffer) of one per-tensor launch: a row of 5 sums per program and the telemetry buffer, or
    without telemetry `stand_in` for both, never read."""
    if telemetry is None:
        return stand_in, stand_in
    return torch.empty(5 * programs, dtype=torch.float64, device=telemetry.device), telemetry


def lamb_moments_triton(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                        exp_avg_sqs: list[Tensor], state_steps: list[Tensor], grad_sumsq: Tensor, norms: Tensor,
                        max_grad_norm: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                        bias_correction: bool, grad_averaging: bool, adam_w_mode: bool, grad_scale: Tensor | None,
                        found_inf: Tensor | None, telemetry: Tensor | None = None) -> None:
    """Triton `lamb_moments_` (see agd_kernels.ops.lamb_moments_)."""
    _telemetry.check("lamb_moments_", telemetry, params)
    if not params:
        return
    scale, inf, meta = _prepare("lamb_moments_", params, grads, exp_avgs, exp_avg_sqs, state_steps, grad_sumsq,
                                norms, grad_scale, found_inf, None, telemetry)
    hyper = (grad_sumsq, grad_sumsq.numel(), scale, inf, max_grad_norm, beta1, beta2, eps, weight_decay,
             int(bias_correction), int(grad_averaging), int(adam_w_mode))
    device = params[0].device
    if mt.traced(params[0]):
        for i, (p, g, m, v, s) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, state_steps)):
            grid = (mt.n_programs(p.numel(), meta["CHUNK"]),)
            partials = torch.empty(2 * grid[0], dtype=torch.float64, device=device)
            counter = torch.zeros(1, dtype=torch.int32, device=device)
            wrap_triton(_lamb_moments_tensor_kernel)[grid](p, g, m, v, s, counter, p.numel(), partials,
                                                           *_tensor_telemetry(telemetry, grid[0], partials), i,
                                                           norms, 2 * i, *hyper, **meta)
        return
    tab, grad_ptrs, align, scratch = _table(params, grads, exp_avgs, exp_avg_sqs, state_steps, meta["CHUNK"],
                                            telemetry)
    wrap_triton(_lamb_moments_kernel)[(tab.n_blocks,)](tab.rows, grad_ptrs, tab.blocks, tab.counters, tab.scratch,
                                                       scratch, grad_ptrs if telemetry is None else telemetry, norms,
                                                       *hyper, DTYPE=mt.TL_DTYPE[params[0].dtype],
                                                       GDTYPE=mt.TL_DTYPE[grads[0].dtype], ALIGN=align, **meta)


def lamb_apply_triton(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                      state_steps: list[Tensor], lr: Tensor, grad_sumsq: Tensor, norms: Tensor, max_grad_norm: float,
                      beta1: float, beta2: float, eps: float, weight_decay: float, bias_correction: bool,
                      grad_averaging: bool, adam_w_mode: bool, use_trust_ratio: bool, phi_min: float, phi_max: float,
                      grad_scale: Tensor | None, found_inf: Tensor | None,
                      model_params: list[Tensor], telemetry: Tensor | None = None) -> None:
    """Triton `lamb_apply_` (see agd_kernels.ops.lamb_apply_)."""
    _telemetry.check("lamb_apply_", telemetry, params)
    if not params:
        return
    scale, inf, meta = _prepare("lamb_apply_", params, grads, exp_avgs, exp_avg_sqs, state_steps, grad_sumsq, norms,
                                grad_scale, found_inf, model_params, telemetry)
    mt.check_scalar("lamb_apply_", "lr", lr, params[0].device)
    hyper = (lr, grad_sumsq, grad_sumsq.numel(), scale, inf, max_grad_norm, beta1, beta2, eps, weight_decay,
             int(bias_correction), int(grad_averaging), int(adam_w_mode), int(use_trust_ratio), phi_min, phi_max)
    if mt.traced(params[0]):
        models = model_params or params  # params stand in (never written: COPY false)
        for i, (p, g, model, m, v, s) in enumerate(zip(params, grads, models, exp_avgs, exp_avg_sqs, state_steps)):
            grid = (mt.n_programs(p.numel(), meta["CHUNK"]),)
            counter = torch.zeros(1, dtype=torch.int32, device=p.device) if telemetry is not None else s
            wrap_triton(_lamb_apply_tensor_kernel)[grid](p, g, model, m, v, s, counter, p.numel(),
                                                         *_tensor_telemetry(telemetry, grid[0], s), i, norms, 2 * i,
                                                         *hyper, COPY=bool(model_params), **meta)
        return
    tab, grad_ptrs, align, scratch = _table(params, grads, exp_avgs, exp_avg_sqs, state_steps, meta["CHUNK"],
                                            telemetry)
    if model_params:  # the shared table's alignment covers the lists of both ops, not the model params
        align = min(align, mt.alignment(t.data_ptr() for t in model_params))
    wrap_triton(_lamb_apply_kernel)[(tab.n_blocks,)](
        tab.rows, grad_ptrs, mt.model_pointers(model_params, grad_ptrs, params[0].device), tab.blocks, tab.counters,
        scratch, grad_ptrs if telemetry is None else telemetry, norms, *hyper, DTYPE=mt.TL_DTYPE[params[0].dtype],
        GDTYPE=mt.TL_DTYPE[grads[0].dtype], ALIGN=align, COPY=bool(model_params), **meta)
