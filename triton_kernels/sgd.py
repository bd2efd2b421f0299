"""SGD with momentum, dampening and Nesterov (`sgd_step_`, docs/torch_optim_semantics.md §2): one launch.

Bytes per fp32 element: p and g read, p written (12 B); with momentum the buffer adds 4 + 4 B (on the first
step the buffer is only written: torch creates it as a copy of the gradient).
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
_BUF = tl.constexpr(mt.HEAD + 1)
_NCOL = tl.constexpr(mt.HEAD + 2)


@triton.jit
def _sgd_tile(p, g, model, buf, offs, mask, sums, lr, scale, momentum, one_minus_dampening, weight_decay,
              has_momentum, nesterov, maximize, is_first_step, COPY: tl.constexpr, TELEMETRY: tl.constexpr):
    # tl.div_rn/tl.sqrt_rn: on the GPU `/` and tl.sqrt compile to div.full.f32/sqrt.approx.f32, up to 2 ulps
    # off the correctly rounded results torch computes (docs/gpu_runs.md)
    g_loss = tl.div_rn(load(g + offs, mask), scale)
    d = g_loss
    if maximize:
        d = -d
    pv = load(p + offs, mask)
    if weight_decay != 0:
        d = d + weight_decay * pv
    if has_momentum:
        if is_first_step:
            b = d
        else:
            b = load(buf + offs, mask) * momentum + one_minus_dampening * d
        tl.store(buf + offs, b.to(buf.dtype.element_ty), mask=mask)
        if nesterov:
            d = d + momentum * b
        else:
            d = b
    new = pv - lr * d
    store_param(p, model, offs, mask, new, COPY)
    return add_tile_sums(sums, pv, g_loss, new, p, mask, TELEMETRY)


@triton.jit
def _sgd_chunk(p, g, model, buf, counter, numel, start, block, first_block, n_blocks, scratch, tel_row, lr_ptr,
               scale_ptr, inf_ptr, momentum, one_minus_dampening, weight_decay, has_momentum, nesterov, maximize,
               is_first_step, COPY: tl.constexpr, TELEMETRY: tl.constexpr, BLOCK: tl.constexpr,
               CHUNK: tl.constexpr):
    scalars = (tl.load(lr_ptr).to(tl.float32), tl.load(scale_ptr).to(tl.float32), scalar(momentum, tl.float32),
               scalar(one_minus_dampening, tl.float32), scalar(weight_decay, tl.float32))
    flags = (has_momentum, nesterov, maximize, is_first_step)
    live = tl.load(inf_ptr) == 0
    limit = tl.where(live, numel, 0)  # found_inf set: every element masked
    sums = no_sums()
    for off in range(0, CHUNK, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        if start + off + BLOCK <= limit:
            sums = _sgd_tile(p, g, model, buf, offs, None, sums, *scalars, *flags, COPY, TELEMETRY)
        else:
            sums = _sgd_tile(p, g, model, buf, offs, offs < limit, sums, *scalars, *flags, COPY, TELEMETRY)
    if TELEMETRY:  # SGD has no step counter: its arrival counters serve telemetry only
        store_sums(sums, scratch, block)
        if last_to_arrive(counter, n_blocks, live):
            add_tensor_sums(scratch, first_block, n_blocks, tel_row)


@triton.jit
def _sgd_kernel(rows, grads, models, blocks, counters, scratch, telemetry, lr_ptr, scale_ptr, inf_ptr, momentum,
                one_minus_dampening, weight_decay, has_momentum, nesterov, maximize, is_first_step, DTYPE: tl.constexpr,
                GDTYPE: tl.constexpr, ALIGN: tl.constexpr, COPY: tl.constexpr, TELEMETRY: tl.constexpr,
                BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    t, start = program_chunk(blocks, CHUNK)
    row = rows + t * _NCOL
    _sgd_chunk(row_pointer(row, _P, DTYPE, ALIGN), row_pointer(grads, t, GDTYPE, ALIGN),
               row_pointer(models, t, GDTYPE, ALIGN), row_pointer(row, _BUF, DTYPE, ALIGN), counters + t,
               tl.load(row + mt.NUMEL), start, tl.program_id(0), tl.load(row + mt.FIRST), tl.load(row + mt.NBLOCKS),
               scratch, telemetry + t * 5, lr_ptr, scale_ptr, inf_ptr, momentum, one_minus_dampening, weight_decay,
               has_momentum, nesterov, maximize, is_first_step, COPY, TELEMETRY, BLOCK, CHUNK)


@triton.jit
def _sgd_tensor_kernel(p, g, model, buf, counter, numel, scratch, telemetry, tensor, lr_ptr, scale_ptr, inf_ptr,
                       momentum, one_minus_dampening, weight_decay, has_momentum, nesterov, maximize, is_first_step,
                       COPY: tl.constexpr, TELEMETRY: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    block = tl.program_id(0)
    _sgd_chunk(p, g, model, buf, counter, numel, block.to(tl.int64) * CHUNK, block, 0, tl.num_programs(0), scratch,
               telemetry + tensor * 5, lr_ptr, scale_ptr, inf_ptr, momentum, one_minus_dampening, weight_decay,
               has_momentum, nesterov, maximize, is_first_step, COPY, TELEMETRY, BLOCK, CHUNK)


def sgd_step_triton(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor], lr: Tensor,
                    momentum: float, dampening: float, weight_decay: float, nesterov: bool, maximize: bool,
                    is_first_step: bool, grad_scale: Tensor | None, found_inf: Tensor | None,
                    model_params: list[Tensor], telemetry: Tensor | None = None) -> None:
    """Triton `sgd_step_` (see agd_kernels.ops.sgd_step_)."""
    op = "sgd_step_"
    _telemetry.check(op, telemetry, params)
    if not params:
        return
    has_momentum = momentum != 0
    states = [momentum_buffers if has_momentum else None]
    mt.check_lists(op, params, {"momentum_buffers": momentum_buffers} if has_momentum else {}, grads=grads,
                   model_params=model_params)
    device = params[0].device
    mt.check_scalar(op, "lr", lr, device)
    scale, inf = mt.amp_scalars(grad_scale, found_inf, device, op)
    # 1 - dampening in double, then fp32 like every Python scalar torch multiplies an fp32 tensor by
    hyper = (lr, scale, inf, momentum, 1.0 - dampening, weight_decay, int(has_momentum), int(nesterov),
             int(maximize), int(is_first_step))
    mt.launch_elementwise(op, _sgd_kernel, _sgd_tensor_kernel, params, grads, states, None, hyper, model_params,
                          telemetry)
