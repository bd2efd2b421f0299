"""AGD update (`agd_step_`, docs/agd.md §5-6): G, eta and p ← p − c·g in one launch.

The norm pass is `slice_sumsq_` (sumsq.py). The scalar phase (G over every slot of every group, then eta)
runs redundantly at the start of every program: the slot table is small (one slot per kernel tap, a few
hundred for a ResNet-50) and every program sums it in the same order, so all programs get the same bits
and a step is 2 launches (norms, update) with no third launch or grid-wide barrier in between.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from agd_kernels.reference import telemetry as _telemetry
from agd_kernels.reference.agd import check_step_args
from agd_kernels.reference.sumsq import num_slices

from . import multi_tensor as mt
from ._common import (add_tensor_sums, add_tile_sums, last_to_arrive, load, log1p_f64, no_sums, program_chunk,
                      row_pointer, scalar, store_param, store_sums)

# rows payload columns
_P = tl.constexpr(mt.HEAD + 0)
_TAPS = tl.constexpr(mt.HEAD + 1)
_SLOT = tl.constexpr(mt.HEAD + 2)
_COUNT = tl.constexpr(mt.HEAD + 3)
_FOLLOWER = tl.constexpr(mt.HEAD + 4)
_NCOL = tl.constexpr(mt.HEAD + 5)

# Slots summed per iteration of the G loop.
_SLOTS = 1024


@triton.jit
def _agd_update_tile(p, g, model, offs, mask, sums, sumsq, slice_sv, slot, taps, follower, follower_coef, step, scale,
                     COPY: tl.constexpr, TELEMETRY: tl.constexpr):
    if follower:
        coef = tl.zeros(offs.shape, dtype=tl.float32) + follower_coef
    else:  # the tap of element e is e % taps; sv and the norm are gathered per tap
        tap = slot + offs % taps
        # tl.div_rn/tl.sqrt_rn: on the GPU `/` and tl.sqrt compile to div.full.f32/sqrt.approx.f32, up to 2 ulps
        # off the correctly rounded results torch computes (docs/gpu_runs.md)
        norm = tl.sqrt_rn(load(sumsq + tap, mask))
        # only an exactly zero sum is guarded: a NaN norm still poisons its slice (the reference's rule)
        coef = tl.where(norm == 0, 0.0, tl.div_rn(step * load(slice_sv + tap, mask), tl.where(norm == 0, 1.0, norm)))
    pv = load(p + offs, mask)
    gv = load(g + offs, mask)
    new = pv - coef * gv
    store_param(p, model, offs, mask, new, COPY)
    # the update is scale-free (sv/‖g‖ applied to g); the sums' g is the loss's, g/grad_scale
    return add_tile_sums(sums, pv, tl.div_rn(gv, scale), new, p, mask, TELEMETRY)


@triton.jit
def _agd_still_sums(p, g, numel, start, scale, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """The five sums of a chunk of a tensor without slots, which the op does not move (Δw = 0): the reference
    sums every tensor."""
    sums = no_sums()
    for off in range(0, CHUNK, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        mask = offs < numel
        pv = load(p + offs, mask)
        sums = add_tile_sums(sums, pv, tl.div_rn(load(g + offs, mask), scale), pv, p, mask, True)
    return sums


@triton.jit
def _agd_update_chunk(p, g, model, counter, numel, start, block, first_block, n_blocks, scratch, tel_row, taps, slot,
                      count, follower, sumsq, slice_sv, n_slots, depth, gain, scale_ptr, inf_ptr, eta_out, g_out,
                      write_out, COPY: tl.constexpr, TELEMETRY: tl.constexpr, SLOTS: tl.constexpr,
                      BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    depth = scalar(depth, tl.float32)
    gain = scalar(gain, tl.float32)
    live = tl.load(inf_ptr) == 0
    # G = (1/depth)·Σ sv·√sumsq ÷ grad_scale, accumulated in fp64 in slot order.
    acc = tl.zeros([SLOTS], dtype=tl.float64)
    for s in range(0, n_slots, SLOTS):
        k = s + tl.arange(0, SLOTS)
        m = k < n_slots
        norm = tl.sqrt_rn(tl.load(sumsq + k, mask=m, other=0.0))
        acc += tl.load(slice_sv + k, mask=m, other=0.0).to(tl.float64) * norm.to(tl.float64)
    big_g = tl.div_rn((tl.sum(acc, axis=0) / depth).to(tl.float32), tl.load(scale_ptr).to(tl.float32))
    # eta = log1p(G/(½ + √(¼ + G))), in fp64: no overflow of 4G and no cancellation for small G
    g64 = big_g.to(tl.float64)
    eta = log1p_f64(g64 / (0.5 + tl.sqrt(0.25 + g64))).to(tl.float32)
    if write_out:
        tl.store(eta_out, tl.where(live, eta, 0.0))
        tl.store(g_out, tl.where(live, big_g, 0.0))
    step = gain * eta / depth
    # A follower (rank <= 1) uses its owner's whole-gradient norm and the owner's sv.
    pooled = tl.zeros([], dtype=tl.float64)
    for s in range(slot, slot + count * follower):
        pooled += tl.load(sumsq + s).to(tl.float64)
    pooled_norm = tl.sqrt(pooled).to(tl.float32)
    owner_sv = tl.load(slice_sv + slot, mask=count > 0, other=0.0)
    follower_coef = tl.where(pooled_norm == 0, 0.0, tl.div_rn(step * owner_sv, tl.where(pooled_norm == 0, 1.0, pooled_norm)))
    scale = tl.load(scale_ptr).to(tl.float32)  # for the sums' g = g/grad_scale only (unused without TELEMETRY)
    # found_inf set, or no slots (a zero-size kernel dim): every element masked, nothing read or written
    limit = tl.where(live & (count > 0), numel, 0)
    sums = no_sums()
    for off in range(0, CHUNK, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        if start + off + BLOCK <= limit:
            sums = _agd_update_tile(p, g, model, offs, None, sums, sumsq, slice_sv, slot, taps, follower,
                                    follower_coef, step, scale, COPY, TELEMETRY)
        else:
            sums = _agd_update_tile(p, g, model, offs, offs < limit, sums, sumsq, slice_sv, slot, taps, follower,
                                    follower_coef, step, scale, COPY, TELEMETRY)
    if TELEMETRY:  # AGD has no step counter: its arrival counters serve telemetry only
        if live & (count == 0):  # a follower of a weight with a zero-size kernel dim
            sums = _agd_still_sums(p, g, numel, start, scale, BLOCK, CHUNK)
        store_sums(sums, scratch, block)
        if last_to_arrive(counter, n_blocks, live):
            add_tensor_sums(scratch, first_block, n_blocks, tel_row)


@triton.jit
def _agd_update_kernel(rows, grads, models, blocks, counters, scratch, telemetry, sumsq, slice_sv, n_slots, depth,
                       gain, scale_ptr, inf_ptr, eta_out, g_out, DTYPE: tl.constexpr, GDTYPE: tl.constexpr,
                       ALIGN: tl.constexpr, COPY: tl.constexpr, TELEMETRY: tl.constexpr, SLOTS: tl.constexpr,
                       BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    t, start = program_chunk(blocks, CHUNK)
    row = rows + t * _NCOL
    _agd_update_chunk(row_pointer(row, _P, DTYPE, ALIGN), row_pointer(grads, t, GDTYPE, ALIGN),
                      row_pointer(models, t, GDTYPE, ALIGN), counters + t, tl.load(row + mt.NUMEL), start,
                      tl.program_id(0), tl.load(row + mt.FIRST), tl.load(row + mt.NBLOCKS), scratch,
                      telemetry + t * 5, tl.load(row + _TAPS), tl.load(row + _SLOT),
                      tl.load(row + _COUNT), tl.load(row + _FOLLOWER), sumsq, slice_sv, n_slots, depth, gain,
                      scale_ptr, inf_ptr, eta_out, g_out, tl.program_id(0) == 0, COPY, TELEMETRY, SLOTS, BLOCK,
                      CHUNK)


@triton.jit
def _agd_update_tensor_kernel(p, g, model, numel, taps, slot, count, follower, sumsq, slice_sv, n_slots, depth, gain,
                              scale_ptr, inf_ptr, eta_out, g_out, write_out, counter, scratch, telemetry, tensor,
                              COPY: tl.constexpr, TELEMETRY: tl.constexpr, SLOTS: tl.constexpr, BLOCK: tl.constexpr,
                              CHUNK: tl.constexpr):
    # the telemetry arguments last, so that the others keep their places: placed before `taps`, they made
    # ptxas schedule 7 of the 20 kernels without TELEMETRY differently (same instructions, other order)
    block = tl.program_id(0)
    _agd_update_chunk(p, g, model, counter, numel, block.to(tl.int64) * CHUNK, block, 0, tl.num_programs(0), scratch,
                      telemetry + tensor * 5, taps, slot, count, follower, sumsq, slice_sv, n_slots, depth, gain,
                      scale_ptr, inf_ptr, eta_out, g_out, (write_out != 0) & (block == 0), COPY, TELEMETRY, SLOTS,
                      BLOCK, CHUNK)


def _check(params, grads, sumsq, slice_sv, slice_start, slice_count, depth, model_params) -> None:
    check_step_args(params, grads, sumsq, slice_sv, slice_start, slice_count, depth)
    for name, t in (("sumsq", sumsq), ("slice_sv", slice_sv)):
        if t.dtype != torch.float32 or not t.is_contiguous() or (params and t.device != params[0].device):
            raise ValueError(f"agd_step_: {name} must be a contiguous float32 tensor on the parameters' device; "
                             f"got {t.dtype} on {t.device}")
    mt.check_lists("agd_step_", params, {}, grads=grads, model_params=model_params, contiguous=True)


def agd_step_triton(params: list[Tensor], grads: list[Tensor], sumsq: Tensor, slice_sv: Tensor,
                    slice_start: list[int], slice_count: list[int], depth: int, gain: float,
                    grad_scale: Tensor | None, found_inf: Tensor | None,
                    model_params: list[Tensor], telemetry: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Triton `agd_step_` (see agd_kernels.ops.agd_step_); returns (eta, G) as 0-d fp32 tensors."""
    _check(params, grads, sumsq, slice_sv, slice_start, slice_count, depth, model_params)
    _telemetry.check("agd_step_", telemetry, params)
    device = sumsq.device
    scale, inf = mt.amp_scalars(grad_scale, found_inf, device, "agd_step_")
    eta = torch.empty((), dtype=torch.float32, device=device)
    big_g = torch.empty((), dtype=torch.float32, device=device)
    cfg = mt.config(device)
    on = telemetry is not None and bool(params)  # the empty launch of no tensors has no telemetry row
    meta = dict(COPY=bool(model_params), SLOTS=_SLOTS, BLOCK=cfg.block, CHUNK=cfg.chunk, num_warps=cfg.num_warps,
                **mt.telemetry_meta(cfg, on))
    scalars = (sumsq, slice_sv, sumsq.numel(), float(depth), float(gain), scale, inf, eta, big_g)
    # per tensor: element e of a weight uses tap e % taps (taps >= 1 even for a zero-size kernel dim,
    # which has no elements) and slots [slot, slot + count); a follower (rank <= 1) pools its owner's.
    rows = [(max(1, num_slices(p.shape)), s, c, int(p.dim() < 2))
            for p, s, c in zip(params, slice_start, slice_count)]
    if not params or mt.traced(sumsq):
        # one launch per tensor; with no tensors, one empty launch still writes eta and G. Without telemetry
        # the counter, scratch and buffer are stand-ins (sumsq), never read.
        empty = sumsq[:0]
        models = model_params or params  # params stand in (never written: COPY false)
        for i, (p, g, model, row) in enumerate(zip(params, grads, models, rows) if params
                                               else [(empty, empty, empty, (1, 0, 0, 0))]):
            grid = (mt.n_programs(p.numel(), cfg.chunk),)
            tel = ((torch.zeros(1, dtype=torch.int32, device=device),
                    torch.empty(grid[0] * 5, dtype=torch.float64, device=device), telemetry) if on
                   else (sumsq, sumsq, sumsq))
            wrap_triton(_agd_update_tensor_kernel)[grid](p, g, model, p.numel(), *row, *scalars, int(i == 0), *tel, i,
                                                         **meta)
        return eta, big_g
    tab = mt.table("agd_step_", device, [p.numel() for p in params],
                   [(p.data_ptr(), *row) for p, row in zip(params, rows)], cfg.chunk, scratch_per_block=5 if on else 0)
    grad_ptrs = mt.pointers(grads, device)
    tel = (tab.counters, tab.scratch, telemetry) if on else (tab.counters, grad_ptrs, grad_ptrs)
    wrap_triton(_agd_update_kernel)[(tab.n_blocks,)](
        tab.rows, grad_ptrs, mt.model_pointers(model_params, grad_ptrs, device), tab.blocks, *tel, *scalars,
        DTYPE=mt.TL_DTYPE[params[0].dtype], GDTYPE=mt.TL_DTYPE[grads[0].dtype],
        ALIGN=mt.alignment(t.data_ptr() for t in (*params, *grads, *model_params)), **meta)
    return eta, big_g
