"""Adam / AdamW / AMSGrad (`adam_step_`, docs/torch_optim_semantics.md §5): one launch per step.

Bytes per fp32 element: p, g, m, v read (16 B) and p, m, v written (12 B), plus vmax (4 + 4 B) with
amsgrad. Bias corrections are fp64 scalars computed per program from the step counter, as torch computes
them from its host-side step; the step counter advances in the last program of each tensor.
Master weights (model_params): g read in 16 bits and the model param written rounded, 14 B read + 14 B
written per element, where the former fp32 gradient copy (2 + 4 B), kernel (28 B) and copy-back (4 + 2 B)
moved 40 B.
"""

import triton
import triton.language as tl
from torch import Tensor

from agd_kernels.reference import telemetry as _telemetry

from . import multi_tensor as mt
from ._common import (add_tensor_sums, add_tile_sums, last_to_arrive, lerp, load, no_sums, pow_f64, program_chunk,
                      row_pointer, scalar, store_param, store_sums)

# rows payload columns
_P = tl.constexpr(mt.HEAD + 0)
_M = tl.constexpr(mt.HEAD + 1)
_V = tl.constexpr(mt.HEAD + 2)
_VMAX = tl.constexpr(mt.HEAD + 3)
_STEP = tl.constexpr(mt.HEAD + 4)
_NCOL = tl.constexpr(mt.HEAD + 5)


@triton.jit
def _adam_tile(p, g, model, m, v, vmax, offs, mask, sums, scale, step_size, bc2_sqrt, decay, wd, w1, b2, w2, eps,
               amsgrad, maximize, decoupled, l2, COPY: tl.constexpr, TELEMETRY: tl.constexpr):
    # tl.div_rn/tl.sqrt_rn: on the GPU `/` and tl.sqrt compile to div.full.f32/sqrt.approx.f32, up to 2 ulps
    # off the correctly rounded results torch computes (docs/gpu_runs.md)
    g_loss = tl.div_rn(load(g + offs, mask), scale)
    gv = g_loss
    if maximize:
        gv = -gv
    w = load(p + offs, mask)
    pv = w
    if decoupled:
        pv = pv * decay
    if l2:
        gv = gv + wd * pv
    mv = lerp(load(m + offs, mask), gv, w1)
    vv = load(v + offs, mask) * b2 + w2 * gv * gv
    second = vv
    if amsgrad:
        second = tl.maximum(load(vmax + offs, mask), vv, propagate_nan=tl.PropagateNan.ALL)
        tl.store(vmax + offs, second.to(vmax.dtype.element_ty), mask=mask)
    pv = pv - step_size * tl.div_rn(mv, tl.div_rn(tl.sqrt_rn(second), bc2_sqrt) + eps)
    tl.store(m + offs, mv.to(m.dtype.element_ty), mask=mask)
    tl.store(v + offs, vv.to(v.dtype.element_ty), mask=mask)
    store_param(p, model, offs, mask, pv, COPY)
    return add_tile_sums(sums, w, g_loss, pv, p, mask, TELEMETRY)


@triton.jit
def _adam_chunk(p, g, model, m, v, vmax, step_ptr, counter, numel, start, block, first_block, n_blocks, scratch,
                tel_row, lr_ptr, scale_ptr, inf_ptr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled,
                COPY: tl.constexpr, TELEMETRY: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    beta1 = scalar(beta1, tl.float64)
    beta2 = scalar(beta2, tl.float64)
    weight_decay = scalar(weight_decay, tl.float64)
    eps = scalar(eps, tl.float32)
    live = tl.load(inf_ptr) == 0
    t = tl.load(step_ptr).to(tl.float64) + 1.0
    lr = tl.load(lr_ptr).to(tl.float64)
    step_size = (lr / (1.0 - pow_f64(beta1, t))).to(tl.float32)
    bc2_sqrt = tl.sqrt(1.0 - pow_f64(beta2, t)).to(tl.float32)
    decay = (1.0 - lr * weight_decay).to(tl.float32)  # AdamW: lr·wd, not bias-corrected
    l2 = (decoupled == 0) & (weight_decay != 0)
    scalars = (tl.load(scale_ptr).to(tl.float32), step_size, bc2_sqrt, decay, weight_decay.to(tl.float32),
               (1.0 - beta1).to(tl.float32), beta2.to(tl.float32), (1.0 - beta2).to(tl.float32), eps)
    limit = tl.where(live, numel, 0)  # found_inf set: every element masked, nothing read or written
    sums = no_sums()
    for off in range(0, CHUNK, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        if start + off + BLOCK <= limit:
            sums = _adam_tile(p, g, model, m, v, vmax, offs, None, sums, *scalars, amsgrad, maximize, decoupled, l2,
                              COPY, TELEMETRY)
        else:
            sums = _adam_tile(p, g, model, m, v, vmax, offs, offs < limit, sums, *scalars, amsgrad, maximize,
                              decoupled, l2, COPY, TELEMETRY)
    if TELEMETRY:
        store_sums(sums, scratch, block)
    if last_to_arrive(counter, n_blocks, live):
        tl.store(step_ptr, t.to(tl.float32))
        if TELEMETRY:
            add_tensor_sums(scratch, first_block, n_blocks, tel_row)


@triton.jit
def _adam_kernel(rows, grads, models, blocks, counters, scratch, telemetry, lr_ptr, scale_ptr, inf_ptr,
                 beta1: "fp64", beta2: "fp64", eps, weight_decay: "fp64", amsgrad, maximize, decoupled,
                 DTYPE: tl.constexpr, GDTYPE: tl.constexpr, ALIGN: tl.constexpr, COPY: tl.constexpr,
                 TELEMETRY: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    t, start = program_chunk(blocks, CHUNK)
    row = rows + t * _NCOL
    _adam_chunk(row_pointer(row, _P, DTYPE, ALIGN), row_pointer(grads, t, GDTYPE, ALIGN),
                row_pointer(models, t, GDTYPE, ALIGN), row_pointer(row, _M, DTYPE, ALIGN),
                row_pointer(row, _V, DTYPE, ALIGN),
                row_pointer(row, _VMAX, DTYPE, ALIGN), row_pointer(row, _STEP, tl.float32, 4), counters + t,
                tl.load(row + mt.NUMEL), start, tl.program_id(0), tl.load(row + mt.FIRST), tl.load(row + mt.NBLOCKS),
                scratch, telemetry + t * 5, lr_ptr, scale_ptr, inf_ptr, beta1, beta2, eps, weight_decay, amsgrad,
                maximize, decoupled, COPY, TELEMETRY, BLOCK, CHUNK)


@triton.jit
def _adam_tensor_kernel(p, g, model, m, v, vmax, step_ptr, counter, numel, scratch, telemetry, tensor, lr_ptr,
                        scale_ptr, inf_ptr, beta1: "fp64", beta2: "fp64", eps, weight_decay: "fp64", amsgrad,
                        maximize, decoupled, COPY: tl.constexpr, TELEMETRY: tl.constexpr, BLOCK: tl.constexpr,
                        CHUNK: tl.constexpr):
    block = tl.program_id(0)
    _adam_chunk(p, g, model, m, v, vmax, step_ptr, counter, numel, block.to(tl.int64) * CHUNK, block, 0,
                tl.num_programs(0), scratch, telemetry + tensor * 5, lr_ptr, scale_ptr, inf_ptr, beta1, beta2, eps,
                weight_decay, amsgrad, maximize, decoupled, COPY, TELEMETRY, BLOCK, CHUNK)


def adam_step_triton(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                     max_exp_avg_sqs: list[Tensor], state_steps: list[Tensor], lr: Tensor, beta1: float,
                     beta2: float, eps: float, weight_decay: float, amsgrad: bool, maximize: bool,
                     decoupled_weight_decay: bool, grad_scale: Tensor | None, found_inf: Tensor | None,
                     model_params: list[Tensor], telemetry: Tensor | None = None) -> None:
    """Triton `adam_step_` (see agd_kernels.ops.adam_step_)."""
    op = "adam_step_"
    _telemetry.check(op, telemetry, params)
    if not params:
        return
    states = [exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else None]
    mt.check_lists(op, params, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs,
                                **({"max_exp_avg_sqs": max_exp_avg_sqs} if amsgrad else {})},
                   grads=grads, model_params=model_params, steps=state_steps)
    device = params[0].device
    mt.check_scalar(op, "lr", lr, device)
    scale, inf = mt.amp_scalars(grad_scale, found_inf, device, op)
    hyper = (lr, scale, inf, beta1, beta2, eps, weight_decay, int(amsgrad), int(maximize), int(decoupled_weight_decay))
    mt.launch_elementwise(op, _adam_kernel, _adam_tensor_kernel, params, grads, states, state_steps, hyper,
                          model_params, telemetry)
