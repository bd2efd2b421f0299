"""RMSprop, centered and with momentum (`rmsprop_step_`, docs/torch_optim_semantics.md §3): one launch.

eps is added outside the square root (torch, unlike TensorFlow); the momentum buffer starts at zeros.
"""

import triton
import triton.language as tl
from torch import Tensor

from agd_kernels.reference import telemetry as _telemetry

from . import multi_tensor as mt
from ._common import (add_tensor_sums, add_tile_sums, last_to_arrive, lerp, load, no_sums, program_chunk, row_pointer,
                      scalar, store_param, store_sums)

# rows payload columns
_P = tl.constexpr(mt.HEAD + 0)
_SQ = tl.constexpr(mt.HEAD + 1)
_GAVG = tl.constexpr(mt.HEAD + 2)
_BUF = tl.constexpr(mt.HEAD + 3)
_STEP = tl.constexpr(mt.HEAD + 4)
_NCOL = tl.constexpr(mt.HEAD + 5)


@triton.jit
def _rmsprop_tile(p, g, model, sq, gavg, buf, offs, mask, sums, lr, scale, alpha, w, eps, weight_decay, momentum,
                  centered, maximize, COPY: tl.constexpr, TELEMETRY: tl.constexpr):
    # tl.div_rn/tl.sqrt_rn: on the GPU `/` and tl.sqrt compile to div.full.f32/sqrt.approx.f32, up to 2 ulps
    # off the correctly rounded results torch computes (docs/gpu_runs.md)
    g_loss = tl.div_rn(load(g + offs, mask), scale)
    gv = g_loss
    if maximize:
        gv = -gv
    w_old = load(p + offs, mask)
    pv = w_old
    if weight_decay != 0:
        gv = gv + weight_decay * pv
    vv = load(sq + offs, mask) * alpha + w * gv * gv
    if centered:
        av = lerp(load(gavg + offs, mask), gv, w)
        tl.store(gavg + offs, av.to(gavg.dtype.element_ty), mask=mask)
        denom = tl.sqrt_rn(vv - av * av) + eps  # eps outside the square root, as torch
    else:
        denom = tl.sqrt_rn(vv) + eps
    tl.store(sq + offs, vv.to(sq.dtype.element_ty), mask=mask)
    if momentum > 0:
        bv = load(buf + offs, mask) * momentum + tl.div_rn(gv, denom)
        tl.store(buf + offs, bv.to(buf.dtype.element_ty), mask=mask)
        pv = pv - lr * bv
    else:
        pv = pv - lr * tl.div_rn(gv, denom)
    store_param(p, model, offs, mask, pv, COPY)
    return add_tile_sums(sums, w_old, g_loss, pv, p, mask, TELEMETRY)


@triton.jit
def _rmsprop_chunk(p, g, model, sq, gavg, buf, step_ptr, counter, numel, start, block, first_block, n_blocks, scratch,
                   tel_row, lr_ptr, scale_ptr, inf_ptr, alpha, eps, weight_decay, momentum, centered, maximize,
                   COPY: tl.constexpr, TELEMETRY: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    alpha = scalar(alpha, tl.float64)
    scalars = (tl.load(lr_ptr).to(tl.float32), tl.load(scale_ptr).to(tl.float32), alpha.to(tl.float32),
               (1.0 - alpha).to(tl.float32), scalar(eps, tl.float32), scalar(weight_decay, tl.float32),
               scalar(momentum, tl.float32))
    live = tl.load(inf_ptr) == 0
    step = tl.load(step_ptr)  # counted for checkpoints, unused by the math
    limit = tl.where(live, numel, 0)  # found_inf set: every element masked
    sums = no_sums()
    for off in range(0, CHUNK, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        if start + off + BLOCK <= limit:
            sums = _rmsprop_tile(p, g, model, sq, gavg, buf, offs, None, sums, *scalars, centered, maximize, COPY,
                                 TELEMETRY)
        else:
            sums = _rmsprop_tile(p, g, model, sq, gavg, buf, offs, offs < limit, sums, *scalars, centered, maximize,
                                 COPY, TELEMETRY)
    if TELEMETRY:
        store_sums(sums, scratch, block)
    if last_to_arrive(counter, n_blocks, live):
        tl.store(step_ptr, step + 1.0)
        if TELEMETRY:
            add_tensor_sums(scratch, first_block, n_blocks, tel_row)


@triton.jit
def _rmsprop_kernel(rows, grads, models, blocks, counters, scratch, telemetry, lr_ptr, scale_ptr, inf_ptr,
                    alpha: "fp64", eps, weight_decay, momentum, centered, maximize, DTYPE: tl.constexpr,
                    GDTYPE: tl.constexpr, ALIGN: tl.constexpr, COPY: tl.constexpr, TELEMETRY: tl.constexpr,
                    BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    t, start = program_chunk(blocks, CHUNK)
    row = rows + t * _NCOL
    _rmsprop_chunk(row_pointer(row, _P, DTYPE, ALIGN), row_pointer(grads, t, GDTYPE, ALIGN),
                   row_pointer(models, t, GDTYPE, ALIGN), row_pointer(row, _SQ, DTYPE, ALIGN),
                   row_pointer(row, _GAVG, DTYPE, ALIGN),
                   row_pointer(row, _BUF, DTYPE, ALIGN), row_pointer(row, _STEP, tl.float32, 4), counters + t,
                   tl.load(row + mt.NUMEL), start, tl.program_id(0), tl.load(row + mt.FIRST),
                   tl.load(row + mt.NBLOCKS), scratch, telemetry + t * 5, lr_ptr, scale_ptr, inf_ptr, alpha, eps,
                   weight_decay, momentum, centered, maximize, COPY, TELEMETRY, BLOCK, CHUNK)


@triton.jit
def _rmsprop_tensor_kernel(p, g, model, sq, gavg, buf, step_ptr, counter, numel, scratch, telemetry, tensor, lr_ptr,
                           scale_ptr, inf_ptr, alpha: "fp64", eps, weight_decay, momentum, centered, maximize,
                           COPY: tl.constexpr, TELEMETRY: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    block = tl.program_id(0)
    _rmsprop_chunk(p, g, model, sq, gavg, buf, step_ptr, counter, numel, block.to(tl.int64) * CHUNK, block, 0,
                   tl.num_programs(0), scratch, telemetry + tensor * 5, lr_ptr, scale_ptr, inf_ptr, alpha, eps,
                   weight_decay, momentum, centered, maximize, COPY, TELEMETRY, BLOCK, CHUNK)


def rmsprop_step_triton(params: list[Tensor], grads: list[Tensor], square_avgs: list[Tensor],
                        grad_avgs: list[Tensor], momentum_buffers: list[Tensor], state_steps: list[Tensor],
                        lr: Tensor, alpha: float, eps: float, weight_decay: float, momentum: float, centered: bool,
                        maximize: bool, grad_scale: Tensor | None, found_inf: Tensor | None,
                        model_params: list[Tensor], telemetry: Tensor | None = None) -> None:
    """Triton `rmsprop_step_` (see agd_kernels.ops.rmsprop_step_)."""
    op = "rmsprop_step_"
    _telemetry.check(op, telemetry, params)
    if not params:
        return
    states = [square_avgs, grad_avgs if centered else None, momentum_buffers if momentum > 0 else None]
    mt.check_lists(op, params, {"square_avgs": square_avgs, **({"grad_avgs": grad_avgs} if centered else {}),
                                **({"momentum_buffers": momentum_buffers} if momentum > 0 else {})},
                   grads=grads, model_params=model_params, steps=state_steps)
    device = params[0].device
    mt.check_scalar(op, "lr", lr, device)
    scale, inf = mt.amp_scalars(grad_scale, found_inf, device, op)
    hyper = (lr, scale, inf, alpha, eps, weight_decay, momentum, int(centered), int(maximize))
    mt.launch_elementwise(op, _rmsprop_kernel, _rmsprop_tensor_kernel, params, grads, states, state_steps, hyper,
                          model_params, telemetry)
