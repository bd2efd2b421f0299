"""Adagrad, dense gradients (`adagrad_step_`, docs/torch_optim_semantics.md §4): one launch.

clr = lr / (1 + (step − 1)·lr_decay) is an fp64 scalar per program, as torch computes it on the host.
"""

import triton
import triton.language as tl
from torch import Tensor

from agd_kernels.reference import telemetry as _telemetry

from . import multi_tensor as mt
from ._common import (add_tensor_sums, add_tile_sums, last_to_arrive, load, no_sums, program_chunk, row_pointer, scalar,
                      store_param, store_sums)

# rows payload columns
_P = tl.constexpr(mt.HEAD + 0)
_SUM = tl.constexpr(mt.HEAD + 1)
_STEP = tl.constexpr(mt.HEAD + 2)
_NCOL = tl.constexpr(mt.HEAD + 3)


@triton.jit
def _adagrad_tile(p, g, model, acc, offs, mask, sums, clr, scale, weight_decay, eps, maximize, COPY: tl.constexpr,
                  TELEMETRY: tl.constexpr):
    # tl.div_rn/tl.sqrt_rn: on the GPU `/` and tl.sqrt compile to div.full.f32/sqrt.approx.f32, up to 2 ulps
    # off the correctly rounded results torch computes (docs/gpu_runs.md)
    g_loss = tl.div_rn(load(g + offs, mask), scale)
    gv = g_loss
    if maximize:
        gv = -gv
    pv = load(p + offs, mask)
    if weight_decay != 0:
        gv = gv + weight_decay * pv
    sv = load(acc + offs, mask) + gv * gv
    tl.store(acc + offs, sv.to(acc.dtype.element_ty), mask=mask)
    new = pv - clr * tl.div_rn(gv, tl.sqrt_rn(sv) + eps)
    store_param(p, model, offs, mask, new, COPY)
    return add_tile_sums(sums, pv, g_loss, new, p, mask, TELEMETRY)


@triton.jit
def _adagrad_chunk(p, g, model, acc, step_ptr, counter, numel, start, block, first_block, n_blocks, scratch, tel_row,
                   lr_ptr, scale_ptr, inf_ptr, lr_decay, weight_decay, eps, maximize, COPY: tl.constexpr,
                   TELEMETRY: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    live = tl.load(inf_ptr) == 0
    t = tl.load(step_ptr).to(tl.float64) + 1.0
    clr = (tl.load(lr_ptr).to(tl.float64) / (1.0 + (t - 1.0) * scalar(lr_decay, tl.float64))).to(tl.float32)
    scalars = (clr, tl.load(scale_ptr).to(tl.float32), scalar(weight_decay, tl.float32), scalar(eps, tl.float32))
    limit = tl.where(live, numel, 0)  # found_inf set: every element masked
    sums = no_sums()
    for off in range(0, CHUNK, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        if start + off + BLOCK <= limit:
            sums = _adagrad_tile(p, g, model, acc, offs, None, sums, *scalars, maximize, COPY, TELEMETRY)
        else:
            sums = _adagrad_tile(p, g, model, acc, offs, offs < limit, sums, *scalars, maximize, COPY, TELEMETRY)
    if TELEMETRY:
        store_sums(sums, scratch, block)
    if last_to_arrive(counter, n_blocks, live):
        tl.store(step_ptr, t.to(tl.float32))
        if TELEMETRY:
            add_tensor_sums(scratch, first_block, n_blocks, tel_row)


@triton.jit
def _adagrad_kernel(rows, grads, models, blocks, counters, scratch, telemetry, lr_ptr, scale_ptr, inf_ptr,
                    lr_decay: "fp64", weight_decay, eps, maximize, DTYPE: tl.constexpr, GDTYPE: tl.constexpr,
                    ALIGN: tl.constexpr, COPY: tl.constexpr, TELEMETRY: tl.constexpr, BLOCK: tl.constexpr,
                    CHUNK: tl.constexpr):
    t, start = program_chunk(blocks, CHUNK)
    row = rows + t * _NCOL
    _adagrad_chunk(row_pointer(row, _P, DTYPE, ALIGN), row_pointer(grads, t, GDTYPE, ALIGN),
                   row_pointer(models, t, GDTYPE, ALIGN), row_pointer(row, _SUM, DTYPE, ALIGN),
                   row_pointer(row, _STEP, tl.float32, 4), counters + t,
                   tl.load(row + mt.NUMEL), start, tl.program_id(0), tl.load(row + mt.FIRST),
                   tl.load(row + mt.NBLOCKS), scratch, telemetry + t * 5, lr_ptr, scale_ptr, inf_ptr, lr_decay,
                   weight_decay, eps, maximize, COPY, TELEMETRY, BLOCK, CHUNK)


@triton.jit
def _adagrad_tensor_kernel(p, g, model, acc, step_ptr, counter, numel, scratch, telemetry, tensor, lr_ptr, scale_ptr,
                           inf_ptr, lr_decay: "fp64", weight_decay, eps, maximize, COPY: tl.constexpr,
                           TELEMETRY: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    block = tl.program_id(0)
    _adagrad_chunk(p, g, model, acc, step_ptr, counter, numel, block.to(tl.int64) * CHUNK, block, 0,
                   tl.num_programs(0), scratch, telemetry + tensor * 5, lr_ptr, scale_ptr, inf_ptr, lr_decay,
                   weight_decay, eps, maximize, COPY, TELEMETRY, BLOCK, CHUNK)


def adagrad_step_triton(params: list[Tensor], grads: list[Tensor], state_sums: list[Tensor],
                        state_steps: list[Tensor], lr: Tensor, lr_decay: float, weight_decay: float, eps: float,
                        maximize: bool, grad_scale: Tensor | None, found_inf: Tensor | None,
                        model_params: list[Tensor], telemetry: Tensor | None = None) -> None:
    """Triton `adagrad_step_` (see agd_kernels.ops.adagrad_step_)."""
    op = "adagrad_step_"
    _telemetry.check(op, telemetry, params)
    if not params:
        return
    states = [state_sums]
    mt.check_lists(op, params, {"state_sums": state_sums}, grads=grads, model_params=model_params, steps=state_steps)
    device = params[0].device
    mt.check_scalar(op, "lr", lr, device)
    scale, inf = mt.amp_scalars(grad_scale, found_inf, device, op)
    hyper = (lr, scale, inf, lr_decay, weight_decay, eps, int(maximize))
    mt.launch_elementwise(op, _adagrad_kernel, _adagrad_tensor_kernel, params, grads, states, state_steps, hyper,
                          model_params, telemetry)
